"""Network layer: a fresh network namespace (no interface is up) plus seccomp refusing every new socket.

The IPC channel is a socketpair end inherited as fd 3, so the worker never needs ``socket()`` or
``socketpair()``; Landlock additionally denies TCP bind/connect and abstract unix sockets (see filesystem).
"""

from __future__ import annotations

from safeloader.sandbox import privileges

#: Denied by the seccomp filter (see :mod:`safeloader.sandbox.syscalls`), for every address family.
DENIED_SOCKET_CALLS = ("socket", "socketpair")


def unavailable() -> str | None:
    reason = privileges.user_namespaces_unavailable()
    return None if reason is None else f"a network namespace needs a user namespace, and {reason}"


DETAIL = "own network namespace with no interface up; socket()/socketpair() refused by seccomp"
GPU_EXCEPTION = "; gpu = true: AF_UNIX sockets allowed for libcuda, with /run, /tmp and /dev/shm hidden"
