"""Resources layer: every rlimit set explicitly, a fixed thread count, no core dumps.

Every limit the kernel has is written, none inherited: a caller started with ``ulimit -s unlimited`` must
not hand the worker an unbounded stack. ``RLIMIT_DATA`` bounds private memory (heap, anonymous mappings,
thread stacks); it does not count shared memory (memfd, ``MAP_SHARED``, tmpfs) nor the main stack, which
is what the memory cgroup (see :mod:`.cgroups`) adds where the host has one. ``RLIMIT_AS`` stays unlimited
on purpose: the virtual size of a torch process is far above its real use (thread stacks, reserved
arenas), so an address-space cap breaks benign loads. CPU time is bounded by the caller's timeouts.
"""

from __future__ import annotations

import os
import resource

from safeloader.policy.schema import SandboxPolicy

MIB = 1 << 20
#: Threads the worker may need beyond torch's pools (Python helpers, tqdm monitor, IPC readers).
_SPARE_THREADS = 32
_MAX_OPEN_FILES = 4096
_MAX_FILE_SIZE = 4096 * MIB
#: The main thread's stack: the usual distribution default, whatever the caller's ``ulimit -s``.
STACK_BYTES = 8 * MIB
#: Locked memory: the usual systemd default; the worker has no reason to pin more.
_MEMLOCK_BYTES = 8 * MIB
_SIGPENDING = 1024
_UNLIMITED = resource.RLIM_INFINITY


def thread_count(policy: SandboxPolicy) -> int:
    return policy.threads or max(1, min(os.cpu_count() or 1, 8))


def thread_environment(policy: SandboxPolicy) -> dict[str, str]:
    count = str(thread_count(policy))
    return {name: count for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def process_limit(policy: SandboxPolicy) -> int:
    """Threads the worker may run (RLIMIT_NPROC and the cgroup's pids.max both count threads)."""
    # torch has an intra-op and an inter-op pool; libgomp aborts the process if it cannot start them.
    return 4 * thread_count(policy) + _SPARE_THREADS


def rlimits(policy: SandboxPolicy) -> dict[str, int]:
    """Limit name → value (soft = hard) for every ``RLIMIT_*`` this platform defines."""
    memory = policy.memory_limit_mb * MIB
    wanted = {
        "RLIMIT_DATA": memory,
        "RLIMIT_RSS": memory,  # not enforced by Linux; set so nothing is inherited
        "RLIMIT_AS": _UNLIMITED,
        "RLIMIT_STACK": STACK_BYTES,
        "RLIMIT_MEMLOCK": _MEMLOCK_BYTES,
        "RLIMIT_NPROC": process_limit(policy),
        "RLIMIT_NOFILE": _MAX_OPEN_FILES,
        "RLIMIT_FSIZE": _MAX_FILE_SIZE,
        "RLIMIT_CORE": 0,
        "RLIMIT_CPU": _UNLIMITED,
        "RLIMIT_LOCKS": _MAX_OPEN_FILES,
        "RLIMIT_MSGQUEUE": 0,  # POSIX message queues: unused, and their memory is outside RLIMIT_DATA
        "RLIMIT_SIGPENDING": _SIGPENDING,
        "RLIMIT_NICE": 0,  # cannot raise its priority
        "RLIMIT_RTPRIO": 0,  # cannot become a real-time task
        "RLIMIT_RTTIME": 0,
    }
    return {name: value for name, value in wanted.items() if hasattr(resource, name)}


def apply_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))


def detail(limits: dict[str, int], memory_bound: str) -> str:
    memory = limits["RLIMIT_DATA"] // MIB
    return (
        f"rlimits: data {memory} MiB, stack {limits['RLIMIT_STACK'] // MIB} MiB, nproc {limits['RLIMIT_NPROC']}, "
        f"nofile {limits['RLIMIT_NOFILE']}, fsize {limits['RLIMIT_FSIZE'] // MIB} MiB, memlock "
        f"{limits['RLIMIT_MEMLOCK'] // MIB} MiB, msgqueue 0, rtprio 0, core 0; {memory_bound}; "
        "timeouts enforced by the caller"
    )
