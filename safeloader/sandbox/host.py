"""What this host can provide, layer by layer, checked without starting anything (cheap, in-process).

The launcher and the worker still fail closed on the real set-up; these checks let :func:`spawn_worker`
refuse a required layer before any process exists, and let ``safeloader doctor`` say why.
"""

from __future__ import annotations

from collections.abc import Callable

from safeloader.sandbox import cgroups, filesystem, network, privileges, processes, syscalls

#: Layer → check returning why the host lacks it (``None``: available). Tests may patch entries.
CHECKS: dict[str, Callable[[], str | None]] = {
    "environment": lambda: None,
    "privileges": privileges.user_namespaces_unavailable,
    "network": network.unavailable,
    "processes": processes.unavailable,
    "filesystem": filesystem.unavailable,
    "syscalls": syscalls.unavailable,
    "resources": lambda: None,
    "cgroup": cgroups.unavailable,
}

#: The policy key a user changes to accept a missing layer.
POLICY_KEY = "sandbox.require"


def missing_layers() -> dict[str, str]:
    """Layer → reason, for every layer this host cannot provide."""
    missing = {}
    for layer, check in CHECKS.items():
        reason = check()
        if reason is not None:
            missing[layer] = reason
    return missing
