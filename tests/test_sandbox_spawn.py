"""Launch, lifecycle, fail-closed behaviour, model views, benign results and ``safeloader doctor``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safeloader.cli import main as cli_main
from safeloader.errors import SandboxError
from safeloader.policy.schema import SANDBOX_LAYERS, SandboxPolicy
from safeloader.sandbox import host, spawn
from safeloader.sandbox.probe import probe_host
from safeloader.sandbox.spawn import spawn_worker

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the sandbox is Linux-only")

PRELUDE = "from safeloader.sandbox.inworker import finish_confinement; finish_confinement()\n"

#: Loads the tiny DDPM from the path the caller sends on fd 3, runs 2 seeded steps, prints a digest.
DDPM_SNIPPET = (
    PRELUDE
    + r"""
import hashlib, socket, sys
path = socket.socket(fileno=3).recv(4096).decode()
import torch
from diffusers import DDPMPipeline
pipe = DDPMPipeline.from_pretrained(path).to(sys.argv[1])
images = pipe(num_inference_steps=2, generator=torch.Generator(sys.argv[1]).manual_seed(0), output_type="np").images
print("DIGEST", hashlib.sha256(images.tobytes()).hexdigest())
"""
)


def _run_ddpm(model_dir: Path, device: str, policy: SandboxPolicy) -> str:
    worker = spawn_worker(policy, model_dir=model_dir, argv=["-c", DDPM_SNIPPET, device])
    try:
        assert worker.model_dir is not None
        worker.sock.sendall(str(worker.model_dir).encode())
        assert worker.wait(120) == 0, worker.stderr_tail()
        lines = [line for line in worker.stderr_tail(50).splitlines() if line.startswith("DIGEST")]
    finally:
        worker.close()
    return lines[-1].split()[1]


def _unconfined_digest(model_dir: Path, device: str, threads: int) -> str:
    import torch
    from diffusers import DDPMPipeline

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pipe = DDPMPipeline.from_pretrained(str(model_dir)).to(device)
        generator = torch.Generator(device).manual_seed(0)
        images = pipe(num_inference_steps=2, generator=generator, output_type="np").images
    finally:
        torch.set_num_threads(previous)
    return hashlib.sha256(images.tobytes()).hexdigest()


def test_benign_pipeline_in_the_sandbox_matches_in_process(tiny_model_dir: Path) -> None:
    # The tiny model's safetensors file is 0600 root-owned and lives under a 0700 pytest directory.
    policy = SandboxPolicy(threads=2)
    assert _run_ddpm(tiny_model_dir, "cpu", policy) == _unconfined_digest(tiny_model_dir, "cpu", 2)


@pytest.mark.gpu
def test_benign_pipeline_on_cuda_in_the_sandbox(tiny_model_dir: Path) -> None:
    policy = SandboxPolicy(threads=2, gpu=True)
    assert _run_ddpm(tiny_model_dir, "cuda", policy) == _unconfined_digest(tiny_model_dir, "cuda", 2)


def test_report_lists_every_layer_active_and_worker_runs_unprivileged() -> None:
    worker = spawn_worker(SandboxPolicy(), argv=["-c", PRELUDE + "import socket; socket.socket(fileno=3).recv(1)"])
    try:
        assert [s.layer for s in worker.report.layers] == list(SANDBOX_LAYERS)
        assert worker.report.all_active, worker.report.format_text()
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines() if ":" in line
        )
        uids = status["Uid"].split()
        assert len(set(uids)) == 1 and uids[0] != "0" and uids[0] != "65534"
        assert int(uids[0]) == worker.report.facts["host_uid"]
        assert status["CapEff"].strip() == status["CapBnd"].strip() == "0000000000000000"
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        worker.sock.sendall(b"x")
        assert worker.wait(10) == 0
    finally:
        worker.close()


def test_required_layer_missing_raises_before_any_process_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(host.CHECKS, "filesystem", lambda: "simulated: Landlock disabled")

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process was started although a required layer is missing")

    monkeypatch.setattr(spawn.subprocess, "Popen", no_process)
    before = set(os.listdir(spawn.tempfile.gettempdir()))
    with pytest.raises(SandboxError, match=r"'filesystem'.*simulated.*sandbox\.require"):
        spawn_worker(SandboxPolicy(), argv=["-c", "pass"])
    assert not set(os.listdir(spawn.tempfile.gettempdir())) - before


def test_optional_layer_missing_is_loud_and_marked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(host.CHECKS, "filesystem", lambda: "simulated: Landlock disabled")
    required = tuple(layer for layer in SANDBOX_LAYERS if layer != "filesystem")
    with caplog.at_level(logging.WARNING, logger="safeloader"):
        worker = spawn_worker(SandboxPolicy(require=required), argv=["-c", PRELUDE + "print('ran')"])
    try:
        assert worker.wait(30) == 0
        status = worker.report.layer("filesystem")
        assert status is not None and not status.active and not status.required and "simulated" in status.detail
        assert "SANDBOX LAYER OFF" in caplog.text and "filesystem" in caplog.text
    finally:
        worker.close()


def test_close_is_idempotent_and_removes_private_dirs() -> None:
    worker = spawn_worker(SandboxPolicy(), argv=["-c", PRELUDE + "import sys; print('to-stderr', file=sys.stderr)"])
    private = worker._private_dir
    assert worker.wait(30) == 0
    assert "to-stderr" in worker.stderr_tail()
    worker.close()
    worker.close()
    assert not private.exists()


def test_failure_inside_the_launcher_is_a_clear_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from safeloader.sandbox import resources

    monkeypatch.setattr(resources, "rlimits", lambda policy: {"RLIMIT_NOFILE": 1 << 40})
    before = set(os.listdir(spawn.tempfile.gettempdir()))
    with pytest.raises(SandboxError, match="could not start"):
        spawn_worker(SandboxPolicy(), argv=["-c", "pass"])
    assert not set(os.listdir(spawn.tempfile.gettempdir())) - before


def test_confinement_does_not_depend_on_the_program_calling_it() -> None:
    code = "import os\ntry:\n    os.fork(); print('FORKED')\nexcept OSError:\n    print('BLOCKED')\n"
    worker = spawn_worker(SandboxPolicy(), argv=["-c", code])
    try:
        assert worker.wait(30) == 0
        assert "BLOCKED" in worker.stderr_tail() and "FORKED" not in worker.stderr_tail()
    finally:
        worker.close()


def test_finish_confinement_refuses_to_run_outside_the_sandbox() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from safeloader.sandbox import finish_confinement; finish_confinement()"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SAFELOADER_SANDBOX"},
    )
    assert result.returncode != 0 and "refuses to run unconfined" in result.stderr


def test_worker_dies_when_the_caller_dies() -> None:
    caller_code = (
        "import os, sys\nfrom safeloader.policy.schema import SandboxPolicy\n"
        "from safeloader.sandbox.spawn import spawn_worker\n"
        "worker = spawn_worker(SandboxPolicy(), argv=['-c', 'while True: pass'])\n"
        "print(worker.pid, worker.report.facts['host_uid'], worker._private_dir, flush=True)\nos._exit(0)\n"
    )
    result = subprocess.run([sys.executable, "-c", caller_code], capture_output=True, text=True, timeout=60)
    pid_text, uid_text, private_dir = result.stdout.split()
    worker_pid, uid = int(pid_text), int(uid_text)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{worker_pid}").exists():
        time.sleep(0.05)
    assert not Path(f"/proc/{worker_pid}").exists(), "the worker outlived its caller"
    assert uid != 0
    # The dead caller could not remove its private dir; the next spawn (this one, or one in any other
    # process on the host that ran meanwhile) sweeps it.
    spawn_worker(SandboxPolicy(), argv=["-c", "pass"]).close()
    assert not Path(private_dir).exists()


def _hub_snapshot(model: Path, root: Path) -> Path:
    """Lay ``model`` out like a Hub cache entry: snapshots/<commit>/… symlinks into blobs/."""
    blobs, snapshot = root / "blobs", root / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    for source in model.rglob("*"):
        if source.is_file():
            blob = blobs / hashlib.sha256(source.read_bytes()).hexdigest()
            shutil.copy2(source, blob)
            link = snapshot / source.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_hub_snapshot_symlinks_are_resolved(tiny_model_dir: Path, tmp_path: Path) -> None:
    snapshot = _hub_snapshot(tiny_model_dir, tmp_path / "models--org--tiny")
    assert _run_ddpm(snapshot, "cpu", SandboxPolicy(threads=2)) == _unconfined_digest(tiny_model_dir, "cpu", 2)


def test_symlink_out_of_the_model_is_refused(tiny_model_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret")
    (tiny_model_copy / "leak.txt").symlink_to(tmp_path / "outside")
    with pytest.raises(SandboxError, match="outside the model directory"):
        spawn_worker(SandboxPolicy(), model_dir=tiny_model_copy, argv=["-c", "pass"])


def test_probe_host_and_doctor_report_every_layer(capsys: pytest.CaptureFixture[str]) -> None:
    report = probe_host()
    assert [s.layer for s in report.layers] == list(SANDBOX_LAYERS)
    assert report.all_active, report.format_text()
    assert cli_main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert all(layer["active"] for layer in data["layers"])


def test_probe_host_says_why_a_layer_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(host.CHECKS, "syscalls", lambda: "simulated: no seccomp")
    report = probe_host()
    status = report.layer("syscalls")
    assert status is not None and not status.active and "simulated" in status.detail


def test_packages_on_the_callers_pythonpath_import_in_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = tmp_path / "extra-site"
    extra.mkdir()
    (extra / "caller_side_package.py").write_text("VALUE = 42\n")
    monkeypatch.setenv("PYTHONPATH", f"{extra}{os.pathsep}relative-entry")
    worker = spawn_worker(SandboxPolicy(), argv=["-c", "import caller_side_package; print(caller_side_package.VALUE)"])
    try:
        assert worker.wait(60) == 0, worker.stderr_tail()
        assert "42" in worker.stderr_tail()
    finally:
        worker.close()


def test_pythonpath_entries_at_or_above_home_are_never_granted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safeloader.sandbox.filesystem import caller_import_paths

    home = Path(os.path.realpath(os.path.expanduser("~")))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/", str(home), str(home.parent), str(tmp_path)]))
    assert caller_import_paths() == [os.path.realpath(tmp_path)]


def test_gpu_mode_is_refused_when_the_host_sockets_cannot_be_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="gpu = true"):
        spawn_worker(SandboxPolicy(gpu=True), argv=["-c", "pass"])
