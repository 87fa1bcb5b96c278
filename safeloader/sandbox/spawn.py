"""Start a worker process inside every sandbox layer and hand back the caller's end of its socket.

See :mod:`.launcher` for the order of the set-up, :mod:`.mountview` and :mod:`.modelview` for why the
worker's paths are reachable, and :mod:`.inworker` for what runs first inside the worker.
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safeloader.display import printable
from safeloader.errors import SandboxError
from safeloader.policy.schema import SANDBOX_LAYERS, SandboxPolicy
from safeloader.sandbox import (
    cgroups,
    environment,
    filesystem,
    host,
    modelview,
    mountview,
    network,
    privileges,
    processes,
    resources,
    scratch,
    syscalls,
)
from safeloader.sandbox.report import LayerStatus, SandboxReport
from safeloader.sandbox.worker_log import OutputTail

log = logging.getLogger("safeloader")

#: Runs first in the worker: finish confinement, then run the requested argv as ``python`` would.
BOOTSTRAP = "from safeloader.sandbox.inworker import run_confined; run_confined()"
#: How long the set-up (launcher + interpreter start + seccomp) may take before it counts as failed.
STARTUP_TIMEOUT_S = 60.0
_live_workers: set[SandboxedWorker] = set()
_live_lock = threading.Lock()


@dataclass(eq=False)
class SandboxedWorker:
    sock: socket.socket
    pid: int
    report: SandboxReport
    model_dir: Path | None
    _launcher: subprocess.Popen[bytes]
    _private_dir: Path
    _lifeline: int
    _output: OutputTail
    _cgroup: cgroups.WorkerCgroup | None = None
    _closed: bool = field(default=False)

    def poll(self) -> int | None:
        """The worker's exit code (negative: killed by that signal), or ``None`` while it runs."""
        return self._launcher.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Kill the worker and everything it started (its PID namespace dies with it)."""
        if self._lifeline >= 0:
            os.close(self._lifeline)  # the launcher kills and reaps the worker, then exits
            self._lifeline = -1
        if self.wait(2.0) is None and self._launcher.returncode is None:
            os.killpg(self._launcher.pid, signal.SIGKILL)  # launcher stuck: kill its whole group
            self._launcher.wait()

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines the worker (and its launcher) wrote to stdout/stderr; only the newest are kept."""
        if self.poll() is not None:
            self._output.wait_for_end(_OUTPUT_DRAIN_S)  # everything written before the exit is in the tail
        return self._output.text(lines)

    def exit_cause(self) -> str | None:
        """Why the kernel ended the worker, when safeloader can tell (memory cgroup OOM kill, stack overflow)."""
        return _exit_cause(self.poll(), self._cgroup)

    def complete_report(self, in_worker: Sequence[LayerStatus]) -> None:
        """Replace layer statuses with those the worker itself reported."""
        by_layer = {status.layer: status for status in in_worker}
        self.report = replace(self.report, layers=tuple(by_layer.get(s.layer, s) for s in self.report.layers))

    def close(self) -> None:
        """Kill the worker if alive, reap it, remove its private directories; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.poll() is None:
            self.kill()
        elif self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1
        self.sock.close()
        shutil.rmtree(self._private_dir, ignore_errors=True)
        if self._cgroup is not None:
            self._cgroup.remove()
        with _live_lock:
            _live_workers.discard(self)

    def __enter__(self) -> SandboxedWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


#: How long reading the worker's output may wait for the pipe's end once the launcher has exited.
_OUTPUT_DRAIN_S = 2.0


def _exit_cause(returncode: int | None, group: cgroups.WorkerCgroup | None) -> str | None:
    if group is not None and group.oom_kills() > 0:
        return (
            f"the kernel's OOM killer ended it at the memory cgroup limit of {group.memory_bytes >> 20} MiB "
            "([sandbox] memory_limit_mb, which counts shared memory, tmpfs files and stacks too)"
        )
    if returncode == -signal.SIGSEGV:
        return (
            f"SIGSEGV is also how a stack overflow past RLIMIT_STACK ({resources.STACK_BYTES >> 20} MiB) ends, "
            "as well as a native crash"
        )
    return None


@atexit.register
def _close_all_workers() -> None:
    with _live_lock:
        workers = list(_live_workers)
    for worker in workers:
        worker.close()


def _check_layers(policy: SandboxPolicy) -> dict[str, str]:
    """Fail closed on a required layer the host lacks; warn loudly about an optional one."""
    missing = host.missing_layers()
    for layer in SANDBOX_LAYERS:
        if layer in missing and layer in policy.require:
            raise SandboxError(
                f"the sandbox layer '{layer}' is required by the policy but this host cannot provide it "
                f"({missing[layer]}); fix the host or remove '{layer}' from '{host.POLICY_KEY}' in your policy."
            )
    for layer, reason in missing.items():
        log.warning("SANDBOX LAYER OFF: '%s' is not available (%s) and the policy does not require it.", layer, reason)
    return missing


PRIVATE_PREFIX = "safeloader-worker-"
_OWNER_FILE = "caller.pid"


def _sweep_orphaned_private_dirs() -> None:
    """Remove private dirs whose caller died without cleaning up (SIGKILL skips atexit)."""
    for candidate in Path(tempfile.gettempdir()).glob(PRIVATE_PREFIX + "*"):
        try:
            if candidate.stat().st_uid != os.geteuid():
                continue
            owner = int((candidate / _OWNER_FILE).read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(candidate, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours, or still being created


def _private_dirs(uid: int, gid: int) -> tuple[Path, Path, Path]:
    _sweep_orphaned_private_dirs()
    root = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX))
    root.chmod(0o711)  # traversable by the worker uid, not listable
    (root / _OWNER_FILE).write_text(str(os.getpid()))
    home, tmp = root / "home", root / "tmp"
    for path in (home, tmp):
        path.mkdir(mode=0o700)
        os.chown(path, uid, gid)
    (root / _SCRATCH).mkdir(mode=0o700)  # the launcher mounts the capped tmpfs here (see scratch.py)
    return root, home, tmp


_SCRATCH = "scratch"
#: Tasks in the worker's cgroup besides the worker's own threads: the launcher.
_LAUNCHER_TASKS = 2


def _worker_cgroup(policy: SandboxPolicy, missing: dict[str, str]) -> cgroups.WorkerCgroup | None:
    """The worker's memory + pids cgroup; fails closed when the policy requires one and it cannot be made."""
    if "cgroup" in missing:
        return None
    try:
        return cgroups.create(policy.memory_limit_mb << 20, resources.process_limit(policy) + _LAUNCHER_TASKS)
    except OSError as exc:
        if "cgroup" in policy.require:
            raise SandboxError(
                f"the sandbox layer 'cgroup' is required by the policy but creating the worker's cgroup failed "
                f"({exc}); run as root, or remove 'cgroup' from '{host.POLICY_KEY}' in your policy."
            ) from exc
        missing["cgroup"] = str(exc)
        log.warning("SANDBOX LAYER OFF: 'cgroup' could not be set up (%s)", exc)
        return None


def _bounds_facts(
    policy: SandboxPolicy, group: cgroups.WorkerCgroup | None, tmpfs: bool, program: bytes | None
) -> dict[str, Any]:
    """What bounds memory, processes and disk, and how many syscalls seccomp allows, for reports and doctor."""
    limits = resources.rlimits(policy)
    memory = f"RLIMIT_DATA {policy.memory_limit_mb} MiB (private memory only)"
    processes_bound = f"RLIMIT_NPROC {limits['RLIMIT_NPROC']}"
    if group is not None:
        memory = f"cgroup v{group.version} memory {group.memory_bytes >> 20} MiB, no swap (all memory) + {memory}"
        processes_bound = f"cgroup v{group.version} pids.max {group.pids_max} + {processes_bound}"
    return {
        "memory_bound": memory,
        "process_bound": processes_bound,
        "cgroup": None if group is None else {"version": group.version, "memory_dir": str(group.memory_dir)},
        "tmp_bound": scratch.detail(policy.tmp_size_mb, tmpfs),
        "tmp_size_mb": policy.tmp_size_mb if tmpfs else None,
        "seccomp_allowed_syscalls": syscalls.allowed_count(policy.gpu) if program else None,
    }


def _landlock_plan(policy: SandboxPolicy, ro_extra: list[str], rw: list[str]) -> filesystem.LandlockPlan:
    read_only = [*filesystem.python_read_paths(), *filesystem.SYSTEM_READ_ONLY, *filesystem.DEVICES_READ]
    read_only += [*ro_extra, *policy.read_paths]
    devices = list(filesystem.DEVICES_READ_WRITE)
    if policy.gpu:
        gpu = filesystem.gpu_paths()
        devices += [p for p in gpu if p.startswith("/dev/")]
        read_only += [p for p in gpu if not p.startswith("/dev/")]
        rw = [*rw, *filesystem.GPU_READ_WRITE]
    return filesystem.LandlockPlan(read_only=read_only, read_write=[*rw, *policy.write_paths], devices=devices)


def _read_statuses(status_fd: int, launcher: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Collect the launcher's and the worker's status lines until the status pipe closes."""
    data = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([status_fd], [], [], left)[0]:
            raise SandboxError(
                f"the sandboxed worker did not finish starting within {STARTUP_TIMEOUT_S:.0f} s; "
                "check the host load and `safeloader doctor`."
            )
        chunk = os.read(status_fd, 65536)
        if not chunk:
            break
        data += chunk
    messages: dict[str, Any] = {}
    for line in data.decode().splitlines():
        messages.update(json.loads(line))
    return messages


def _layer_statuses(policy: SandboxPolicy, missing: dict[str, str], details: dict[str, str]) -> list[LayerStatus]:
    return [
        LayerStatus(layer, layer not in missing, missing.get(layer, details.get(layer, "")), layer in policy.require)
        for layer in SANDBOX_LAYERS
    ]


def spawn_worker(
    policy: SandboxPolicy,
    *,
    model_dir: Path | None = None,
    argv: Sequence[str] = ("-m", "safeloader.worker"),
    env_extra: Mapping[str, str] | None = None,
) -> SandboxedWorker:
    """Start ``<this interpreter> <argv…>`` confined by every available layer; fd 3 is the IPC socket."""
    if policy.gpu and os.geteuid() != 0:
        # libcuda needs AF_UNIX sockets, so GPU mode relies on hiding /run, /tmp and /dev/shm (where the
        # caller's ssh-agent and session bus live); this version hides them only when started as root.
        raise SandboxError(
            "[sandbox] gpu = true needs safeloader to run as root in this version (to hide the host's unix "
            "sockets from the worker); run as root or set gpu = false."
        )
    missing = _check_layers(policy)
    namespaces = "privileges" not in missing
    program = None
    if "syscalls" not in missing:
        try:
            program = syscalls.compile_filter(policy.gpu)
        except SandboxError as exc:
            if "syscalls" in policy.require:
                raise
            missing["syscalls"] = str(exc)
            log.warning("SANDBOX LAYER OFF: 'syscalls' is not available (%s)", exc)
    uid, gid = privileges.allocate_worker_ids()
    as_root = os.geteuid() == 0
    group = _worker_cgroup(policy, missing)
    try:
        private, home, tmp = _private_dirs(uid, gid)
    except BaseException:
        if group is not None:
            group.remove()
        raise
    tmpfs = as_root or namespaces
    try:
        view = private / "model" if model_dir is not None else None
        binds = modelview.build(Path(model_dir), view, uid, gid) if model_dir is not None and view else []
        import_root = filesystem.import_root_if_needed()
        pythonpath = filesystem.worker_pythonpath()
        ro_extra = [str(view)] if view else []
        ro_extra += [import_root] if import_root else []
        plan = _landlock_plan(policy, ro_extra, [str(home), str(tmp)])
        limits = resources.rlimits(policy)
        sandbox_config = {
            "status_fd": 4,
            "seccomp": base64.b64encode(program).decode() if program else None,
            "seccomp_missing": missing.get("syscalls"),
            "seccomp_allowed": syscalls.allowed_count(policy.gpu) if program else None,
            "seccomp_required": "syscalls" in policy.require,
        }
        env = environment.worker_environment(
            policy,
            home=home,
            tmpdir=tmp,
            thread_env=resources.thread_environment(policy),
            caller_env=os.environ,
            extra={
                **({"PYTHONPATH": pythonpath} if pythonpath else {}),
                **(env_extra or {}),
                "SAFELOADER_SANDBOX": json.dumps(sandbox_config),
            },
        )
        needed = [p for p in [*plan.read_only, *plan.read_write] if os.path.exists(p) and not p.startswith("/proc/")]
        covers = mountview.plan_covers(needed) if as_root else {}
        if as_root and policy.gpu:
            mountview.add_hidden_dirs(covers, filesystem.GPU_HIDDEN_DIRS, needed)
        worker = _launch(
            {
                "uid": uid,
                "gid": gid,
                "as_root": as_root,
                "namespaces": namespaces,
                "covers": covers,
                "read_only": plan.read_only,
                "file_binds": binds,
                "scratch": {
                    "dir": str(private / _SCRATCH),
                    "targets": [str(home), str(tmp)],
                    "size_mb": policy.tmp_size_mb,
                }
                if tmpfs
                else None,
                "cgroup_procs": group.procs_files if group is not None else None,
                "cgroup_required": "cgroup" in policy.require,
                "landlock": plan.to_dict() if "filesystem" not in missing else None,
                "rlimits": limits,
                "cwd": str(tmp),
                "env": env,
                "argv": [sys.executable, "-s", "-c", BOOTSTRAP, *argv],
            },
            private,
            pythonpath,
            group,
        )
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        if group is not None:
            group.remove()
        raise
    if worker.report.facts.get("cgroup_error"):
        # The group was made but the kernel refused the launcher's move into it; the policy does not require
        # the layer (else the start failed). The group stays with the worker, which removes it at close.
        missing["cgroup"] = worker.report.facts["cgroup_error"]
        log.warning("SANDBOX LAYER OFF: 'cgroup' could not be set up (%s)", missing["cgroup"])
    joined = group if "cgroup" not in missing else None
    facts = _bounds_facts(policy, joined, tmpfs, program)
    details = {
        "environment": environment.status(env, True).detail,
        "privileges": f"host uid {uid}/gid {gid} in its own user namespace; no capabilities; no_new_privs",
        "network": network.DETAIL + (network.GPU_EXCEPTION if policy.gpu else ""),
        "processes": processes.DETAIL + (processes.SIGNAL_SCOPE_DETAIL if filesystem.abi_version() >= 6 else ""),
        "filesystem": worker.report.facts.get("landlock", ""),
        "resources": resources.detail(limits, facts["memory_bound"]) + "; " + facts["tmp_bound"],
        "cgroup": joined.describe() if joined is not None else "",
    }
    layers = _layer_statuses(policy, missing, details)
    worker.report = SandboxReport(
        layers=tuple(layers),
        facts={**worker.report.facts, **facts, "host_uid": uid, "host_gid": gid, "worker_pid": worker.pid},
    )
    worker.complete_report([LayerStatus.from_dict(item) for item in worker.report.facts.get("in_worker", [])])
    worker.model_dir = view
    return worker


def _launch(
    config: dict[str, Any], private: Path, pythonpath: str | None, group: cgroups.WorkerCgroup | None
) -> SandboxedWorker:
    caller_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lifeline_r, lifeline_w = os.pipe()
    status_r, status_w = os.pipe()
    output = OutputTail()  # the worker's stdout/stderr: a pipe, only its newest bytes kept (see worker_log.py)
    log_fd = output.write_fd
    config.update(
        sock_fd=worker_sock.fileno(),
        lifeline_fd=lifeline_r,
        status_fd=status_w,
        caller_pid=os.getpid(),
        main_thread=threading.current_thread() is threading.main_thread(),
    )
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-s", "-m", "safeloader.sandbox.launcher", json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(worker_sock.fileno(), lifeline_r, status_w),
            start_new_session=True,
            env={
                "PATH": environment.SAFE_PATH,
                "LANG": "C.UTF-8",
                **({"PYTHONPATH": pythonpath} if pythonpath else {}),
            },
            cwd="/",
        )
    finally:
        for fd in (lifeline_r, status_w):
            os.close(fd)
        output.close_write_end()
        worker_sock.close()
    worker = SandboxedWorker(
        caller_sock, launcher.pid, SandboxReport(()), None, launcher, private, lifeline_w, output, group
    )
    with _live_lock:
        _live_workers.add(worker)
    try:
        messages = _read_statuses(status_r, launcher)
    except BaseException:
        worker.close()
        raise
    finally:
        os.close(status_r)
    if "error" in messages or "in_worker" not in messages:
        worker.wait(_OUTPUT_DRAIN_S)  # its last words are in the pipe once it has exited
        tail = printable(worker.stderr_tail(5))
        worker.close()
        reason = messages.get("error") or f"the worker exited during set-up; its last output: {tail or '(none)'}"
        raise SandboxError(f"the sandboxed worker could not start: {reason}")
    worker.pid = int(messages["worker_pid"])
    worker.report = SandboxReport(
        (),
        facts={
            "landlock": messages.get("landlock", ""),
            "in_worker": messages["in_worker"],
            **({"cgroup_error": str(messages["cgroup_error"])} if messages.get("cgroup_error") else {}),
        },
    )
    return worker
