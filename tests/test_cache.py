"""The content-addressed cache: re-hash on load, atomic entries, one download for many processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from safeloader.errors import DownloadError, IntegrityError
from safeloader.policy import load_policy
from safeloader.resolve import resolve_pipeline
from safeloader.resolve.cache import Cache, atomic_write
from tests.fixtures.hub_server import LoopbackHub

FILES = {"pipeline.py": b"from .helpers import h\n", "helpers.py": b"def h():\n    return 1\n" * 50}


def test_layout_and_reuse_without_redownload(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    first = resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    for rel, digest in first.files.items():
        assert first.blob_path(rel) == isolated_safeloader_cache / "blobs" / digest[:2] / digest
        assert first.blob_path(rel).is_file()
    manifests = list((isolated_safeloader_cache / "manifests" / "hub").glob("*.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["commit"] == sha
    downloads = loopback_hub.count("GET", "/resolve/")
    second = resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    assert loopback_hub.count("GET", "/resolve/") == downloads == 2
    assert second.files == first.files
    assert not list(isolated_safeloader_cache.rglob("*.tmp"))


def test_tampered_blob_is_refused_not_redownloaded(loopback_hub: LoopbackHub) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    blob = manifest.blob_path("helpers.py")
    blob.write_bytes(b"import os; os.system('id')\n")
    downloads = loopback_hub.count("GET", "/resolve/")
    with pytest.raises(IntegrityError, match=r"helpers\.py"):
        resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    with pytest.raises(IntegrityError):
        manifest.read_verified("helpers.py")
    assert loopback_hub.count("GET", "/resolve/") == downloads


def test_corrupt_manifest_is_refused(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    (path,) = (isolated_safeloader_cache / "manifests" / "hub").glob("*.json")
    path.write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))


def test_dropped_connection_leaves_nothing(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    loopback_hub.drop_connection("helpers.py", after_bytes=100)
    with pytest.raises(DownloadError, match="nothing was stored"):
        resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    stored = [p for p in isolated_safeloader_cache.rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert not [p for p in stored if "blobs" in p.parts or "manifests" in p.parts]
    # Once the network is healthy the same call succeeds and stores everything.
    loopback_hub.clear_faults()
    manifest = resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    assert manifest.read_verified("helpers.py") == FILES["helpers.py"]


def test_wrong_bytes_from_server_are_refused(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    swapped = b"import os\n".ljust(len(FILES["helpers.py"]), b"#")
    loopback_hub.serve_wrong_bytes("helpers.py", swapped)
    with pytest.raises(IntegrityError, match="does not match"):
        resolve_pipeline("org/pipe", revision=sha, policy=load_policy("default"))
    assert not (isolated_safeloader_cache / "blobs").exists() or not any(
        (isolated_safeloader_cache / "blobs").rglob("*")
    )


def test_atomic_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.json"
    atomic_write(target, b"one")

    class Boom(Exception):
        pass

    def failing_fsync(fd: int) -> None:
        raise Boom

    # A crash between writing and renaming: the old content stays, no temp file is left behind.
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(Boom):
        atomic_write(target, b"two")
    monkeypatch.undo()
    assert target.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def _resolve_in_child(spec: str, revision: str, endpoint: str, cache: str, queue: multiprocessing.Queue) -> None:
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ["SAFELOADER_CACHE"] = cache
    try:
        manifest = resolve_pipeline(spec, revision=revision, policy=load_policy("default"))
        queue.put(json.dumps(manifest.to_json_dict(), sort_keys=True))
    except Exception as exc:  # report to the parent rather than hang it
        queue.put(f"ERROR {type(exc).__name__}: {exc}")


def test_eight_processes_download_once(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(
            target=_resolve_in_child,
            args=("org/pipe", "main", loopback_hub.endpoint, str(isolated_safeloader_cache), queue),
        )
        for _ in range(8)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(not r.startswith("ERROR") for r in results), results
    assert len(set(results)) == 1
    assert json.loads(results[0])["commit"] == sha
    assert loopback_hub.count("GET", "/resolve/") == len(FILES)
    assert loopback_hub.count("HEAD", "/resolve/") == len(FILES)


def test_cache_store_blob_refuses_tampered_existing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    digest = cache.store_blob(b"hello")
    cache.blob_path(digest).write_bytes(b"other")
    with pytest.raises(IntegrityError):
        cache.store_blob(b"hello")


def test_offline_branch_uses_last_resolved_commit(loopback_hub: LoopbackHub, monkeypatch: pytest.MonkeyPatch) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    resolve_pipeline("org/pipe", policy=load_policy("default"))
    before = len(loopback_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = resolve_pipeline("org/pipe", policy=load_policy("default"))
    assert manifest.commit == sha and sha in manifest.notes["unpinned_warning"]
    assert len(loopback_hub.requests) == before
    with pytest.raises(DownloadError, match="never been resolved"):
        resolve_pipeline("org/pipe", revision="dev", policy=load_policy("default"))


def test_swapped_manifest_is_refused(loopback_hub: LoopbackHub, isolated_safeloader_cache: Path) -> None:
    first = loopback_hub.create_repo("org/pipe", FILES)
    second = loopback_hub.commit("org/pipe", {**FILES, "helpers.py": b"def h():\n    return 2\n"})
    resolve_pipeline("org/pipe", revision=first, policy=load_policy("default"))
    resolve_pipeline("org/pipe", revision=second, policy=load_policy("default"))
    paths = sorted((isolated_safeloader_cache / "manifests" / "hub").glob("*.json"))
    by_commit = {json.loads(p.read_text())["commit"]: p for p in paths}
    by_commit[first].write_bytes(by_commit[second].read_bytes())
    with pytest.raises(IntegrityError, match="MAC is missing or wrong"):
        resolve_pipeline("org/pipe", revision=first, policy=load_policy("default"))


@pytest.mark.parametrize(
    "tamper",
    [
        {"notes": "abc"},
        {"notes": {"k": 5}},
        {"signature_sha256": 5},
        {"files": {"../../evil.py": "0" * 64}},
        {"files": {"pipeline.py": "not-hex" * 9 + "x"}},
        {"entry": "missing.py"},
    ],
)
def test_malformed_cached_manifest_is_an_integrity_error(tmp_path: Path, tamper: dict[str, object]) -> None:
    from safeloader.errors import IntegrityError
    from safeloader.resolve.manifest import Manifest

    good = {
        "manifest_version": 1,
        "source": "hub",
        "source_id": "org/pipe",
        "repo": "org/pipe",
        "repo_type": "model",
        "requested_revision": None,
        "commit": "a" * 40,
        "entry": "pipeline.py",
        "files": {"pipeline.py": "b" * 64},
        "fetched_at": "2026-11-26T00:00:00+00:00",
        "notes": {},
    }
    Manifest.from_json_dict(good, tmp_path)
    with pytest.raises(IntegrityError, match="malformed"):
        Manifest.from_json_dict({**good, **tamper}, tmp_path)
