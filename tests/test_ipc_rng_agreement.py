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

    def call_back(self, callback_on_step_end=None):
        # Draws nothing itself; the caller's callback may.
        callback_on_step_end(self, 0, 0, {})
        return torch.zeros(1)

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


def test_a_failed_call_that_drew_from_the_agreed_state_is_undone(remote: RemotePipeline) -> None:
    torch.manual_seed(4)
    remote.draw(1)  # agreed: the state after one draw from seed 4
    with pytest.raises(RemoteError):
        remote.draw_then_fail(6)  # crosses as "agreed", draws in the worker, then fails
    expected_state = torch.default_generator.get_state()
    expected = torch.rand(3)
    torch.default_generator.set_state(expected_state)
    assert torch.equal(remote.draw(3), expected)


def test_without_callbacks_an_agreed_state_is_left_as_the_caller_holds_it() -> None:
    torch.manual_seed(8)
    state = bytes(torch.default_generator.get_state().numpy())
    rng = CallRng.for_call((), {}, nested=False, agreed=state)
    assert rng is not None and rng.message()["global"] is AGREED
    torch.rand(2)  # another thread of the caller drew during the call: in-process its draws stay too
    moved = bytes(torch.default_generator.get_state().numpy())
    reply = {"value": None, "generators": [], "global": AGREED}
    rng.apply(reply, lambda problem: AssertionError(problem), callbacks_ran=False)
    assert bytes(torch.default_generator.get_state().numpy()) == moved and rng.agreed == state


def test_a_freshly_seeded_generator_crosses_as_its_seed() -> None:
    import msgpack

    from safeloader.ipc.codec import Decoder, Encoder, Ext

    def crossed(generator: torch.Generator) -> tuple[list[object], torch.Generator]:
        body, fds = Encoder().encode({"generator": generator})
        ext = msgpack.unpackb(body, raw=False)["generator"]
        assert ext.code == Ext.GENERATOR and not fds
        return msgpack.unpackb(ext.data, raw=False), Decoder().decode(body, [])["generator"]

    generator = torch.Generator().manual_seed(1234)
    payload, received = crossed(generator)
    assert payload[0] == 1234 and payload[2] is None
    assert torch.equal(received.get_state(), generator.get_state())
    assert torch.equal(torch.rand(4, generator=received), torch.rand(4, generator=generator))
    # Once drawn from, the full state crosses, and the receiver continues where the sender stands.
    payload, received = crossed(generator)
    assert isinstance(payload[2], bytes)
    assert torch.equal(torch.rand(4, generator=received), torch.rand(4, generator=generator))
    generator.manual_seed(99)
    assert crossed(generator)[0][2] is None


def test_a_callbacks_draws_are_undone_as_the_pipelines_agreed_state_says(remote: RemotePipeline) -> None:
    torch.manual_seed(6)
    remote.draw(1)
    agreed = torch.default_generator.get_state()

    def draw_in_callback(pipe: object, step: int, timestep: object, tensors: dict[str, object]) -> dict[str, object]:
        torch.rand(3)
        return {}

    remote.call_back(callback_on_step_end=draw_in_callback)
    # The worker answered "agreed": the caller's generator is set back to it, as sending the state would.
    assert torch.equal(torch.default_generator.get_state(), agreed)
