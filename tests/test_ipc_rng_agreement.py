"""The caller's global RNG crosses as "the state we agreed on" when it has not changed, with the semantics of
sending the full state every call: the same draws as in-process, worker drift between calls undone, and a
failed call leaving both sides on the previous agreement."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from safeloader.errors import RemoteError
from safeloader.ipc.rng import AGREED, CallRng
from safeloader.policy.schema import Policy
from safeloader.proxy import RemotePipeline, load_remote_pipeline

RANDOM_PIPELINE = b"""\
import torch
from diffusers import DiffusionPipeline


class RandomPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def draw(self, count):
        return torch.rand(count)

    def constant(self):
        return torch.zeros(2)

    def draw_then_fail(self, count):
        torch.rand(count)
        raise ValueError("after drawing")

    @property
    def drifting(self):
        # Reading it draws from the worker's global RNG outside any call.
        return float(torch.rand(1))
"""


@pytest.fixture(scope="module")
def remote(tiny_model_dir: Path) -> Iterator[RemotePipeline]:
    code = {"random_pipeline.py": RANDOM_PIPELINE}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in code.items()}
    pipe = load_remote_pipeline(
        Policy(),
        model_dir=tiny_model_dir,
        code=code,
        code_hashes=hashes,
        entry="random_pipeline.py",
        from_pretrained_kwargs={},
    )
    yield pipe
    pipe.close()


def test_draws_follow_the_callers_global_rng(remote: RemotePipeline) -> None:
    torch.manual_seed(11)
    remote_draws = [remote.draw(3), remote.constant(), remote.draw(3)]
    remote_state = torch.default_generator.get_state()
    torch.manual_seed(11)
    local_draws = [torch.rand(3), torch.zeros(2), torch.rand(3)]
    assert all(torch.equal(a, b) for a, b in zip(remote_draws, local_draws, strict=True))
    assert torch.equal(remote_state, torch.default_generator.get_state())
    # The caller's own draws between calls move its state; the next call starts from there.
    torch.rand(5)
    expected_state = torch.default_generator.get_state()
    expected = torch.rand(3)
    torch.default_generator.set_state(expected_state)
    assert torch.equal(remote.draw(3), expected)


def test_worker_drift_between_calls_is_undone(remote: RemotePipeline) -> None:
    torch.manual_seed(5)
    first = remote.draw(2)
    _ = remote.drifting  # a property read: the worker's generator moves, the caller's does not
    after_drift = remote.draw(2)
    torch.manual_seed(5)
    assert torch.equal(first, torch.rand(2)) and torch.equal(after_drift, torch.rand(2))


def test_a_failed_call_leaves_the_previous_agreement(remote: RemotePipeline) -> None:
    torch.manual_seed(1)
    remote.draw(1)  # agreed: the state after one draw from seed 1
    torch.manual_seed(2)
    with pytest.raises(RemoteError):
        remote.draw_then_fail(4)  # sent seed 2's state in full, then failed
    # Back to the agreed state by the caller's own means: the next call must start from it, not from seed 2.
    torch.manual_seed(1)
    torch.rand(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    torch.rand(1)
    assert torch.equal(remote.draw(3), expected)


def test_unchanged_state_crosses_as_agreed_and_is_set_back() -> None:
    torch.manual_seed(3)
    state = bytes(torch.default_generator.get_state().numpy())
    rng = CallRng.for_call((), {}, nested=False, agreed=state)
    assert rng is not None and rng.message() == {"generators": 0, "global": AGREED}
    torch.rand(4)  # e.g. the caller's own callback drew during the call
    value = rng.apply({"value": 7, "generators": [], "global": AGREED}, lambda problem: AssertionError(problem))
    assert value == 7 and bytes(torch.default_generator.get_state().numpy()) == state
    changed = CallRng.for_call((), {}, nested=False, agreed=b"\x00" * len(state))
    assert changed is not None and changed.message()["global"] == state and changed.agreed == state
