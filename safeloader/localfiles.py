"""What a local model or pipeline folder may contain: regular files with one link, and directories.

One rule for every place safeloader reads a folder the user pointed it at (the resolver reading a local
pipeline, the model view the worker sees): anything else is refused with the file's name and why.

* a file with more than one hard link may be the other name of a root-only file anywhere on the same
  filesystem (``/etc/shadow``, another user's token): reading "the model" as root would read that;
* a device node would hand the worker a device (``/dev/sda``) under a harmless name;
* a FIFO blocks whoever opens it, and a socket connects to whatever listens on it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from safeloader.errors import UnsafeLocalFile

_KINDS = (
    (stat.S_ISCHR, "a character device node"),
    (stat.S_ISBLK, "a block device node"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a unix socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def why_unsafe(st: os.stat_result) -> str | None:
    """Why an entry with this ``lstat``/``stat`` result must not be exposed (``None``: it is fine)."""
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1:
            return (
                f"a regular file with {st.st_nlink} hard links (another name of it may be a private file "
                "elsewhere on this filesystem)"
            )
        return None
    for check, kind in _KINDS:
        if check(st.st_mode):
            return kind
    return f"a file of unknown type (mode {st.st_mode:#o})"


def check_plain(path: Path, *, shown_as: Path | None = None) -> os.stat_result:
    """``stat`` the real file at ``path`` (symlinks already resolved by the caller) and refuse anything unsafe.

    ``shown_as`` is the name the user knows it by (the symlink in a Hub snapshot, say) for the message.
    """
    st = os.stat(path, follow_symlinks=False)
    reason = why_unsafe(st)
    if reason is not None:
        name = f"{shown_as} (-> {path})" if shown_as is not None and Path(shown_as) != path else str(path)
        raise UnsafeLocalFile(
            f"{name} is {reason}; a model or pipeline folder may hold only regular files and directories — "
            "replace it with a plain copy of the file, or remove it."
        )
    return st
