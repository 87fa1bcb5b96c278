"""Processes layer: a PID namespace with a fresh ``/proc``, so the caller is neither visible nor signalable.

The worker is PID 1 of its namespace: when it dies the kernel kills everything it started.
"""

from __future__ import annotations

from safeloader.sandbox import _libc, privileges


def unavailable() -> str | None:
    reason = privileges.user_namespaces_unavailable()
    return None if reason is None else f"a PID namespace needs a user namespace, and {reason}"


def mount_fresh_proc() -> None:
    """Mount a ``/proc`` that shows only the worker's PID namespace (hides every host process)."""
    _libc.mount("proc", "/proc", "proc", _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)


DETAIL = "own PID namespace (worker is PID 1) with a fresh /proc"
#: Added to the detail when Landlock's signal scope (ABI >= 6) is in force too.
SIGNAL_SCOPE_DETAIL = "; Landlock scopes signals"
