"""Filesystem layer: Landlock, checked against the kernel's ABI, plus its TCP and scope restrictions.

Read-only: the Python installation, site-packages, the safeloader package, system libraries, the model
view, ``read_paths``. Read-write: the private HOME and TMPDIR, ``write_paths``. Devices: ``/dev/null``,
``/dev/urandom`` (and the NVIDIA nodes with ``gpu = true``). Everything else, including ``/proc``,
is denied. TCP bind/connect (ABI ≥ 4) and signals/abstract unix sockets outside the sandbox (ABI ≥ 6) too.
"""

from __future__ import annotations

import ctypes
import glob
import os
import site
import sys
from dataclasses import dataclass, field
from pathlib import Path

from safeloader.sandbox import _libc

# Access rights (linux/landlock.h) and the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
READ_WRITE = (1 << 16) - 1 & ~(MAKE_CHAR | MAKE_BLOCK | IOCTL_DEV)
#: With ``gpu = true``: libcuda writes under its own ``/proc/self`` (thread names) and fails with error 304
#: otherwise. In the worker's fresh ``/proc`` this is the worker's own entry and nothing else.
GPU_READ_WRITE = ("/proc/self",)
#: With ``gpu = true``, covered by empty tmpfs in the worker's mount view: the worker may then create AF_UNIX
#: sockets (libcuda needs one), and Landlock (ABI ≤ 7) cannot stop it connecting to host daemons' sockets.
GPU_HIDDEN_DIRS = ("/run", "/tmp", "/var/tmp", "/dev/shm")
#: Minimum ABI: 4 brings TCP rules; older kernels would leave the network half open.
MIN_ABI = 4

# CPU topology: without it cpuinfo (used by NNPACK and XNNPACK) fails and torch falls back to slower kernels.
SYSTEM_READ_ONLY = (
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/usr/share/zoneinfo",
    "/sys/devices/system/cpu",
    "/proc/cpuinfo",
)
DEVICES_READ = ("/dev/urandom", "/dev/random", "/dev/zero")
DEVICES_READ_WRITE = ("/dev/null",)
GPU_PATTERNS = (
    "/dev/nvidia*",
    "/dev/nvidia-caps/*",
    "/dev/dri/*",
    "/proc/driver/nvidia",
    "/sys/bus/pci",
    "/sys/devices",
    "/sys/module/nvidia",
)


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 when Landlock is absent or disabled."""
    fn = _libc.libc().syscall
    fn.restype = ctypes.c_long
    version = fn(
        ctypes.c_long(_libc.SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )
    return max(0, int(version))


def unavailable() -> str | None:
    abi = abi_version()
    if abi == 0:
        return "the kernel has no Landlock (not built in, or not in the 'lsm=' boot list)"
    if abi < MIN_ABI:
        return f"Landlock ABI {abi} is older than {MIN_ABI}, which is needed to deny TCP"
    return None


def caller_import_paths() -> list[str]:
    """The caller's ``$PYTHONPATH`` directories: packages installed there must import in the worker too.

    Only absolute, existing directories; never ``/`` or the home directory itself, which would grant
    everything below them (a relative entry means the current directory, which is never granted).
    """
    home = os.path.realpath(os.path.expanduser("~"))
    found = []
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        real = os.path.realpath(entry) if os.path.isabs(entry) else ""
        # Never "/", the home directory, or a directory above it (e.g. /home): that would grant ~/.ssh.
        above_home = home == real or home.startswith(os.path.join(real, ""))
        if real and not above_home and os.path.isdir(real) and real not in found:
            found.append(real)
    return found


def worker_pythonpath() -> str | None:
    """``PYTHONPATH`` for the worker: safeloader's import root when needed, then the caller's entries."""
    entries = [root] if (root := import_root_if_needed()) else []
    entries += [p for p in caller_import_paths() if p not in entries]
    return os.pathsep.join(entries) or None


def python_read_paths() -> list[str]:
    """What the worker's interpreter must read: its installation, site-packages, and safeloader itself."""
    paths = {sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parent.parent)}
    paths.update(site.getsitepackages())
    paths.update(caller_import_paths())
    paths.add(str(Path(sys.executable).resolve().parent.parent))
    return sorted(p for p in paths if os.path.exists(p))


def gpu_paths() -> list[str]:
    """NVIDIA device nodes, driver files and the directories of ``LD_LIBRARY_PATH`` (where libcuda may live)."""
    found = {p for pattern in GPU_PATTERNS for p in glob.glob(pattern)}
    found.update(p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and os.path.isdir(p))
    return sorted(found)


def import_root_if_needed() -> str | None:
    """The directory holding the safeloader package when the worker needs it on ``PYTHONPATH``.

    Not needed when safeloader is installed in site-packages or through an editable-install finder.
    """
    import importlib.machinery

    root = str(Path(__file__).resolve().parent.parent.parent)
    if importlib.machinery.PathFinder.find_spec("safeloader", site.getsitepackages()) is not None:
        return None
    if any("__editable__" in getattr(finder, "__module__", "") for finder in sys.meta_path):
        return None
    return root


@dataclass
class LandlockPlan:
    """Which paths get which rights; built in the caller, applied by the launcher just before exec."""

    read_only: list[str] = field(default_factory=list)
    read_write: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[str]]:
        return {"read_only": self.read_only, "read_write": self.read_write, "devices": self.devices}


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def restrict_self(plan: dict[str, list[str]]) -> str:
    """Apply ``plan`` to this process and its future children; returns a one-line description."""
    abi = abi_version()
    handled_fs = _FS_BY_ABI[max(k for k in _FS_BY_ABI if k <= abi)]
    attr = _RulesetAttr(handled_fs, NET_BIND_TCP | NET_CONNECT_TCP, 0)
    size = ctypes.sizeof(_RulesetAttr) - 8
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size += 8
    ruleset = _libc.syscall(
        "landlock_create_ruleset",
        _libc.SYS_LANDLOCK_CREATE_RULESET,
        ctypes.byref(attr),
        ctypes.c_size_t(size),
        ctypes.c_uint32(0),
    )
    granted = 0
    try:
        for key, rights in (
            ("read_only", READ_ONLY),
            ("read_write", READ_WRITE),
            ("devices", READ_FILE | WRITE_FILE | IOCTL_DEV),
        ):
            for path in plan[key]:
                granted += _add_path_rule(ruleset, path, rights & handled_fs)
        _libc.syscall(
            "landlock_restrict_self", _libc.SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)
        )
    finally:
        os.close(ruleset)
    scopes = ", signal and abstract-socket scopes" if abi >= 6 else ""
    return f"Landlock ABI {abi}: {granted} path rules, TCP bind/connect denied{scopes}"


def _add_path_rule(ruleset: int, path: str, rights: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        if not os.path.isdir(path):
            rights &= _FILE_ONLY
        rule = _PathBeneath(rights, fd)
        _libc.syscall(
            f"landlock_add_rule({path})",
            _libc.SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(_RULE_PATH_BENEATH),
            ctypes.byref(rule),
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)
    return 1
