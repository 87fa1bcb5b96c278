"""Syscalls layer: a seccomp filter built with libseccomp (pyseccomp), compiled in the caller, loaded in the worker.

Compiling in the caller matters: importing pyseccomp runs ``/sbin/ldconfig -p``, which the worker could not
exec. The worker only hands the BPF program to ``prctl(PR_SET_SECCOMP)`` (see :mod:`.inworker`).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import tempfile
from functools import lru_cache

from safeloader.errors import SandboxError
from safeloader.sandbox import _libc
from safeloader.sandbox.network import DENIED_SOCKET_CALLS

#: Refused with EPERM. Process creation (fork/vfork, clone without CLONE_THREAD) is handled separately.
DENIED_EPERM = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "bpf", "keyctl", "add_key", "request_key", "perf_event_open",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "unshare", "setns",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "personality", "pidfd_getfd", "process_madvise", "kcmp", "acct", "swapon", "swapoff",
    "reboot", "syslog", "quotactl", "uselib", "iopl", "ioperm", "fanotify_init", "lookup_dcookie", "vhangup",
    *DENIED_SOCKET_CALLS,
)  # fmt: skip
_TIOCSTI = 0x5412


def _add(filt: object, action: int, name: str, *args: object) -> bool:
    import pyseccomp

    if pyseccomp.resolve_syscall(pyseccomp.system_arch(), name) < 0:
        return False  # this architecture has no such call (e.g. fork on aarch64)
    filt.add_rule(action, name, *args)  # type: ignore[attr-defined]
    return True


@lru_cache(maxsize=2)
def compile_filter(gpu: bool = False) -> bytes:
    """The worker's seccomp program as raw BPF (a multiple of 8 bytes).

    With ``gpu``, ``socket(AF_UNIX, …)`` is allowed: libcuda's initialisation fails (error 304) when it
    cannot create one, whatever the errno. Every other family stays refused.
    """
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:
        raise SandboxError(
            f"the seccomp layer needs libseccomp through pyseccomp, which failed to load ({exc}); "
            "install libseccomp2, or drop 'syscalls' from 'sandbox.require'."
        ) from exc
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    # libseccomp's default for a foreign architecture kills only the thread; kill the whole process.
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    eperm = pyseccomp.ERRNO(errno.EPERM)
    for name in DENIED_EPERM:
        if not (gpu and name == "socket"):
            _add(filt, eperm, name)
    if gpu:
        _add(filt, eperm, "socket", pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
    # Threads are clone(CLONE_THREAD|…); a new process is clone without it.
    _add(filt, eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _libc.CLONE_THREAD, 0))
    # clone3 passes its flags in memory seccomp cannot read: ENOSYS makes glibc fall back to clone.
    _add(filt, pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    _add(filt, eperm, "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(program: bytes) -> None:
    """Install ``program`` for this (single-threaded) process; needs ``no_new_privs``, which the launcher set."""
    if not program or len(program) % 8:
        raise SandboxError(
            "the seccomp program handed to the worker is malformed; this is a safeloader bug, report it."
        )
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p).value)
    _libc.prctl(_libc.PR_SET_SECCOMP, _libc.SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def unavailable() -> str | None:
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail") as actions:
            available = actions.read().split()
    except OSError:
        return "the kernel has no seccomp filter support (/proc/sys/kernel/seccomp missing)"
    if "errno" not in available or "kill_process" not in available:
        return f"the kernel's seccomp lacks the errno/kill_process actions (has: {' '.join(available)})"
    return None
