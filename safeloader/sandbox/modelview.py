"""The worker's view of a model directory: same layout, no symlinks, only regular files and directories.

A Hub snapshot holds symlinks into ``../../blobs/``; they are resolved (only into the model dir itself or
its repository's ``blobs/``). Every entry passes :func:`safeloader.localfiles.check_plain` (no
hard link, device node, FIFO or socket). No byte is ever copied: each file is bound read-only onto an
empty placeholder by the launcher — a plain bind when the worker uid may read it, an idmapped bind
showing the file as the worker's own (see :mod:`.idmap`) when it may not (0600 and root-owned, say). The
caller's files are never chmod-ed; the launcher re-checks each file's identity when it opens it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from safeloader.errors import SandboxError
from safeloader.localfiles import check_plain


def _readable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def allowed_roots(model_dir: Path) -> list[Path]:
    root = model_dir.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def _check_inside(real: Path, roots: list[Path], link: Path) -> None:
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise SandboxError(
            f"model path {link} is a symlink to {real}, outside the model directory; "
            "copy the model into a plain directory or remove the link."
        )


def _bind_entry(source: Path, real: Path, target: Path, uid: int, gid: int) -> dict[str, Any]:
    st = check_plain(real, shown_as=source)
    map_owner = None
    if not _readable_by(st, uid, gid):
        if os.geteuid() != 0 or not st.st_mode & stat.S_IRUSR:
            raise SandboxError(
                f"the model file {source} (mode {stat.S_IMODE(st.st_mode):#o}) is not readable by the worker's "
                "uid and safeloader copies no model bytes; make it readable (chmod o+r) and load again."
            )
        map_owner = [st.st_uid, st.st_gid]
    return {
        "source": str(real),
        "target": str(target),
        "shown_as": str(source),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "map_owner": map_owner,
    }


def build(model_dir: Path, view: Path, uid: int, gid: int) -> list[dict[str, Any]]:
    """Lay out ``view`` (directories and empty placeholders); returns the binds the launcher performs."""
    if not model_dir.is_dir():
        raise SandboxError(f"model directory {model_dir} does not exist; pass the path of a saved pipeline.")
    roots = allowed_roots(model_dir)
    binds: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for current, dirs, files in os.walk(model_dir, followlinks=True):
        real_dir = Path(current).resolve()
        _check_inside(real_dir, roots, Path(current))
        if real_dir in seen:
            dirs.clear()
            continue
        seen.add(real_dir)
        target_dir = view / Path(current).relative_to(model_dir)
        target_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for name in files:
            source = Path(current) / name
            real = source.resolve()
            _check_inside(real, roots, source)
            target = target_dir / name
            binds.append(_bind_entry(source, real, target, uid, gid))
            target.touch(mode=0o444)
    view.chmod(0o755)
    return binds


def open_checked(entry: dict[str, Any]) -> int:
    """Open a bind source (``O_PATH``, no symlink) and confirm it is still the file that was checked."""
    fd = os.open(entry["source"], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (entry["dev"], entry["ino"]) or not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise SandboxError(
            f"the model file {entry['shown_as']} changed while the sandbox was being set up; load again, and "
            "make sure nothing else writes to the model folder meanwhile."
        )
    return fd
