"""The few libc calls Python 3.11 lacks (unshare, mount, prctl, raw syscalls), each checked: errno → SandboxError.

Kept tiny on purpose: every foreign call of the sandbox goes through :func:`call`, so a failure always names
the operation and the errno instead of silently returning -1.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import lru_cache

from safeloader.errors import SandboxError

# clone/unshare flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000

# mount flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

# prctl options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# Landlock's syscalls share one number on every architecture (they are newer than the unified table).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL:
    # The interpreter's own symbol table holds libc: no ctypes.util.find_library, which runs ldconfig.
    return ctypes.CDLL(None, use_errno=True)


def call(what: str, result: int) -> int:
    """Turn a libc ``-1``/errno result into a :class:`SandboxError` naming ``what``."""
    if result == -1:
        err = ctypes.get_errno()
        raise SandboxError(
            f"sandbox set-up failed at {what}: {os.strerror(err)} (errno {err}); "
            "run `safeloader doctor` to see which layer this host cannot provide."
        )
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    fn = libc().prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return call(f"prctl({option})", fn(option, arg2, arg3, arg4, arg5))


def unshare(flags: int) -> None:
    call(f"unshare({flags:#x})", libc().unshare(ctypes.c_int(flags)))


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    fn = libc().mount
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

    def enc(value: str | None) -> bytes | None:
        return None if value is None else os.fsencode(value)

    call(f"mount({source!r} on {target!r})", fn(enc(source), enc(target), enc(fstype), flags, enc(data)))


def syscall(what: str, number: int, *args: object) -> int:
    fn = libc().syscall
    fn.restype = ctypes.c_long
    return call(what, fn(ctypes.c_long(number), *args))


def machine() -> str:
    return platform.machine()
