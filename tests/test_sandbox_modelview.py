"""The model folder the worker sees: regular files and directories only, read-only, and no byte copied."""

from __future__ import annotations

import json
import os
import platform
import socket
import stat
from pathlib import Path

import pytest

from safeloader.errors import UnsafeLocalFile
from safeloader.localfiles import why_unsafe
from safeloader.policy import load_policy
from safeloader.policy.schema import SandboxPolicy
from safeloader.resolve import resolve_pipeline
from safeloader.sandbox.spawn import spawn_worker

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the sandbox is Linux-only")

PRELUDE = "from safeloader.sandbox.inworker import finish_confinement; finish_confinement()\n"
SPARSE_SIZE = 6 << 30
MARKER = b"end of the sparse file"

#: Reads the model folder whose path arrives on fd 3: sizes, the sparse file's tail, and a write attempt.
READER = (
    PRELUDE
    + r"""
import json, os, socket
root = socket.socket(fileno=3).recv(4096).decode()
seen = {"sizes": {}, "kinds": {}}
for name in sorted(os.listdir(root)):
    st = os.stat(os.path.join(root, name))
    seen["sizes"][name] = st.st_size
with open(os.path.join(root, "huge.bin"), "rb") as f:
    f.seek(-len(b"end of the sparse file"), 2)
    seen["tail"] = f.read().decode()
with open(os.path.join(root, "secret-weights.bin"), "rb") as f:
    seen["private"] = f.read().decode()
try:
    open(os.path.join(root, "secret-weights.bin"), "ab").close()
    seen["write"] = "allowed"
except OSError as exc:
    seen["write"] = type(exc).__name__
print("SEEN", json.dumps(seen), flush=True)
"""
)


@pytest.mark.skipif(os.geteuid() != 0, reason="root-owned 0600 model files are the root caller's case")
def test_sparse_and_root_only_files_are_bound_not_copied(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"padding": "x" * (200 << 10)}))
    with open(model / "huge.bin", "wb") as huge:  # 6 GiB apparent size, a few KiB on disk
        huge.truncate(SPARSE_SIZE - len(MARKER))
        huge.seek(0, os.SEEK_END)
        huge.write(MARKER)
    os.chmod(model / "huge.bin", 0o600)
    (model / "secret-weights.bin").write_text("weights only root may read")
    os.chmod(model / "secret-weights.bin", 0o600)
    worker = spawn_worker(SandboxPolicy(threads=1), model_dir=model, argv=["-c", READER])
    try:
        assert worker.model_dir is not None
        view_blocks = sum(p.lstat().st_blocks for p in worker.model_dir.rglob("*"))
        worker.sock.sendall(str(worker.model_dir).encode())
        assert worker.wait(60) == 0, worker.stderr_tail()
        seen = json.loads(worker.stderr_tail(5).split("SEEN ", 1)[1].splitlines()[0])
    finally:
        worker.close()
    assert view_blocks * 512 < 1 << 20  # the caller wrote placeholders only, not 6 GiB (nor 200 KiB)
    assert seen["sizes"]["huge.bin"] == SPARSE_SIZE and seen["tail"] == MARKER.decode()
    assert seen["private"] == "weights only root may read"
    assert seen["write"] in ("PermissionError", "OSError")
    # The caller's files are untouched: still root's, still 0600.
    st = (model / "secret-weights.bin").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def _special(kind: str, path: Path) -> socket.socket | None:
    if kind == "hard link":
        private = path.parents[2] / "root-only-secret"  # outside the model folder
        private.write_text("not the model's")
        private.chmod(0o600)
        os.link(private, path)
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    elif kind == "socket":
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        return listener
    return None


KINDS = {"hard link": "2 hard links", "FIFO": "FIFO", "device": "character device", "socket": "unix socket"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_special_files_in_the_model_folder_are_refused_naming_them(
    kind: str, tiny_model_copy: Path, tmp_path: Path
) -> None:
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    target = tiny_model_copy / "unet" / "extra.bin"
    listener = _special(kind, target)
    try:
        with pytest.raises(UnsafeLocalFile, match=KINDS[kind]) as info:
            spawn_worker(SandboxPolicy(), model_dir=tiny_model_copy, argv=["-c", "pass"])
        assert str(target) in str(info.value)
    finally:
        if listener is not None:
            listener.close()


def test_the_resolver_applies_the_same_rule_to_a_local_pipeline_folder(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    outside = tmp_path / "elsewhere.py"
    outside.write_text("CLASS = 'not audited as part of this folder'\n")
    (code / "pipeline.py").write_text("from .helpers import CLASS\n")
    os.link(outside, code / "helpers.py")
    with pytest.raises(UnsafeLocalFile, match="2 hard links") as info:
        resolve_pipeline(str(code), policy=load_policy("default"))
    assert "helpers.py" in str(info.value)


def test_one_rule_for_every_kind_of_entry(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert why_unsafe(plain.stat()) is None and why_unsafe(tmp_path.stat()) is None
    os.link(plain, tmp_path / "other-name")
    assert "2 hard links" in str(why_unsafe(plain.stat()))
    os.mkfifo(tmp_path / "fifo")
    assert "FIFO" in str(why_unsafe((tmp_path / "fifo").lstat()))
    (tmp_path / "link").symlink_to(plain)
    assert "symbolic link" in str(why_unsafe((tmp_path / "link").lstat()))


def test_a_fifo_as_model_index_is_refused_before_the_caller_reads_it(tiny_model_copy: Path) -> None:
    from safeloader import DiffusionPipeline

    (tiny_model_copy / "model_index.json").unlink()
    os.mkfifo(tiny_model_copy / "model_index.json")  # reading it would block the caller forever
    with pytest.raises(UnsafeLocalFile, match="FIFO"):
        DiffusionPipeline.from_pretrained(str(tiny_model_copy))
