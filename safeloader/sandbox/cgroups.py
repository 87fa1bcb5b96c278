"""Cgroup layer: one memory + pids cgroup per worker, so every kind of memory counts against the limit.

``RLIMIT_DATA`` (see :mod:`.resources`) does not count shared memory (memfd, ``MAP_SHARED``, tmpfs pages)
nor the stack; a memory cgroup charges all of them, including the page cache the worker dirties. Which
hierarchy exists is detected at run time, never assumed:

* cgroup v2 with the ``memory`` and ``pids`` controllers (systemd hosts): ``memory.max``,
  ``memory.swap.max = 0``, ``pids.max``, in a child of the caller's cgroup whose ``subtree_control``
  already delegates both controllers, else under ``/safeloader`` at the hierarchy's root when the caller sits
  in the root cgroup or is root (a root caller on a systemd host sits in a session scope or a service, where
  the no-internal-process rule keeps both controllers off: a group that holds processes cannot hand them on);
* cgroup v1 ``memory`` and ``pids`` hierarchies (these machines: a hybrid layout whose v2 side has only
  ``hugetlb``): ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` when swap accounting is on,
  ``pids.max``, each in a child of the caller's own group in that hierarchy.

The caller creates the group (root, or a delegated v2 subtree) and the launcher moves itself into it
before it forks the worker, so nothing the worker ever runs is outside it. The launcher shields itself
(``oom_score_adj = -1000``) and the worker volunteers (``+1000``) so the kernel's OOM killer picks the
worker. The group is removed when the worker is closed; groups whose caller died are swept at the next
spawn. rlimits stay in force as the floor on hosts without a usable hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
GROUP_PREFIX = "safeloader-worker-"
_GROUP_NAME = re.compile(re.escape(GROUP_PREFIX) + r"(\d+)-[0-9a-f]+$")
#: Where a root caller in the v2 root cgroup puts its workers' groups (the root takes no limits itself).
V2_PARENT_NAME = "safeloader"
#: How long removal waits for the kernel to finish releasing the last (just killed) task of a group.
_REMOVE_WAIT_S = 2.0


@dataclass(frozen=True)
class Hierarchy:
    """Where new worker groups go: v2 (one directory for both controllers) or v1 (one per controller)."""

    version: int
    memory_parent: Path
    pids_parent: Path


def _mounts() -> list[tuple[str, str, str, str]]:
    """(root inside the hierarchy, mount point, fs type, super options) of every cgroup mount."""
    found = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 10:
            continue
        tail = line.split(" - ", 1)[1].split()
        if tail[0] in ("cgroup", "cgroup2"):
            found.append((fields[3], fields[4], tail[0], tail[2] if len(tail) > 2 else ""))
    return found


def _own_groups() -> dict[str, str]:
    """Controller (``""`` for v2) → this process's group path, from ``/proc/self/cgroup``."""
    groups: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return groups
    for line in text.splitlines():
        hier_id, controllers, path = line.split(":", 2)
        if hier_id == "0":
            groups[""] = path
        for controller in controllers.split(","):
            groups[controller] = path
    return groups


def _inside(mount_root: str, mount_point: str, group: str) -> Path | None:
    """The directory of ``group`` under a mount of the hierarchy rooted at ``mount_root``."""
    if mount_root != "/" and not (group == mount_root or group.startswith(mount_root.rstrip("/") + "/")):
        return None
    relative = group[len(mount_root) :] if mount_root != "/" else group
    return Path(mount_point, relative.lstrip("/"))


def _v2_parent() -> tuple[Path | None, str]:
    mount = next((m for m in _mounts() if m[2] == "cgroup2"), None)
    group = _own_groups().get("")
    if mount is None or group is None:
        return None, "no cgroup v2 hierarchy is mounted"
    own = _inside(mount[0], mount[1], group)
    if own is None:
        return None, "this process's cgroup v2 group is outside the mounted hierarchy"
    try:
        available = (own / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return None, f"cannot read {own / 'cgroup.controllers'} ({exc.strerror})"
    if "memory" not in available or "pids" not in available:
        return None, f"the cgroup v2 hierarchy offers only [{' '.join(available)}] here, not memory and pids"
    if group == "/":
        return own / V2_PARENT_NAME, ""
    try:
        delegated = (own / "cgroup.subtree_control").read_text().split()
    except OSError:
        delegated = []
    if "memory" in delegated and "pids" in delegated and os.access(own, os.W_OK):
        return own, ""
    # Moving the launcher from the caller's group into one under the root needs write access to the root's
    # cgroup.procs (their common ancestor): root has it where the hierarchy's root is visible and writable.
    root = Path(mount[1])
    if mount[0] == "/" and os.geteuid() == 0 and os.access(root / "cgroup.procs", os.W_OK):
        return root / V2_PARENT_NAME, ""
    return None, f"the caller's cgroup v2 group {group} does not delegate memory and pids to children"


def _v1_parent(controller: str) -> tuple[Path | None, str]:
    mount = next((m for m in _mounts() if m[2] == "cgroup" and controller in m[3].split(",")), None)
    group = _own_groups().get(controller)
    if mount is None or group is None:
        return None, f"no cgroup v1 '{controller}' hierarchy is mounted"
    own = _inside(mount[0], mount[1], group)
    if own is None:
        return None, f"this process's cgroup v1 '{controller}' group is outside the mounted hierarchy"
    if not os.access(own, os.W_OK):
        return None, f"{own} is not writable by this process (cgroup v1 needs root here)"
    return own, ""


def detect() -> tuple[Hierarchy | None, str]:
    """The hierarchy worker groups go in, or ``None`` and why there is none."""
    v2, v2_reason = _v2_parent()
    if v2 is not None:
        return Hierarchy(2, v2, v2), ""
    memory, memory_reason = _v1_parent("memory")
    pids, pids_reason = _v1_parent("pids")
    if memory is not None and pids is not None:
        return Hierarchy(1, memory, pids), ""
    return None, f"{v2_reason}; {memory_reason or pids_reason}"


def unavailable() -> str | None:
    """Why this host gives the caller no memory + pids cgroup for its workers (``None``: it does)."""
    return detect()[1] or None


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``memory.events``, ``memory.oom_control``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


@dataclass
class WorkerCgroup:
    """The group(s) of one worker: limits set, removed by :meth:`remove`."""

    version: int
    memory_dir: Path
    pids_dir: Path
    memory_bytes: int
    pids_max: int

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files the launcher writes its pid to (one per v1 hierarchy)."""
        dirs = [self.memory_dir] if self.memory_dir == self.pids_dir else [self.memory_dir, self.pids_dir]
        return [str(d / "cgroup.procs") for d in dirs]

    def oom_kills(self) -> int:
        """How many tasks the kernel's OOM killer killed in this group for exceeding its memory limit."""
        if self.version == 2:
            return _counter(self.memory_dir / "memory.events", "oom_kill")
        return _counter(self.memory_dir / "memory.oom_control", "oom_kill")

    def pids_refusals(self) -> int:
        """How many forks/threads the pids limit refused."""
        return _counter(self.pids_dir / "pids.events", "max")

    def describe(self) -> str:
        swap = "swap 0" if self.version == 2 or (self.memory_dir / "memory.memsw.limit_in_bytes").exists() else ""
        memory = f"cgroup v{self.version} memory limit {self.memory_bytes // MIB} MiB"
        return f"{memory}{' (' + swap + ')' if swap else ''}, pids.max {self.pids_max}"

    def remove(self) -> None:
        """Remove the group(s); waits briefly for the kernel to release tasks that were just killed."""
        deadline = time.monotonic() + _REMOVE_WAIT_S
        for directory in dict.fromkeys([self.memory_dir, self.pids_dir]):
            while directory.exists():
                try:
                    directory.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # still busy: the next spawn's sweep removes it
                    time.sleep(0.02)


def _sweep_stale(parent: Path) -> None:
    """Remove worker groups left behind by callers that died (SIGKILL skips every clean-up)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            match = _GROUP_NAME.match(entry.name)
            if match is None:
                continue
            try:
                os.kill(int(match.group(1)), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    entry.rmdir()  # fails harmlessly while tasks remain
            except PermissionError:
                continue


def _make_v2(parent: Path, name: str, memory_bytes: int, pids_max: int) -> Path:
    if parent.name == V2_PARENT_NAME and not parent.exists():
        parent.mkdir(mode=0o755, exist_ok=True)
        _write(parent.parent / "cgroup.subtree_control", "+memory +pids")
    if not {"memory", "pids"} <= set((parent / "cgroup.subtree_control").read_text().split()):
        _write(parent / "cgroup.subtree_control", "+memory +pids")
    group = parent / name
    group.mkdir(mode=0o755)
    _write(group / "memory.max", str(memory_bytes))
    if (group / "memory.swap.max").exists():
        _write(group / "memory.swap.max", "0")
    _write(group / "pids.max", str(pids_max))
    return group


def _make_v1(hierarchy: Hierarchy, name: str, memory_bytes: int, pids_max: int) -> tuple[Path, Path]:
    memory = hierarchy.memory_parent / name
    pids = hierarchy.pids_parent / name
    memory.mkdir(mode=0o755)
    try:
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # memory + swap: no swapping past the limit
            _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(memory / "memory.swappiness", "0")
        pids.mkdir(mode=0o755)
        _write(pids / "pids.max", str(pids_max))
    except BaseException:
        for directory in (pids, memory):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return memory, pids


def create(memory_bytes: int, pids_max: int) -> WorkerCgroup:
    """A fresh group for one worker, limits set; raises ``OSError`` (with the reason) when impossible."""
    hierarchy, reason = detect()
    if hierarchy is None:
        raise OSError(reason)
    for parent in dict.fromkeys([hierarchy.memory_parent, hierarchy.pids_parent]):
        _sweep_stale(parent)
    name = f"{GROUP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    if hierarchy.version == 2:
        group = _make_v2(hierarchy.memory_parent, name, memory_bytes, pids_max)
        return WorkerCgroup(2, group, group, memory_bytes, pids_max)
    memory, pids = _make_v1(hierarchy, name, memory_bytes, pids_max)
    return WorkerCgroup(1, memory, pids, memory_bytes, pids_max)


def join(procs_files: list[str]) -> None:
    """Move this process into the worker's group(s); called by the launcher before it forks the worker."""
    for path in procs_files:
        _write(Path(path), str(os.getpid()))


def shield_from_oom_killer() -> None:
    """Make the launcher the OOM killer's last choice (needs root; harmless to skip otherwise)."""
    with contextlib.suppress(OSError):
        _write(Path("/proc/self/oom_score_adj"), "-1000")


def volunteer_for_oom_killer() -> None:
    """Make the worker the OOM killer's first choice (raising one's own score needs no privilege)."""
    with contextlib.suppress(OSError):
        _write(Path("/proc/self/oom_score_adj"), "1000")
