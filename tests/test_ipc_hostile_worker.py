"""A fake worker speaking hostile frames: the caller raises ProtocolError, kills it, and executes nothing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safeloader.errors import ProtocolError, WorkerCrashed, WorkerTimeout
from safeloader.policy.schema import Policy, SandboxPolicy
from safeloader.proxy import WorkerSession
from tests.fixtures.plain_worker import PlainWorker, spawn_plain_worker

FAKE_WORKER = str(Path(__file__).parent / "hostile" / "fake_worker.py")


def start_fake(
    mode: str,
    marker: Path,
    tmp_path: Path,
    load_timeout_s: float = 30.0,
    call_timeout_s: float = 20.0,
    max_result_mb: int = 4096,
) -> WorkerSession:
    policy = dataclasses.replace(
        Policy(),
        sandbox=SandboxPolicy(
            load_timeout_s=load_timeout_s, call_timeout_s=call_timeout_s, max_result_mb=max_result_mb
        ),
    )

    def spawner(sandbox: SandboxPolicy, *, model_dir: Path) -> PlainWorker:
        # The fake worker speaks with this checkout's codec, whatever the venv has installed.
        checkout = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        return spawn_plain_worker(
            sandbox, model_dir=model_dir, argv=(FAKE_WORKER, mode, str(marker)), env_extra=checkout
        )

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
        "tensor_larger_than_memfd",
        "image_size_mismatch",
        "inline_array_short",
        "transfer_can_resize",
        "remote_bad_address",
        "remote_unannounced",
        "remote_below_threshold",
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


@pytest.mark.parametrize(
    "mode",
    [
        "generator_state_wrong_size",
        "generator_state_invalid",
        "generator_state_empty",
        "generator_state_invalid_beside_global",
        "generator_state_wrong_type",
        "global_state_as_tensor",
        "generator_states_missing",
        "generator_ext_bad_state",
    ],
)
def test_bad_generator_states_are_refused_and_nothing_is_set(mode: str, tmp_path: Path) -> None:
    session = start_fake(mode, tmp_path / "m", tmp_path)
    generator = torch.Generator().manual_seed(5)
    torch.randn(2, generator=generator)
    before, global_before = generator.get_state(), torch.default_generator.get_state()
    with pytest.raises(ProtocolError, match="was killed"):
        session.call(0, "anything", (generator,), {})
    assert_killed(session)
    assert torch.equal(generator.get_state(), before)
    assert torch.equal(torch.default_generator.get_state(), global_before)


def test_a_build_answered_with_data_is_a_protocol_error(tmp_path: Path) -> None:
    session = start_fake("build_answers_data", tmp_path / "m", tmp_path)
    with pytest.raises(ProtocolError, match="was killed"):
        session.build_pipeline_in_worker("StableDiffusionPipeline", {})
    assert_killed(session)


def test_a_reply_over_max_result_mb_is_refused_before_it_is_mapped(tmp_path: Path) -> None:
    session = start_fake("over_max_result", tmp_path / "m", tmp_path, max_result_mb=1)
    with pytest.raises(ProtocolError, match="max_result_mb = 1 MiB"):
        session.get_attribute(0, "anything")
    assert_killed(session)


def test_a_remote_region_over_max_result_mb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    session = start_fake("remote_over_max_result", tmp_path / "m", tmp_path, max_result_mb=1)
    with pytest.raises(ProtocolError, match="max_result_mb = 1 MiB"):
        session.get_attribute(0, "anything")
    assert_killed(session)


_SPARSE_IMAGE_CALLER = """
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import diffusers.pipelines.pipeline_utils  # what the session preloads in a thread: its memory comes first
from safeloader.errors import ProtocolError
from tests.test_ipc_hostile_worker import start_fake
tmp = Path(tempfile.mkdtemp())
# A ceiling above the announcement: the page check alone must stop it (at the default 4096 MiB the
# ceiling stops it first).
session = start_fake("sparse_image", tmp / "m", tmp, max_result_mb=8192)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    session.get_attribute(0, "anything")
    error = None
except ProtocolError as exc:
    error = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "error": error, "killed": session.closed}))
"""


def test_a_sparse_memfd_announced_as_a_4_gib_image_costs_the_caller_nothing(tmp_path: Path) -> None:
    # A fresh caller process, so that its peak RSS is its own: today's decoder paid 12.6 GiB for this reply.
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", _SPARSE_IMAGE_CALLER, root], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] is not None and "backed by memory" in result["error"] and result["killed"]
    # Peak RSS of the whole caller (torch and diffusers imported), against a 4 GiB announcement.
    assert result["after_kib"] < 1536 * 1024
    assert result["after_kib"] - result["before_kib"] < 128 * 1024


def test_tampering_with_the_transfer_buffer_after_the_copy_changes_nothing(tmp_path: Path) -> None:
    session = start_fake("transfer_then_tamper", tmp_path / "m", tmp_path)
    kind, tensor = session.get_attribute(0, "anything")
    assert kind == "value" and tensor.shape == (1 << 20,) and bool((tensor == 1).all())
    assert session.get_attribute(0, "anything") == ("value", "tampered")  # the worker has rewritten its buffer
    assert bool((tensor == 1).all())  # the caller's copy is its own
    tensor[0] = 2.0  # and writable
    session.close()
