"""Probe what this host really provides: start a confined process and check that each layer took effect.

Used by ``safeloader doctor``; a layer counts as active only if its effect was observed inside the probe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safeloader.errors import SandboxError
from safeloader.policy.schema import SANDBOX_LAYERS, SandboxPolicy
from safeloader.sandbox import cgroups, host
from safeloader.sandbox.report import LayerStatus, SandboxReport

_PROBE_MEMORY_MB = 1024
#: What bounds memory, processes and disk, and the seccomp allow list's size: shown by ``safeloader doctor``.
BOUNDS_FACTS = ("memory_bound", "process_bound", "cgroup", "tmp_bound", "tmp_size_mb", "seccomp_allowed_syscalls")
#: Runs confined; sends one JSON object of observations over fd 3, then waits for the caller to read /proc.
PROBE_SNIPPET = r"""
import json, os, resource, socket, sys
channel = socket.socket(fileno=3)
seen = {"env": sorted(os.environ), "pid": os.getpid(), "home": os.listdir(os.environ["HOME"])}
def attempt(name, fn):
    try:
        fn()
        seen[name] = "allowed"
    except OSError as exc:
        seen[name] = type(exc).__name__
attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("fork", lambda: os.fork() == 0 and os._exit(0))
attempt("read_etc", lambda: open("/etc/hostname", "rb").close())
attempt("signal_caller", lambda: os.kill(int(sys.argv[1]), 0))
seen["rlimit_data"] = resource.getrlimit(resource.RLIMIT_DATA)[0]
channel.sendall(json.dumps(seen).encode() + b"\n")
channel.recv(1)
"""


def _proc_status(pid: int) -> dict[str, str]:
    """The worker's /proc status fields, plus whether each of its namespaces differs from the caller's."""
    fields = {}
    for ns in ("net", "pid", "user"):
        fields[f"own_{ns}_ns"] = str(os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"))
    fields["in_worker_cgroup"] = str(cgroups.GROUP_PREFIX in Path(f"/proc/{pid}/cgroup").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _receive_line(worker_sock: object, timeout: float) -> dict[str, Any]:
    import socket

    assert isinstance(worker_sock, socket.socket)
    worker_sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = worker_sock.recv(65536)
        if not chunk:
            break
        data += chunk
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


def _judge(seen: dict[str, Any], status: dict[str, str]) -> dict[str, str | None]:
    """Layer → why its effect was not observed in the probe (``None``: it took effect)."""
    uids = status.get("Uid", "").split()
    unprivileged = status.get("CapEff") == "0" * 16 and status.get("NoNewPrivs") == "1"
    unprivileged = unprivileged and status.get("own_user_ns") == "True" and (os.geteuid() != 0 or "0" not in uids)
    isolated = status.get("own_pid_ns") == "True" and seen.get("pid") == 1
    isolated = isolated and seen.get("signal_caller") == "ProcessLookupError"
    confined = seen.get("fork") == "PermissionError" and seen.get("socket") == "PermissionError"
    checks = {
        "environment": (seen.get("home") == [] and "HF_TOKEN" not in seen.get("env", []), "the environment leaked"),
        "privileges": (unprivileged, f"the probe ran with uids {uids}, capabilities {status.get('CapEff')}"),
        "network": (status.get("own_net_ns") == "True", "the probe shared the caller's network namespace"),
        "processes": (isolated, "the probe could see the caller's processes"),
        "filesystem": (seen.get("read_etc") == "PermissionError", "the probe could read /etc/hostname"),
        "syscalls": (confined, "the probe could fork or create a socket"),
        "resources": (seen.get("rlimit_data") == _PROBE_MEMORY_MB << 20, "RLIMIT_DATA was not applied"),
        "cgroup": (status.get("in_worker_cgroup") == "True", "the probe was not in a worker cgroup"),
    }
    return {layer: None if ok else problem for layer, (ok, problem) in checks.items()}


def probe_host() -> SandboxReport:
    """Which sandbox layers this host provides, each checked by its observed effect in a confined probe."""
    from safeloader.sandbox.spawn import spawn_worker

    missing = host.missing_layers()
    policy = SandboxPolicy(require=(), memory_limit_mb=_PROBE_MEMORY_MB, threads=1)
    try:
        worker = spawn_worker(policy, argv=["-c", PROBE_SNIPPET, str(os.getpid())])
    except SandboxError as exc:
        reason = f"a confined probe could not start: {exc}"
        return SandboxReport(tuple(LayerStatus(layer, False, missing.get(layer, reason)) for layer in SANDBOX_LAYERS))
    try:
        seen = _receive_line(worker.sock, 60.0)
        status = _proc_status(worker.pid) if seen else {}
        worker.sock.sendall(b"x")
        verdict = _judge(seen, status) if seen else {}
        facts = {
            "host_uid": worker.report.facts.get("host_uid"),
            "probe_output": worker.stderr_tail(5),
            **{key: worker.report.facts.get(key) for key in BOUNDS_FACTS},
        }
        layers = []
        for started in worker.report.layers:
            problem = missing.get(started.layer) or verdict.get(started.layer, "the probe reported nothing")
            ok = started.active and problem is None
            layers.append(LayerStatus(started.layer, ok, started.detail if ok else str(problem)))
        return SandboxReport(tuple(layers), facts=facts)
    finally:
        worker.close()
