"""Refuse a cache another user could write to, the way ssh refuses a writable ``~/.ssh``.

Everything in the safeloader cache decides which bytes run, so it must be writable by nobody but the
current user: the cache root and every directory below it that is used must be a real directory (not a
symlink) owned by the current effective uid and not writable by group or others; every directory above
the root must be owned by the current uid or root, and be writable by nobody else unless it is sticky
(like ``/tmp``, where others cannot rename what we own). New directories are created 0700, new files
0600 (see :mod:`safeloader.resolve.cache`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from safeloader.errors import CacheError
from safeloader.userpath import expand_user

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def cache_root() -> Path:
    """``$SAFELOADER_CACHE`` read at call time, else the platform's user cache directory (not checked here).

    One root for the resolver's records and the audit's results; ``platformdirs`` is imported only when the
    variable is unset, which keeps ``safeloader audit``'s start-up short.
    """
    configured = os.environ.get("SAFELOADER_CACHE")
    if configured:
        return expand_user(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("safeloader"))


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise CacheError(
            f"cannot inspect cache directory {path} ({exc.strerror}); set $SAFELOADER_CACHE to a directory of yours."
        ) from exc


def _refuse(path: Path, problem: str, fix: str) -> CacheError:
    return CacheError(
        f"refusing the safeloader cache: {path} {problem}, so another user could plant code that safeloader "
        f"would run; {fix} or set $SAFELOADER_CACHE to a private directory."
    )


def check_private_dir(path: Path) -> None:
    """Raise :class:`CacheError` unless ``path`` is a directory of the current user that only it can write."""
    info = _lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "is not a plain directory (a symlink or a file)", f"remove {path}")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise _refuse(path, f"is owned by uid {info.st_uid}, not by you (uid {uid})", f"remove {path}")
    if info.st_mode & _OTHERS_WRITE:
        raise _refuse(
            path, f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})", f"run `chmod go-w {path}`"
        )


def _check_ancestor(path: Path) -> None:
    info = _lstat(path)
    uid = os.geteuid()
    if info.st_uid not in (uid, 0):
        raise _refuse(path, f"(above the cache) is owned by uid {info.st_uid}, neither you nor root", "move the cache")
    if info.st_mode & _OTHERS_WRITE and not info.st_mode & stat.S_ISVTX:
        raise _refuse(
            path,
            f"(above the cache) is writable by group or others without the sticky bit "
            f"(mode {stat.S_IMODE(info.st_mode):o})",
            f"run `chmod go-w {path}`",
        )


def make_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) if missing and check it with :func:`check_private_dir`."""
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CacheError(
            f"cannot create cache directory {path} ({exc.strerror}); set $SAFELOADER_CACHE to a writable directory."
        ) from exc
    check_private_dir(path)
    return path


def secure_root(configured: Path) -> Path:
    """Create the cache root if missing (0700), check it and every directory above it; return its real path."""
    root = Path(os.path.realpath(configured))
    missing = []
    probe = root
    while not os.path.lexists(probe):
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for ancestor in [probe, *probe.parents] if probe != root else list(root.parents):
        _check_ancestor(ancestor)
    for directory in reversed(missing):
        make_private_dir(directory)
    check_private_dir(root)
    return root


def ensure_private_subdir(root: Path, path: Path) -> Path:
    """Create every directory from ``root`` (exclusive) down to ``path`` as 0700 and check each one."""
    relative = path.relative_to(root)
    current = root
    for part in relative.parts:
        current = current / part
        make_private_dir(current)
    return path
