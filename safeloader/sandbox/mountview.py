"""Make the worker's granted paths reachable for its unprivileged uid, inside its own mount namespace.

Why: the interpreter may live under a 0700 directory (``/root/.pyenv``) and model files may be 0600 and
root-owned. Landlock can only narrow access, never widen it, so the launcher (still root, in a private
mount namespace) covers each directory the worker cannot traverse with a small tmpfs and binds back just
the granted paths; the host is untouched and the rest of that directory (``~/.ssh``, the Hub cache) stays
hidden. Model files are bound one by one (see :mod:`.modelview`); those the worker uid cannot read get an
idmapped bind (see :mod:`.idmap`) — no byte is copied.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from safeloader.sandbox import _libc, idmap, modelview


def _other_can_traverse(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return True  # a missing ancestor needs no covering; the grant simply does not exist


def blocked_ancestor(path: str) -> str | None:
    """The outermost proper ancestor of ``path`` a uid that is neither owner nor group cannot traverse."""
    parts = Path(path).parts
    for depth in range(2, len(parts)):
        ancestor = str(Path(*parts[:depth]))
        if not _other_can_traverse(ancestor):
            return ancestor
    return None


def plan_covers(paths: list[str]) -> dict[str, list[str]]:
    """Blocked ancestor → the granted paths under it that must be bound back."""
    covers: dict[str, list[str]] = {}
    for path in paths:
        ancestor = blocked_ancestor(path)
        if ancestor is not None:
            covers.setdefault(ancestor, []).append(path)
    return covers


def add_hidden_dirs(covers: dict[str, list[str]], hidden: tuple[str, ...], needed: list[str]) -> None:
    """Also cover each directory in ``hidden`` (binding back the needed paths under it)."""
    for directory in hidden:
        if not os.path.isdir(directory) or os.path.islink(directory):
            continue
        if any(directory.startswith(key + "/") for key in covers):
            continue  # already inside a covered directory
        for key in [k for k in covers if k == directory or k.startswith(directory + "/")]:
            del covers[key]
        covers[directory] = [p for p in needed if p.startswith(directory + "/")]


def make_mounts_private() -> None:
    _libc.mount(None, "/", None, _libc.MS_REC | _libc.MS_PRIVATE)


def bind(source_fd: int, target: str, read_only: bool) -> None:
    _libc.mount(f"/proc/self/fd/{source_fd}", target, None, _libc.MS_BIND | _libc.MS_REC)
    if read_only:
        _libc.mount(None, target, None, _libc.MS_BIND | _libc.MS_REMOUNT | _libc.MS_RDONLY)


def _bind_model_files(bind_sources: list[tuple[int, dict[str, Any]]], uid: int, gid: int) -> None:
    """Bind each model file onto its placeholder: plain when readable, idmapped (owner → worker) when not."""
    namespaces: dict[tuple[int, int], int] = {}
    try:
        for fd, entry in bind_sources:
            if entry["map_owner"] is None:
                bind(fd, entry["target"], read_only=True)
                continue
            owner = (int(entry["map_owner"][0]), int(entry["map_owner"][1]))
            if owner not in namespaces:
                namespaces[owner] = idmap.user_namespace_mapping(*owner, uid, gid)
            idmap.bind_mapped(fd, entry["target"], namespaces[owner], entry["shown_as"])
    finally:
        for userns_fd in namespaces.values():
            os.close(userns_fd)


def apply(
    covers: dict[str, list[str]], read_only: set[str], file_binds: list[dict[str, Any]], uid: int, gid: int
) -> None:
    """Cover blocked ancestors and bind granted paths back; then bind the model files into the view."""
    # Open every source before the first tmpfs hides it.
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for paths in covers.values() for path in paths}
    bind_sources = [(modelview.open_checked(entry), entry) for entry in file_binds]
    for ancestor in sorted(covers, key=len):
        _libc.mount("tmpfs", ancestor, "tmpfs", _libc.MS_NOSUID | _libc.MS_NODEV, "mode=0755,size=1m")
        for path in covers[ancestor]:
            if os.path.isdir(f"/proc/self/fd/{sources[path]}"):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                Path(path).touch(mode=0o444)
            bind(sources[path], path, path in read_only)
    _bind_model_files(bind_sources, uid, gid)
    for fd in [*sources.values(), *(fd for fd, _ in bind_sources)]:
        os.close(fd)
