"""Fault injection between the Hub and the cache: a hostile or broken Hub, a full disk, a killed loader.

Real ``huggingface_hub`` client against the loopback Hub; nothing of huggingface_hub is mocked. Each fault
must end in a clear SafeLoaderError within bounded time, with nothing half-written left in or used from the
cache; once the fault is gone, the same resolve succeeds from a clean download. (Dropped connections, same-size
wrong bytes, 8 healthy concurrent resolvers and a branch moved right after resolution are in test_cache.py and
test_resolve_race.py.)
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeloader.errors import CacheError, DownloadError, IntegrityError, SafeLoaderError
from safeloader.policy import load_policy
from safeloader.resolve import resolve_pipeline
from safeloader.resolve.manifest import Manifest, sha256_hex
from safeloader.verify.signatures import add_signature
from tests.fixtures.hub_server import LoopbackHub

PIPELINE = b"from .helpers import h\n\nclass P:\n    pass\n"
HELPERS = b"def h():\n    return 1\n" * 40
FILES = {"pipeline.py": PIPELINE, "helpers.py": HELPERS}
#: A fault must be reported within this (huggingface_hub retries a cut body 5 times, 1 s apart).
BOUND_S = 15.0


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile (the resolver's private download dirs) at a folder this test can inspect."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def cache_files(cache: Path) -> list[Path]:
    """Everything stored in the cache except lock files, the cache secret and the record of what each endpoint
    listed (kept on purpose, to catch a mirror contradicting it later; it names no bytes to run)."""
    return sorted(
        p
        for p in cache.rglob("*")
        if p.is_file() and not {"locks", "listings"} & set(p.relative_to(cache).parts) and p.name != "cache.key"
    )


def assert_cache_consistent(cache: Path) -> None:
    """No temp file anywhere, every blob named by its hash, every manifest pointing at present blobs."""
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    for blob in (cache / "blobs").rglob("*"):
        if blob.is_file():
            assert sha256_hex(blob.read_bytes()) == blob.name, f"half-written blob {blob}"
    for manifest in (cache / "manifests").rglob("*.json"):
        for digest in json.loads(manifest.read_text())["files"].values():
            assert (cache / "blobs" / digest[:2] / digest).is_file()


def resolve(revision: str) -> Manifest:
    return resolve_pipeline("org/pipe", revision=revision, policy=load_policy("default"))


# --- a Hub that lies about sizes and bytes ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["pipeline.py", "helpers.py"])
def test_endless_body_is_cut_at_the_listed_size(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, private_tmp: Path, path: str
) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    loopback_hub.serve_endless_body(path)
    started = time.monotonic()
    with pytest.raises(IntegrityError, match=rf"{path} downloaded .* longer than the {len(FILES[path])} bytes"):
        resolve(revision=sha)
    assert time.monotonic() - started < BOUND_S
    assert cache_files(isolated_safeloader_cache) == []
    assert list(private_tmp.iterdir()) == []  # the partial download went with its private folder
    loopback_hub.clear_faults()
    assert resolve(revision=sha).read_verified(path) == FILES[path]


def test_announced_size_larger_than_the_body_stores_nothing(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, private_tmp: Path
) -> None:
    sha = loopback_hub.create_repo("org/pipe", FILES)
    loopback_hub.serve_wrong_size("helpers.py", extra=1000)
    started = time.monotonic()
    with pytest.raises(DownloadError, match="nothing was stored"):
        resolve(revision=sha)
    assert time.monotonic() - started < BOUND_S
    # pipeline.py had downloaded fine, but bytes enter the cache only once the whole closure has.
    assert cache_files(isolated_safeloader_cache) == []
    assert list(private_tmp.iterdir()) == []
    loopback_hub.clear_faults()
    assert resolve(revision=sha).read_verified("helpers.py") == HELPERS


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("pipeline.py", b"import os\nos.system('id')\n", DownloadError),  # shorter than the Hub said
        ("pipeline.py", PIPELINE + b"\nimport os\n", IntegrityError),  # longer than the Hub said
        ("safeloader.sig", None, IntegrityError),  # the signature swapped for another of the same size
    ],
    ids=["shorter", "longer", "signature"],
)
def test_wrong_bytes_are_refused_and_never_stored(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, path: str, body: bytes | None, error: type
) -> None:
    files = dict(FILES)
    signature = add_signature(None, {"key_id": "ed25519:x", "signature": "A" * 88, "signed": {"entry": "p"}})
    files["safeloader.sig"] = signature
    sha = loopback_hub.create_repo("org/pipe", files)
    loopback_hub.serve_wrong_bytes(path, body if body is not None else signature.replace(b"A" * 88, b"B" * 88))
    with pytest.raises(error):
        resolve(revision=sha)
    assert cache_files(isolated_safeloader_cache) == []
    loopback_hub.clear_faults()
    assert resolve(revision=sha).read_verified("pipeline.py") == PIPELINE


# --- a full disk or a failing write while the cache is written ---------------------------------------------


def _fail_writes_into(monkeypatch: pytest.MonkeyPatch, folder: str, *, after: int = 0) -> list[str]:
    """Make ``fsync`` of files under ``folder`` fail with ENOSPC after ``after`` successes; returns the failures."""
    real_fsync = os.fsync
    failed: list[str] = []
    succeeded = [0]

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}") if isinstance(fd, int) else ""
        if f"/{folder}/" in target and target.endswith(".tmp"):
            if succeeded[0] >= after:
                failed.append(target)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            succeeded[0] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


@pytest.mark.parametrize(("folder", "after"), [("blobs", 0), ("blobs", 1), ("manifests", 0), ("refs", 0)])
def test_write_failure_leaves_nothing_half_written(
    loopback_hub: LoopbackHub,
    isolated_safeloader_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder: str,
    after: int,
) -> None:
    loopback_hub.create_repo("org/pipe", FILES)
    real_fsync = os.fsync
    failed = _fail_writes_into(monkeypatch, folder, after=after)
    with pytest.raises(CacheError, match="check free space"):
        resolve(revision="main")
    assert failed, "the fault was never hit"
    assert_cache_consistent(isolated_safeloader_cache)
    assert not list((isolated_safeloader_cache / "manifests").rglob("*.json"))  # no manifest: nothing usable
    monkeypatch.setattr(os, "fsync", real_fsync)  # the disk has room again
    downloads = loopback_hub.count("GET", "/resolve/")
    manifest = resolve(revision="main")
    assert manifest.read_verified("helpers.py") == HELPERS
    assert loopback_hub.count("GET", "/resolve/") == downloads + len(FILES)  # downloaded again, from scratch
    assert_cache_consistent(isolated_safeloader_cache)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real ENOSPC from the kernel, mid-write (needs root and mount rights; skipped without)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_real_disk_full_mid_blob_is_a_clear_error(
    loopback_hub: LoopbackHub, tiny_tmpfs: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    big = b"# padding\n" * 40_000  # 400 KB: larger than the whole file system
    sha = loopback_hub.create_repo("org/pipe", {"pipeline.py": b"from .big import X\n", "big.py": big + b"X = 1\n"})
    cache = tiny_tmpfs / "cache"
    monkeypatch.setenv("SAFELOADER_CACHE", str(cache))
    for _ in range(2):  # a retry meets the same clear error, not a leftover
        with pytest.raises(CacheError, match="check free space and permissions"):
            resolve(revision=sha)
        assert_cache_consistent(cache)
        assert not list((cache / "manifests").rglob("*.json"))
    assert os.statvfs(tiny_tmpfs).f_bfree * os.statvfs(tiny_tmpfs).f_frsize > 200_000  # the partial file is gone
    monkeypatch.setenv("SAFELOADER_CACHE", str(tmp_path / "roomy"))
    assert resolve(revision=sha).read_verified("big.py").startswith(b"# padding")


# --- a loader killed mid-download, then 8 at once ---------------------------------------------------------


def _resolve_in_child(endpoint: str, cache: str, queue: multiprocessing.Queue) -> None:
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ["SAFELOADER_CACHE"] = cache
    try:
        manifest = resolve_pipeline("org/pipe", revision="main", policy=load_policy("default"))
        queue.put(json.dumps(dict(manifest.files), sort_keys=True))
    except SafeLoaderError as exc:
        queue.put(f"ERROR {type(exc).__name__}: {exc}")
    except BaseException as exc:  # report anything else to the parent rather than hang it
        queue.put(f"UNEXPECTED {type(exc).__name__}: {exc}")


def test_killed_loader_then_eight_concurrent_loaders_with_one_bad_answer(
    loopback_hub: LoopbackHub, isolated_safeloader_cache: Path, private_tmp: Path
) -> None:
    loopback_hub.create_repo("org/pipe", FILES)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    reached, release = threading.Event(), threading.Event()

    def hold_first_helpers_download(method: str, path: str) -> None:
        if method == "GET" and path.endswith("/helpers.py") and not reached.is_set():
            reached.set()
            release.wait(30)
            # The loader that sent this request is dead by now: end the request here, so that it cannot
            # use up the one bad answer set up below (faults are consumed after these callbacks run).
            raise ConnectionAbortedError("the loader holding this request was killed")

    loopback_hub.before_request(hold_first_helpers_download)
    victim = context.Process(
        target=_resolve_in_child, args=(loopback_hub.endpoint, str(isolated_safeloader_cache), queue)
    )
    victim.start()
    assert reached.wait(60), "the first loader never reached its download"
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)  # killed while holding the entry lock, mid-download
    victim.join(10)
    release.set()
    assert_cache_consistent(isolated_safeloader_cache)
    assert not list((isolated_safeloader_cache / "manifests").rglob("*.json"))

    # The next loader to take the lock gets wrong bytes once; the lock passes on and the rest succeed.
    loopback_hub.serve_wrong_bytes("helpers.py", HELPERS.replace(b"return 1", b"return 2"), times=1)
    loaders = [
        context.Process(target=_resolve_in_child, args=(loopback_hub.endpoint, str(isolated_safeloader_cache), queue))
        for _ in range(8)
    ]
    for loader in loaders:
        loader.start()
    results = [queue.get(timeout=120) for _ in loaders]
    for loader in loaders:
        loader.join(30)
    errors = [r for r in results if not r.startswith("{")]
    assert len(errors) == 1 and errors[0].startswith("ERROR IntegrityError"), results
    assert len({r for r in results if r.startswith("{")}) == 1
    assert json.loads(next(r for r in results if r.startswith("{")))["helpers.py"] == sha256_hex(HELPERS)
    assert_cache_consistent(isolated_safeloader_cache)


# --- a branch moved between two file downloads -------------------------------------------------------------


def test_branch_force_pushed_between_two_file_downloads(loopback_hub: LoopbackHub) -> None:
    good = loopback_hub.create_repo("org/pipe", FILES)
    evil_files = {"pipeline.py": b"import os\nfrom .helpers import h\n", "helpers.py": b"import subprocess\n"}
    moved: list[str] = []

    def force_push_after_first_file(method: str, path: str) -> None:
        # The entry file has just been served; before helpers.py is requested, main is rewritten to a commit
        # that does not descend from the one resolved (a force-push).
        if method == "GET" and path.endswith("/helpers.py") and not moved:
            moved.append(loopback_hub.commit("org/pipe", evil_files, branch="rewritten"))
            loopback_hub.set_ref("org/pipe", "main", moved[0])

    loopback_hub.before_request(force_push_after_first_file)
    manifest = resolve(revision="main")
    assert moved and loopback_hub.head("org/pipe") == moved[0] != good
    assert manifest.commit == good
    assert manifest.read_verified("pipeline.py") == PIPELINE
    assert manifest.read_verified("helpers.py") == HELPERS
    file_requests = [p for m, p in loopback_hub.requests if "/resolve/" in p and "org/pipe/" in p]
    assert len(file_requests) >= 2 and all(f"/resolve/{good}/" in p for p in file_requests)
