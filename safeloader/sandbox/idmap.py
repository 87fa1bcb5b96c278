"""Idmapped bind mounts: show a file the worker may not read as owned by the worker, without copying it.

A model file can be 0600 and owned by root (or by another user); the worker runs as an unprivileged uid.
Instead of copying the bytes (a 6 GiB sparse file would cost 6 GiB of disk), the launcher (root, in its
private mount namespace) clones a bind mount of the file, attaches an id mapping "file owner → worker
uid/gid" to that mount only (``mount_setattr(MOUNT_ATTR_IDMAP)``, Linux 5.12+, filesystems that support it:
ext4, xfs, btrfs, tmpfs, …), marks it read-only, and moves it onto the placeholder in the model view. The
file on disk, its owner and its mode are untouched, and nothing outside the worker's namespace sees it.
"""

from __future__ import annotations

import ctypes
import os
import signal

from safeloader.errors import SandboxError
from safeloader.sandbox import _libc

# Syscall numbers: the new mount API shares one numbering on every architecture.
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000
_AT_FDCWD = -100


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def user_namespace_mapping(owner_uid: int, owner_gid: int, uid: int, gid: int) -> int:
    """An fd of a new user namespace mapping ``owner_uid``/``owner_gid`` (and nothing else) to ``uid``/``gid``."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            _libc.unshare(_libc.CLONE_NEWUSER)
            os.write(ready_w, b"x")
            os.read(hold_r, 1)  # stay alive until the parent has the namespace's fd
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"x":
            raise SandboxError("sandbox set-up failed: a helper could not create a user namespace for an id mapping.")
        with open(f"/proc/{child}/uid_map", "w") as uid_map:
            uid_map.write(f"{owner_uid} {uid} 1\n")
        with open(f"/proc/{child}/gid_map", "w") as gid_map:
            gid_map.write(f"{owner_gid} {gid} 1\n")
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def bind_mapped(source_fd: int, target: str, userns_fd: int, shown_as: str) -> None:
    """Bind the file open as ``source_fd`` read-only onto ``target``, its owner shown as the mapping says."""
    libc = _libc.libc()
    libc.syscall.restype = ctypes.c_long
    tree = libc.syscall(
        ctypes.c_long(SYS_OPEN_TREE),
        ctypes.c_int(source_fd),
        b"",
        ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH),
    )
    if tree < 0:
        _fail(shown_as, "open_tree")
    try:
        attr = _MountAttr(
            MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            0,
            0,
            userns_fd,
        )
        result = libc.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_int(tree),
            b"",
            ctypes.c_uint(AT_EMPTY_PATH),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        )
        if result < 0:
            _fail(shown_as, "mount_setattr(MOUNT_ATTR_IDMAP)")
        result = libc.syscall(
            ctypes.c_long(SYS_MOVE_MOUNT),
            ctypes.c_int(tree),
            b"",
            ctypes.c_int(_AT_FDCWD),
            os.fsencode(target),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        )
        if result < 0:
            _fail(shown_as, "move_mount")
    finally:
        os.close(tree)


def _fail(shown_as: str, step: str) -> None:
    err = ctypes.get_errno()
    raise SandboxError(
        f"the model file {shown_as} is not readable by the worker's uid, and giving it access without copying "
        f"failed at {step}: {os.strerror(err)} (errno {err}) — this filesystem or kernel has no idmapped mounts; "
        "make the file readable by others (chmod o+r) or move the model to ext4, xfs, btrfs or tmpfs."
    )
