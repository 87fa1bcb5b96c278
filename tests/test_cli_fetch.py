"""`safeloader fetch` on every source form against the loopback Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from safeloader.cli import main
from safeloader.resolve.manifest import sha256_hex
from tests.fixtures.hub_plugin import community_version_folder, seed_community
from tests.fixtures.hub_server import LoopbackHub

PIPELINE = b"from .helpers import h\n"
HELPERS = b"def h(): return 1\n"


def fetch_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["fetch", *argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    for key in ("source", "repo", "commit", "files"):
        assert key in out
    for rel, path in out["cache_paths"].items():
        assert sha256_hex(Path(path).read_bytes()) == out["files"][rel]
    return out


def test_fetch_hub_repo(loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str]) -> None:
    sha = loopback_hub.create_repo("org/pipe", {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    out = fetch_json(capsys, "org/pipe", "--revision", "main")
    assert out["source"] == "hub" and out["repo"] == "org/pipe" and out["commit"] == sha
    assert out["files"] == {"helpers.py": sha256_hex(HELPERS), "pipeline.py": sha256_hex(PIPELINE)}
    assert sha in out["notes"]["unpinned_warning"]


def test_fetch_community(loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str]) -> None:
    sha = seed_community(loopback_hub, {"one_step.py": PIPELINE, "helpers.py": HELPERS})
    out = fetch_json(capsys, "one_step")
    assert out["source"] == "community" and out["commit"] == sha
    assert out["subfolder"] == community_version_folder() and set(out["files"]) == {"one_step.py", "helpers.py"}


def test_fetch_model_repo_entry(loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str]) -> None:
    sha = loopback_hub.create_repo(
        "org/model", {"model_index.json": b"{}", "my_pipe.py": PIPELINE, "helpers.py": HELPERS}
    )
    out = fetch_json(capsys, "my_pipe", "--model-repo", "org/model")
    assert out["source"] == "model_repo" and out["commit"] == sha and out["entry"] == "my_pipe.py"


def test_fetch_local_dir_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pipeline.py").write_bytes(PIPELINE)
    (tmp_path / "helpers.py").write_bytes(HELPERS)
    out = fetch_json(capsys, str(tmp_path))
    assert out["source"] == "local_dir" and out["commit"] is None and out["repo"] == str(tmp_path.resolve())
    out = fetch_json(capsys, str(tmp_path / "helpers.py"))
    assert out["source"] == "local_file" and out["files"] == {"helpers.py": sha256_hex(HELPERS)}


def test_fetch_text_output_and_errors(loopback_hub: LoopbackHub, capsys: pytest.CaptureFixture[str]) -> None:
    sha = loopback_hub.create_repo("org/pipe", {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    assert main(["fetch", "org/pipe", "--revision", sha]) == 0
    text = capsys.readouterr().out
    assert sha in text and sha256_hex(HELPERS) in text and "not pinned" not in text
    assert main(["fetch", "org/missing"]) == 2
    err = capsys.readouterr().err
    assert "org/missing" in err and "error:" in err
    assert main(["fetch", "org/pipe", "--policy", "strict"]) == 2
    assert sha in capsys.readouterr().err


def test_console_script_subprocess(loopback_hub: LoopbackHub) -> None:
    loopback_hub.create_repo("org/pipe", {"pipeline.py": PIPELINE, "helpers.py": HELPERS})
    script = Path(sys.executable).with_name("safeloader")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "safeloader.cli"]
    result = subprocess.run(
        [*command, "fetch", "org/pipe", "--json"], capture_output=True, text=True, env=os.environ.copy(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"]["helpers.py"] == sha256_hex(HELPERS)
