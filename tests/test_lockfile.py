"""Lockfiles: `safeloader lock`, drift refusal, offline loads from the cache."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from safeloader.cli import main
from safeloader.errors import DownloadError, LockDriftError, LockfileError
from safeloader.policy import load_policy
from safeloader.resolve import resolve_pipeline
from tests.fixtures.hub_plugin import seed_community
from tests.fixtures.hub_server import LoopbackHub

CODE = {"pipeline.py": b"from .helpers import h\n", "helpers.py": b"def h(): return 1\n"}


def test_lock_then_load_then_drift(loopback_hub: LoopbackHub, tmp_path: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", CODE)
    seed_community(loopback_hub, {"one_step.py": b"X = 1\n"})
    lock = tmp_path / "safeloader.lock"
    assert main(["lock", "org/pipe", "one_step", "-o", str(lock)]) == 0
    data = tomllib.loads(lock.read_text())
    assert data["version"] == 1 and data["pipelines"]["org/pipe"]["commit"] == sha
    assert set(data["pipelines"]["org/pipe"]["files"]) == {"pipeline.py", "helpers.py"}
    assert data["pipelines"]["one_step"]["source"] == "community"

    manifest = resolve_pipeline("org/pipe", policy=load_policy("default"), lockfile=lock)
    assert manifest.commit == sha and manifest.pinned and manifest.notes["lockfile"] == str(lock)

    # main moves on: the lockfile keeps loading the locked commit, and asking for main is drift.
    loopback_hub.commit("org/pipe", {**CODE, "helpers.py": b"import os\n"})
    assert resolve_pipeline("org/pipe", policy=load_policy("default"), lockfile=lock).commit == sha
    with pytest.raises(LockDriftError, match=r"helpers\.py"):
        resolve_pipeline("org/pipe", revision="main", policy=load_policy("default"), lockfile=lock)


def test_offline_load_from_cache(loopback_hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loopback_hub.create_repo("org/pipe", CODE)
    lock = tmp_path / "safeloader.lock"
    assert main(["lock", "org/pipe", "-o", str(lock)]) == 0
    before = len(loopback_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = resolve_pipeline("org/pipe", policy=load_policy("default"), lockfile=lock)
    assert manifest.read_verified("helpers.py") == CODE["helpers.py"]
    assert len(loopback_hub.requests) == before
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        resolve_pipeline("org/other", revision="0" * 40, policy=load_policy("default"))


def test_lockfile_without_the_spec(loopback_hub: LoopbackHub, tmp_path: Path) -> None:
    loopback_hub.create_repo("org/pipe", CODE)
    loopback_hub.create_repo("org/other", CODE)
    lock = tmp_path / "safeloader.lock"
    assert main(["lock", "org/pipe", "-o", str(lock)]) == 0
    with pytest.raises(LockfileError, match="org/other"):
        resolve_pipeline("org/other", policy=load_policy("default"), lockfile=lock)


@pytest.mark.parametrize(
    "content",
    [
        "version = [",
        "version = 2\n[pipelines]\n",
        "version = 1\n",
        'version = 1\n[pipelines."org/pipe"]\nsource = "hub"\n',
        'version = 1\n[pipelines."org/pipe"]\nsource = "hub"\nsource_id = "org/pipe"\nrepo = "org/pipe"\n'
        'repo_type = "model"\nentry = "pipeline.py"\ncommit = "abc"\nfiles = {"pipeline.py" = "00"}\n',
    ],
)
def test_malformed_lockfile(loopback_hub: LoopbackHub, tmp_path: Path, content: str) -> None:
    loopback_hub.create_repo("org/pipe", CODE)
    lock = tmp_path / "bad.lock"
    lock.write_text(content)
    with pytest.raises(LockfileError, match="lock"):
        resolve_pipeline("org/pipe", policy=load_policy("default"), lockfile=lock)


def test_missing_lockfile(tmp_path: Path) -> None:
    with pytest.raises(LockfileError, match="does not exist"):
        resolve_pipeline("org/pipe", policy=load_policy("default"), lockfile=tmp_path / "nope.lock")


def test_local_pipeline_lock_and_drift(tmp_path: Path) -> None:
    code = tmp_path / "pipe"
    code.mkdir()
    for rel, data in CODE.items():
        (code / rel).write_bytes(data)
    lock = tmp_path / "safeloader.lock"
    assert main(["lock", str(code), "-o", str(lock)]) == 0
    assert resolve_pipeline(str(code), policy=load_policy("default"), lockfile=lock).commit is None
    (code / "helpers.py").write_bytes(b"import os\n")
    with pytest.raises(LockDriftError):
        resolve_pipeline(str(code), policy=load_policy("default"), lockfile=lock)
