"""Privileges layer: a dedicated unprivileged uid/gid, a user namespace, no capabilities, ``no_new_privs``.

When the caller is root the worker gets a fresh random id from a high range (never 65534, which every
"nobody" process shares); a non-root caller's worker keeps the caller's id, confined by the other layers.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
from pathlib import Path

from safeloader.sandbox import _libc

#: Worker ids come from [BASE, BASE + SPAN): far above any distribution's user ranges.
WORKER_ID_BASE = 1_900_000_000
WORKER_ID_SPAN = 1 << 24


def allocate_worker_ids() -> tuple[int, int]:
    """A (uid, gid) pair that no account uses; the caller's own ids when it is not root."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    while True:
        candidate = WORKER_ID_BASE + secrets.randbelow(WORKER_ID_SPAN)
        try:
            pwd.getpwuid(candidate)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(candidate)
            continue
        except KeyError:
            return candidate, candidate


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def user_namespaces_unavailable() -> str | None:
    """Why this host refuses user namespaces, or ``None`` when they look available (the launcher confirms)."""
    if not Path("/proc/self/ns/user").exists():
        return "the kernel has no user namespaces (CONFIG_USER_NS)"
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        return "/proc/sys/user/max_user_namespaces is 0"
    if os.geteuid() != 0 and _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        return "/proc/sys/kernel/unprivileged_userns_clone is 0"
    if os.geteuid() != 0 and _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        return "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)"
    return None


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for real, effective and saved ids; clears every capability of a root caller."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The id change reset dumpable, and a non-dumpable process cannot write its own uid_map.
    _libc.prctl(_libc.PR_SET_DUMPABLE, 1)


def write_id_maps(uid: int, gid: int) -> None:
    """Map the worker's id to itself inside its new user namespace (one line, nothing else mapped)."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets and set ``no_new_privs`` (exec then clears the rest)."""
    last_cap = _read_int("/proc/sys/kernel/cap_last_cap") or 40
    for cap in range(last_cap + 1):
        _libc.prctl(_libc.PR_CAPBSET_DROP, cap)
    _libc.prctl(_libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)
