"""The worker's writable space (HOME and TMPDIR) on one size-capped tmpfs in its own mount namespace.

Without it the worker could fill the caller's disk through its TMPDIR (``RLIMIT_FSIZE`` bounds one file,
not how many). The launcher mounts a tmpfs of ``[sandbox] tmp_size_mb`` on a scratch directory, creates
``home`` and ``tmp`` inside it owned by the worker, and binds them over the worker's HOME and TMPDIR paths;
the host sees nothing of it, and it vanishes with the worker's mount namespace. tmpfs pages are memory: with
a memory cgroup they count against ``memory_limit_mb`` too.
"""

from __future__ import annotations

import os

from safeloader.sandbox import _libc

MIB = 1 << 20


def mount_scratch(scratch: str, targets: list[str], uid: int, gid: int, size_mb: int) -> None:
    """Mount the capped tmpfs on ``scratch`` and bind a fresh worker-owned directory over each target."""
    _libc.mount(
        "tmpfs",
        scratch,
        "tmpfs",
        _libc.MS_NOSUID | _libc.MS_NODEV,
        f"size={size_mb * MIB},nr_inodes=65536,mode=0700",
    )
    for target in targets:
        inside = os.path.join(scratch, os.path.basename(target))
        os.mkdir(inside, 0o700)
        os.chown(inside, uid, gid)
        _libc.mount(inside, target, None, _libc.MS_BIND)


def detail(size_mb: int, mounted: bool) -> str:
    if mounted:
        return f"HOME and TMPDIR on one tmpfs of {size_mb} MiB in the worker's mount namespace"
    return "HOME and TMPDIR on the host disk (no mount namespace); only RLIMIT_FSIZE bounds each file"
