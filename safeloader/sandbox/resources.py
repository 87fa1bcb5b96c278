"""Resources layer: rlimits (memory through RLIMIT_DATA), a fixed thread count, no core dumps.

cgroup v2 ``memory.max`` would be stronger, but on hosts where the v2 hierarchy has no memory controller
(these machines: hybrid layout) rlimits are what there is; :func:`cgroup_memory_unavailable` says why.
``RLIMIT_DATA`` is used rather than ``RLIMIT_AS``: the virtual size of a torch process is far above its
real use (thread stacks, reserved arenas), so an address-space cap breaks benign loads.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from safeloader.policy.schema import SandboxPolicy

MIB = 1 << 20
#: Threads the worker may need beyond torch's pools (Python helpers, tqdm monitor, IPC readers).
_SPARE_THREADS = 32
_MAX_OPEN_FILES = 4096
_MAX_FILE_SIZE = 4096 * MIB


def thread_count(policy: SandboxPolicy) -> int:
    return policy.threads or max(1, min(os.cpu_count() or 1, 8))


def thread_environment(policy: SandboxPolicy) -> dict[str, str]:
    count = str(thread_count(policy))
    return {name: count for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def rlimits(policy: SandboxPolicy) -> dict[str, int]:
    """Limit name → value; NPROC counts threads of the uid, so it is sized from the thread count."""
    threads = thread_count(policy)
    return {
        "RLIMIT_DATA": policy.memory_limit_mb * MIB,
        # torch has an intra-op and an inter-op pool; libgomp aborts the process if it cannot start them.
        "RLIMIT_NPROC": 4 * threads + _SPARE_THREADS,
        "RLIMIT_NOFILE": _MAX_OPEN_FILES,
        "RLIMIT_FSIZE": _MAX_FILE_SIZE,
        "RLIMIT_CORE": 0,
    }


def apply_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def cgroup_memory_unavailable() -> str | None:
    """Why cgroup v2 ``memory.max`` cannot be used here (rlimits are used either way in this version)."""
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if not controllers.exists():
        return "no unified cgroup v2 hierarchy at /sys/fs/cgroup"
    if "memory" not in controllers.read_text().split():
        return "the cgroup v2 hierarchy has no memory controller"
    return None


def detail(limits: dict[str, int]) -> str:
    memory = limits["RLIMIT_DATA"] // MIB
    return (
        f"rlimits: data {memory} MiB, nproc {limits['RLIMIT_NPROC']}, nofile {limits['RLIMIT_NOFILE']}, "
        f"fsize {limits['RLIMIT_FSIZE'] // MIB} MiB, core 0; timeouts enforced by the caller"
    )
