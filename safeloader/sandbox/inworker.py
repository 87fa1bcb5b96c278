"""What runs first inside the worker, before torch, diffusers or any untrusted byte is imported.

The launcher has already applied namespaces, rlimits, capabilities and Landlock (they survive exec); what
must happen in the final process is seccomp, because the filter denies the very ``execve`` that started
it. :func:`run_confined` is the worker's real entry point (the launcher execs ``python -c BOOTSTRAP``), so
whatever argv the caller asked for runs only after the filter is in place.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import runpy
import sys

from safeloader.errors import SandboxError
from safeloader.sandbox.report import LayerStatus

CONFIG_ENV = "SAFELOADER_SANDBOX"
_statuses: list[LayerStatus] | None = None


def finish_confinement() -> list[LayerStatus]:
    """Load the seccomp filter and report the in-worker layers; idempotent (later calls return the same)."""
    global _statuses
    if _statuses is not None:
        return list(_statuses)
    raw = os.environ.pop(CONFIG_ENV, None)
    if raw is None:
        raise SandboxError(
            "this process was not started by safeloader's sandbox and refuses to run unconfined; "
            "start workers with safeloader.sandbox.spawn_worker()."
        )
    config = json.loads(raw)
    if config["seccomp"] is None:
        logging.getLogger("safeloader").warning("SANDBOX LAYER OFF: seccomp (%s)", config["seccomp_missing"])
        status = LayerStatus("syscalls", False, str(config["seccomp_missing"]), config["seccomp_required"])
    else:
        from safeloader.sandbox.syscalls import load_filter

        program = base64.b64decode(config["seccomp"])
        load_filter(program)
        status = LayerStatus(
            "syscalls",
            True,
            f"seccomp allow list of {config.get('seccomp_allowed')} syscalls ({len(program) // 8} BPF "
            "instructions), every other call refused by number (ENOSYS; EPERM for exec, fork, ptrace, mount, "
            "namespaces, sockets, io_uring, bpf, keyctl, perf, module and kexec calls); x32 and foreign "
            "architectures kill the process",
            config["seccomp_required"],
        )
    _statuses = [status]
    _report(config["status_fd"], _statuses)
    return list(_statuses)


def _report(status_fd: int, statuses: list[LayerStatus]) -> None:
    try:
        os.write(status_fd, (json.dumps({"in_worker": [s.to_dict() for s in statuses]}) + "\n").encode())
    finally:
        os.close(status_fd)  # the caller's start-up read ends here; nothing else is inherited


def run_confined() -> None:
    """Finish confinement, then run ``sys.argv[1:]`` the way ``python ARGV…`` would."""
    finish_confinement()
    argv = sys.argv[1:]
    if not argv:
        raise SandboxError("the sandboxed worker was started without a program; pass argv to spawn_worker().")
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        import __main__

        exec(compile(argv[1], "<string>", "exec"), __main__.__dict__)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")
