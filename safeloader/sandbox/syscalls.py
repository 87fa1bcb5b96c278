"""Syscalls layer: a seccomp *allow list* (libseccomp via pyseccomp), compiled in the caller, loaded in the worker.

Every syscall not named here fails, by number — including numbers newer than the host's libseccomp knows
(``listmount``/``statmount`` hand out the host's mount table; a deny list misses what it does not name):
the named dangerous calls fail with ``EPERM`` (a clear "not permitted"), everything else with ``ENOSYS``
("this kernel has no such call"), which is what makes glibc and runtimes fall back to an older call
(``clone3`` → ``clone``, where the thread flag can be checked). A foreign architecture kills the process,
and so does an x32 call (libseccomp's native-arch filter refuses the x32 bit).

Provenance of :data:`ALLOWED` = :data:`MEASURED` + :data:`ADDED`: measured on 2026-12-01 (Debian 12, glibc
2.36, kernel 6.18, CPython 3.11, torch 2.13 CPU, diffusers, transformers 5, tokenizers, peft) by running
under ``strace -f`` the sandboxed workers of tests/test_sandbox_tiny_sd.py (tiny Stable Diffusion with a
real CLIP text encoder and Rust tokenizer threads), test_proxy_pipelines.py, test_dropin.py and most of
test_sandbox_spawn.py (the trace run's time limit), then, with the allow list in force, ``safeloader demo``
and a LoRA adapter (peft) on the tiny Stable Diffusion, checking that nothing but the intended calls was
refused. :data:`MEASURED` is every call the confined workers made, minus the ones refused on purpose
(``clone3``, ``socket``). :data:`ADDED` is not measured: the other variants of measured calls (``*at``,
``*v``, ``stat``/``lstat``), fd passing and shared memory (``recvmsg`` with ``SCM_RIGHTS``, ``fallocate``),
xattr reads, the epoll/eventfd/timerfd family of async runtimes, signals, timers, thread exit — calls a
pipeline or library plausibly makes that grant nothing beyond what the other layers allow.

:data:`GPU_ALLOWED` (``gpu = true``) comes from the deny-list era's notes: libcuda creates and connects an
``AF_UNIX`` socket (error 304 otherwise) and pins memory; it was not re-measured on a GPU in this version.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import socket
import tempfile
from functools import lru_cache

from safeloader.errors import SandboxError
from safeloader.sandbox import _libc
from safeloader.sandbox.network import DENIED_SOCKET_CALLS

#: Seen in the confined workers (after their seccomp filter was loaded) in the measurement described above.
MEASURED = (
    "access", "arch_prctl", "brk", "chdir", "clock_nanosleep", "close", "close_range", "dup2", "epoll_create1",
    "exit_group", "fadvise64", "fcntl", "fstat", "ftruncate", "futex", "getcwd", "getdents64", "getpeername",
    "getpid", "getrandom", "getsockname", "getsockopt", "gettid", "kill", "lseek", "mbind", "memfd_create",
    "mkdir", "mmap", "mprotect", "munmap", "newfstatat", "open", "openat", "prctl", "pread64", "prlimit64",
    "pselect6", "pwrite64", "read", "readlink", "recvfrom", "recvmsg", "rseq", "rt_sigaction",
    "rt_sigprocmask", "sched_getaffinity", "sched_setaffinity", "sendmsg", "sendto", "set_robust_list",
    "set_tid_address", "statx", "sysinfo", "uname", "unlink", "write",
)  # fmt: skip
#: Not seen in the measurement, allowed because the worker or its libraries plausibly need them (see above).
ADDED = (
    # files and directories (Landlock decides which paths): the other variants of measured calls
    "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2", "openat2", "creat", "stat", "lstat",
    "statfs", "fstatfs", "faccessat", "faccessat2", "readlinkat", "getdents", "fchdir", "mkdirat", "rmdir",
    "unlinkat", "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "truncate", "fallocate", "fsync", "fdatasync", "readahead", "flock", "dup",
    "dup3", "pipe", "pipe2", "umask", "utime", "utimes", "utimensat", "futimesat", "sendfile",
    "copy_file_range", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    # waiting on file descriptors (async runtimes: tokio, asyncio)
    "poll", "ppoll", "select", "epoll_create", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4",
    # memory
    "mremap", "madvise", "mincore", "msync", "membarrier", "get_mempolicy", "set_mempolicy",
    # threads and the process itself
    "exit", "wait4", "waitid", "get_robust_list", "futex_waitv", "sched_yield", "sched_getparam",
    "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "sched_getattr", "getcpu",
    "getpriority", "setpriority", "getrlimit", "setrlimit", "getrusage", "times", "getppid", "getuid",
    "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getpgrp", "getpgid", "getsid",
    # signals (the PID namespace and Landlock's signal scope keep them inside the sandbox)
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigpending", "sigaltstack", "tgkill", "tkill",
    "pause", "alarm", "setitimer", "getitimer", "restart_syscall", "timer_create", "timer_settime",
    "timer_gettime", "timer_delete", "timer_getoverrun",
    # time
    "clock_gettime", "clock_getres", "nanosleep", "gettimeofday", "time",
    # the inherited IPC socket (fd 3): batches, shutdown, options
    "sendmmsg", "recvmmsg", "shutdown", "setsockopt",
)  # fmt: skip
#: Allowed without argument checks (``clone``, ``ioctl`` and ``socket`` are handled below).
ALLOWED = MEASURED + ADDED
#: Refused with EPERM rather than ENOSYS because Python code treats EPERM as "not permitted here" and goes
#: on (``shutil.copy2`` copying extended attributes), while ENOSYS would be raised.
REFUSED_QUIETLY = (
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "chown", "fchown", "lchown", "fchownat", "mknod", "mknodat",
)  # fmt: skip
#: Also allowed with ``gpu = true`` (besides ``socket(AF_UNIX)``).
#: Not measured (no GPU in this round): libcuda's AF_UNIX socket calls, page locking, and SysV shared memory
#: (the worker has its own IPC namespace, and the memory cgroup counts those pages).
GPU_ALLOWED = (
    "connect", "bind", "listen", "accept", "accept4", "mlock", "munlock", "mlock2",
    "shmget", "shmat", "shmdt", "shmctl",
)  # fmt: skip

#: Refused with EPERM by name (everything else unnamed gets ENOSYS). Kept explicit so that the refusal is
#: unmistakable and so that no later edit of :data:`ALLOWED` can let one of them through (see the test).
DENIED_EPERM = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "bpf", "keyctl", "add_key", "request_key", "perf_event_open",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "unshare", "setns",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "personality", "pidfd_getfd", "process_madvise", "kcmp", "acct", "swapon", "swapoff",
    "reboot", "syslog", "quotactl", "uselib", "iopl", "ioperm", "fanotify_init", "lookup_dcookie", "vhangup",
    "connect", "bind", "listen", "accept", "accept4",
    *DENIED_SOCKET_CALLS,
)  # fmt: skip
_TIOCSTI = 0x5412
#: clone() flags that would start a new namespace (seccomp can read clone's flags, unlike clone3's).
_NEW_NAMESPACE_FLAGS = (
    _libc.CLONE_NEWNS
    | _libc.CLONE_NEWCGROUP
    | _libc.CLONE_NEWUTS
    | _libc.CLONE_NEWIPC
    | _libc.CLONE_NEWUSER
    | _libc.CLONE_NEWPID
    | _libc.CLONE_NEWNET
)


def _known(name: str) -> bool:
    import pyseccomp

    return bool(pyseccomp.resolve_syscall(pyseccomp.system_arch(), name) >= 0)


def _add(filt: object, action: int, name: str, *args: object) -> bool:
    if not _known(name):
        return False  # this architecture (or this libseccomp) has no such call: the default refuses it
    filt.add_rule(action, name, *args)  # type: ignore[attr-defined]
    return True


def allowed_names(gpu: bool = False) -> tuple[str, ...]:
    """Every syscall the worker may make (some only with argument checks), as named in this module."""
    names = [*ALLOWED, "clone", "ioctl"]
    if gpu:
        names += [*GPU_ALLOWED, "socket"]
    return tuple(names)


@lru_cache(maxsize=2)
def allowed_count(gpu: bool = False) -> int:
    """How many syscalls the filter lets through on this architecture (for reports and doctor)."""
    return sum(1 for name in allowed_names(gpu) if _known(name))


def _allow_ioctl_except_tiocsti(filt: object, allow: int) -> None:
    """Allow ``ioctl`` unless its request's low 32 bits are TIOCSTI (the kernel ignores the high bits).

    libseccomp lets an unconditional rule win over a conditional one for the same call, and has no "not
    equal under a mask": so one ALLOW rule per bit, each matching requests that differ from TIOCSTI there.
    """
    import pyseccomp

    for bit in range(32):
        mask = 1 << bit
        _add(filt, allow, "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, mask, (~_TIOCSTI) & mask))


@lru_cache(maxsize=2)
def compile_filter(gpu: bool = False) -> bytes:
    """The worker's seccomp program as raw BPF (a multiple of 8 bytes).

    With ``gpu``, ``socket(AF_UNIX, …)`` and the calls of :data:`GPU_ALLOWED` are allowed: libcuda's
    initialisation fails (error 304) when it cannot create one, whatever the errno. Every other family
    stays refused.
    """
    try:
        import pyseccomp
    except (ImportError, OSError) as exc:
        raise SandboxError(
            f"the seccomp layer needs libseccomp through pyseccomp, which failed to load ({exc}); "
            "install libseccomp2, or drop 'syscalls' from 'sandbox.require'."
        ) from exc
    filt = pyseccomp.SyscallFilter(pyseccomp.ERRNO(errno.ENOSYS))
    # libseccomp's default for a foreign architecture kills only the thread; kill the whole process.
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    # A binary tree over syscall numbers instead of a linear chain: an allow list is long.
    with contextlib.suppress(OSError):
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    allow, eperm = pyseccomp.ALLOW, pyseccomp.ERRNO(errno.EPERM)
    granted = set(allowed_names(gpu))
    for name in ALLOWED:
        _add(filt, allow, name)
    if gpu:
        for name in GPU_ALLOWED:
            _add(filt, allow, name)
        _add(filt, allow, "socket", pyseccomp.Arg(0, pyseccomp.EQ, socket.AF_UNIX))
        _add(filt, eperm, "socket", pyseccomp.Arg(0, pyseccomp.NE, socket.AF_UNIX))
    for name in (*DENIED_EPERM, *REFUSED_QUIETLY):
        if name not in granted:
            _add(filt, eperm, name)
    # Threads are clone(CLONE_THREAD|…) without namespace flags; a new process is clone without CLONE_THREAD.
    thread_mask = _libc.CLONE_THREAD | _NEW_NAMESPACE_FLAGS
    _add(filt, allow, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, thread_mask, _libc.CLONE_THREAD))
    _add(filt, eperm, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _libc.CLONE_THREAD, 0))
    # clone3 passes its flags in memory seccomp cannot read: it gets the default ENOSYS (libseccomp refuses a
    # rule repeating the default action), which makes glibc fall back to clone.
    _allow_ioctl_except_tiocsti(filt, allow)
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
