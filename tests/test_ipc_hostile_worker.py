"""A fake worker speaking hostile frames: the caller raises ProtocolError, kills it, and executes nothing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from safeloader.errors import ProtocolError, WorkerCrashed, WorkerTimeout
from safeloader.policy.schema import Policy, SandboxPolicy
from safeloader.proxy import WorkerSession
from tests.fixtures.plain_worker import PlainWorker, spawn_plain_worker

FAKE_WORKER = str(Path(__file__).parent / "hostile" / "fake_worker.py")


def start_fake(
    mode: str, marker: Path, tmp_path: Path, load_timeout_s: float = 30.0, call_timeout_s: float = 20.0
) -> WorkerSession:
    policy = dataclasses.replace(
        Policy(), sandbox=SandboxPolicy(load_timeout_s=load_timeout_s, call_timeout_s=call_timeout_s)
    )

    def spawner(sandbox: SandboxPolicy, *, model_dir: Path) -> PlainWorker:
        return spawn_plain_worker(sandbox, model_dir=model_dir, argv=(FAKE_WORKER, mode, str(marker)))

    return WorkerSession.start(policy, model_dir=tmp_path, spawner=spawner)


def assert_killed(session: WorkerSession) -> None:
    deadline = time.monotonic() + 5
    while session.worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.worker.poll() is not None
    assert session.closed


@pytest.mark.parametrize(
    "mode",
    [
        "garbage",
        "oversized",
        "deep",
        "pickle_ext",
        "pickle_in_output",
        "not_a_message",
        "unknown_op",
        "unsealed_memfd",
        "stray_fd",
        "private_output_field",
        "unhashable_callback",
    ],
)
def test_hostile_frames_raise_protocol_error_and_kill_the_worker(mode: str, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    session = start_fake(mode, marker, tmp_path)
    with pytest.raises(ProtocolError) as caught:
        session.get_attribute(0, "anything")
    assert "was killed" in str(caught.value)
    assert_killed(session)
    assert not marker.exists()
    with pytest.raises(WorkerCrashed, match="closed"):
        session.get_attribute(0, "anything")


def test_truncated_frame_then_exit_is_a_protocol_error(tmp_path: Path) -> None:
    session = start_fake("truncated", tmp_path / "m", tmp_path)
    with pytest.raises(ProtocolError):
        session.get_attribute(0, "anything")
    assert_killed(session)


def test_missing_hello_hits_the_load_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="1 s"):
        start_fake("no_hello", tmp_path / "m", tmp_path, load_timeout_s=1.0)
    assert time.monotonic() - started < 10


def test_progress_storm_is_drawn_and_the_result_still_arrives(tmp_path: Path) -> None:
    session = start_fake("result_after_callback_storm", tmp_path / "m", tmp_path)
    assert session.get_attribute(0, "anything") == ("value", "ok")
    session.close()
    assert session.worker.poll() is not None


def test_a_malformed_hello_is_a_protocol_error(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="was killed"):
        start_fake("array_in_hello", tmp_path / "m", tmp_path)


def test_a_worker_that_stops_reading_cannot_block_the_caller(tmp_path: Path) -> None:
    session = start_fake("stops_reading", tmp_path / "m", tmp_path, call_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="stopped reading"):
        session.call(0, "anything", (b"x" * (16 << 20),), {})  # far more than a socket buffer holds
    assert time.monotonic() - started < 10
    assert_killed(session)
