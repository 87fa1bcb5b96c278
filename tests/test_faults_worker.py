"""Fault injection on the worker side: killed mid-call, stopped answering, and what is left behind.

Each test loads a real pipeline into the real sandbox, breaks the worker from outside, and checks
the caller gets a clear error quickly, no process of the worker's uid survives, and the caller holds
no leaked descriptor (shared-memory transfers travel as memfds the caller must close).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from safeloader import DiffusionPipeline
from safeloader.errors import WorkerCrashed, WorkerTimeout
from safeloader.policy import load_policy, with_overrides

SLOW_PIPELINE = """
import time

import torch
from diffusers import DiffusionPipeline


class SlowPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, seconds: float = 0.0, size: int = 0):
        time.sleep(seconds)
        return torch.ones(size)
"""


@pytest.fixture
def slow_pipeline_dir(tmp_path: Path) -> Path:
    root = tmp_path / "slow"
    root.mkdir()
    (root / "pipeline.py").write_text(SLOW_PIPELINE)
    return root


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    found.append(int(entry))
    return found


def _load(model: Path, code: Path, **sandbox: Any) -> Any:
    policy = with_overrides(load_policy("default"), sandbox=sandbox) if sandbox else "default"
    return DiffusionPipeline.from_pretrained(
        str(model), custom_pipeline=str(code), trust_remote_code=True, policy=policy
    )


def test_worker_killed_mid_call_raises_within_a_second_and_leaks_nothing(
    tiny_model_dir: Path, slow_pipeline_dir: Path
) -> None:
    pipe = _load(tiny_model_dir, slow_pipeline_dir)
    uid = pipe.safeloader.sandbox.facts["host_uid"]
    worker_pid = pipe.safeloader.sandbox.facts["worker_pid"]
    # A large result travels as a memfd: exercise that path once so a leak would show.
    assert pipe(size=1 << 20).numel() == 1 << 20
    fds_before = _open_fds()
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(0.5)
        killed_at.append(time.monotonic())
        os.kill(worker_pid, signal.SIGKILL)

    threading.Thread(target=kill_soon, daemon=True).start()
    with pytest.raises(WorkerCrashed) as info:
        pipe(seconds=60)
    assert time.monotonic() - killed_at[0] < 1.0
    assert "SIGKILL" in str(info.value) or info.value.returncode in (-9, 137)
    pipe.close()
    deadline = time.monotonic() + 2
    while _processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_of_uid(uid) == []
    assert _open_fds() <= fds_before


def test_worker_that_stops_answering_times_out_and_is_killed(tiny_model_dir: Path, slow_pipeline_dir: Path) -> None:
    pipe = _load(tiny_model_dir, slow_pipeline_dir, call_timeout_s=2.0)
    uid = pipe.safeloader.sandbox.facts["host_uid"]
    worker_pid = pipe.safeloader.sandbox.facts["worker_pid"]
    os.kill(worker_pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="call_timeout_s"):
        pipe(seconds=0)
    assert time.monotonic() - started < 2.0 + 2.0
    pipe.close()
    deadline = time.monotonic() + 2
    while _processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_of_uid(uid) == []


def test_a_dead_worker_stays_dead_for_later_calls(tiny_model_dir: Path, slow_pipeline_dir: Path) -> None:
    pipe = _load(tiny_model_dir, slow_pipeline_dir)
    os.kill(pipe.safeloader.sandbox.facts["worker_pid"], signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        pipe(seconds=0)
    with pytest.raises(WorkerCrashed):
        pipe(seconds=0)
    pipe.close()
    pipe.close()
