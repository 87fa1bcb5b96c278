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
    environment,
    filesystem,
    host,
    modelview,
    mountview,
    network,
    privileges,
    processes,
    resources,
    syscalls,
)
from safeloader.sandbox.report import LayerStatus, SandboxReport

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
        try:
            with open(self._private_dir / "worker.log", "rb") as logfile:
                logfile.seek(max(0, os.fstat(logfile.fileno()).st_size - 65536))
                text = logfile.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
        with _live_lock:
            _live_workers.discard(self)

    def __enter__(self) -> SandboxedWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
    return root, home, tmp


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
    private, home, tmp = _private_dirs(uid, gid)
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
                "landlock": plan.to_dict() if "filesystem" not in missing else None,
                "rlimits": limits,
                "cwd": str(tmp),
                "env": env,
                "argv": [sys.executable, "-s", "-c", BOOTSTRAP, *argv],
            },
            private,
            pythonpath,
        )
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise
    details = {
        "environment": environment.status(env, True).detail,
        "privileges": f"host uid {uid}/gid {gid} in its own user namespace; no capabilities; no_new_privs",
        "network": network.DETAIL + (network.GPU_EXCEPTION if policy.gpu else ""),
        "processes": processes.DETAIL + (processes.SIGNAL_SCOPE_DETAIL if filesystem.abi_version() >= 6 else ""),
        "filesystem": worker.report.facts.get("landlock", ""),
        "resources": resources.detail(limits),
    }
    layers = _layer_statuses(policy, missing, details)
    worker.report = SandboxReport(
        layers=tuple(layers), facts={**worker.report.facts, "host_uid": uid, "host_gid": gid, "worker_pid": worker.pid}
    )
    worker.complete_report([LayerStatus.from_dict(item) for item in worker.report.facts.get("in_worker", [])])
    worker.model_dir = view
    return worker


def _launch(config: dict[str, Any], private: Path, pythonpath: str | None) -> SandboxedWorker:
    caller_sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    lifeline_r, lifeline_w = os.pipe()
    status_r, status_w = os.pipe()
    log_fd = os.open(private / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
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
        for fd in (lifeline_r, status_w, log_fd):
            os.close(fd)
        worker_sock.close()
    worker = SandboxedWorker(caller_sock, launcher.pid, SandboxReport(()), None, launcher, private, lifeline_w)
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
        tail = printable(worker.stderr_tail(5))
        worker.close()
        reason = messages.get("error") or f"the worker exited during set-up; its last output: {tail or '(none)'}"
        raise SandboxError(f"the sandboxed worker could not start: {reason}")
    worker.pid = int(messages["worker_pid"])
    worker.report = SandboxReport(
        (), facts={"landlock": messages.get("landlock", ""), "in_worker": messages["in_worker"]}
    )
    return worker
