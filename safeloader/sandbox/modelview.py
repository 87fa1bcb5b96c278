"""The worker's view of a model directory: same layout, no symlinks, every file readable by the worker.

A Hub snapshot holds symlinks into ``../../blobs/``; they are resolved (only into the model dir itself or
its repository's ``blobs/``). Files the worker uid may read are bound read-only into the view by the
launcher (no copy, works across filesystems); files it may not (0600 root-owned) are copied into the view,
root-owned 0444. The caller's files are never chmod-ed.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from safeloader.errors import SandboxError


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


def build(model_dir: Path, view: Path, uid: int, gid: int) -> list[tuple[str, str]]:
    """Populate ``view`` from ``model_dir``; returns the (source, placeholder) pairs the launcher binds."""
    if not model_dir.is_dir():
        raise SandboxError(f"model directory {model_dir} does not exist; pass the path of a saved pipeline.")
    roots = allowed_roots(model_dir)
    binds: list[tuple[str, str]] = []
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
            if _readable_by(real.stat(), uid, gid):
                target.touch(mode=0o444)
                binds.append((str(real), str(target)))
            else:
                shutil.copyfile(real, target)
                target.chmod(0o444)
    view.chmod(0o755)
    return binds
