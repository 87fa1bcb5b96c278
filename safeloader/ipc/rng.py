"""Random number generators that cross with their full state, both ways, so randomness matches in-process diffusers.

A ``torch.Generator`` passed to the worker travels as its seed, device and ``get_state()`` bytes; after the call
the worker sends each generator's advanced state back and the caller's generator is set to it, so two calls with
one generator give what they give in-process. The caller's default CPU generator (``torch.manual_seed``) is
carried the same way for every top-level call. States from the worker are checked (type, exact size, accepted by
a scratch generator) before any of the caller's generators is touched; a bad one is a protocol violation.

The global state is 5 KiB and most calls leave it alone, so each side remembers the state both last agreed on
(the caller's after the previous exchange) and sends ``True`` ("the state we agreed on") instead of the bytes
when its state is still that one. The worker then sets its generator back to the agreed state, which undoes any
drift between calls exactly as sending the bytes would; semantics are those of sending the full state each way.

A CPU generator still exactly as ``manual_seed(initial_seed())`` left it (the usual
``torch.Generator().manual_seed(0)`` of a script) crosses with its seed alone: the receiver seeds a new one,
which gives the same bytes, checked here against a freshly seeded generator. Each torch call on this path costs
tens of microseconds once the other process has had the CPU for a pipeline call (measured), so the
per-call path makes as few as it can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from safeloader.ipc import torch_import

__all__ = [
    "CallRng",
    "RngStateError",
    "collect_generators",
    "crossing_payload",
    "generator_state",
    "output_fields",
    "restore_generator",
]


class RngStateError(ValueError):
    """A generator state from the other side is malformed."""


#: torch if the caller has imported it: a script without torch has no generators to carry.
_torch = torch_import.loaded


def output_fields(value: Any) -> dict[str, Any]:
    """Every field of a diffusers ``BaseOutput`` / transformers ``ModelOutput``, ``None`` ones included."""
    if dataclasses.is_dataclass(value):
        return {field.name: getattr(value, field.name, None) for field in dataclasses.fields(value)}
    return dict(value.items())


#: Values that hold no generator, tested first (see collect_generators).
_SCALARS = frozenset({int, float, str, bool, bytes, type(None)})

#: The answer of :func:`is_library_output` per class: the codec asks it for every value that is not plain data.
_library_output_classes: dict[type, bool] = {}


def is_library_output(value: object) -> bool:
    """A diffusers ``BaseOutput`` or a transformers ``ModelOutput`` (found by class, never by its data)."""
    kind = type(value)
    known = _library_output_classes.get(kind)
    if known is None:
        known = any(
            (klass.__name__ == "BaseOutput" and klass.__module__ == "diffusers.utils.outputs")
            or (klass.__name__ == "ModelOutput" and klass.__module__ == "transformers.utils.generic")
            for klass in kind.__mro__
        )
        if len(_library_output_classes) < 4096:  # classes made on the fly must not grow it without end
            _library_output_classes[kind] = known
    return known


def collect_generators(value: object, found: list[Any] | None = None, depth: int = 0) -> list[Any]:
    """The generators in ``value`` in the order the encoder meets them (each once), which is their slot order."""
    found = [] if found is None else found
    torch = _torch()
    if torch is None or depth > 64 or type(value) in _SCALARS:
        # Scalars first: torch.Generator's isinstance check runs Python code for every miss.
        return found
    if isinstance(value, torch.Generator):
        if not any(known is value for known in found):
            found.append(value)
    elif isinstance(value, list | tuple):
        for item in value:
            collect_generators(item, found, depth + 1)
    elif is_library_output(value):
        for item in output_fields(value).values():
            collect_generators(item, found, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            collect_generators(item, found, depth + 1)
    return found


def generator_state(generator: Any) -> bytes:
    return bytes(generator.get_state().numpy())


#: The state of a freshly seeded CPU generator, by seed (bounded: scripts use a handful of seeds).
_seeded_states: dict[int, bytes] = {}
_MAX_SEEDED_STATES = 64


def crossing_payload(generator: Any) -> tuple[int, str, bytes | None]:
    """``(seed, device, state)`` for ``generator`` to cross with; the state is ``None`` when reseeding gives it."""
    seed, device, state = generator.initial_seed(), str(generator.device), generator_state(generator)
    if device != "cpu":
        return seed, device, state
    seeded = _seeded_states.get(seed)
    if seeded is None:
        seeded = generator_state(_torch().Generator().manual_seed(seed))
        if len(_seeded_states) >= _MAX_SEEDED_STATES:
            _seeded_states.clear()
        _seeded_states[seed] = seeded
    return seed, device, None if state == seeded else state


#: One scratch generator per device: every received state is tried on it before a real generator is set.
_scratch: dict[str, tuple[Any, int]] = {}


def _scratch_generator(device: str) -> tuple[Any, int]:
    if device not in _scratch:
        generator = _torch().Generator(device=device)
        _scratch[device] = (generator, len(generator.get_state()))
    return _scratch[device]


def _expected_size(device: str) -> int:
    return _scratch_generator(device)[1]


#: The last state checked, as ``(state, device, tensor)``: a call that leaves the global state alone sets the
#: agreed state again, and the same bytes object need not be checked twice (bytes cannot change).
_last_checked: tuple[bytes, str, Any] | None = None


def checked_state(state: object, device: str) -> Any:
    """``state`` as a uint8 tensor a generator on ``device`` accepts; raises :class:`RngStateError` otherwise."""
    global _last_checked
    last = _last_checked
    if last is not None and last[0] is state and last[1] == device:
        return last[2]
    torch = _torch()
    scratch, size = _scratch_generator(device)
    if not isinstance(state, bytes) or len(state) != size:
        raise RngStateError(f"a generator state for {device} is not {size} bytes")
    tensor = torch.frombuffer(bytearray(state), dtype=torch.uint8)
    try:
        scratch.set_state(tensor)  # the real generator is set only once every state of the reply passed this
    except (RuntimeError, ValueError, TypeError) as exc:
        raise RngStateError(f"a generator state for {device} is invalid ({exc})") from None
    _last_checked = (state, device, tensor)
    return tensor


def restore_generator(seed: int, source_device: str, state: object, target_device: str) -> Any:
    """A generator on ``target_device`` with ``state`` when it was saved on the same kind of device, else seeded.

    ``state`` is ``None`` for a generator that crossed with its seed alone (see :func:`crossing_payload`).
    """
    torch = _torch()
    generator = torch.Generator(device=target_device)
    if state is not None and source_device.split(":")[0] == target_device.split(":")[0]:
        generator.set_state(checked_state(state, target_device))
    else:
        # A CUDA generator's state means nothing to a CPU generator (and back): start from its seed instead.
        generator.manual_seed(seed)
    return generator


#: In place of a global state: "the state the two sides last agreed on" (see the module docstring).
AGREED = True


@dataclasses.dataclass
class CallRng:
    """What one call carries: the caller's generators (by slot) and, for top-level calls, the global CPU state.

    ``agreed`` is the global state both sides hold from the previous successful call (``None`` before the
    first); after :meth:`apply` it is the state they agree on now. Both sides keep it only when the call
    succeeds, so a failed call leaves both on the previous one.
    """

    generators: list[Any]
    carry_global: bool
    agreed: bytes | None = None

    @classmethod
    def for_call(
        cls, args: object, kwargs: Mapping[str, Any], *, nested: bool, agreed: bytes | None = None
    ) -> CallRng | None:
        if _torch() is None:
            return None
        generators = collect_generators(kwargs, collect_generators(args))
        # A call made from inside a callback must not rewind the global RNG of the call it is nested in.
        if not generators and nested:
            return None
        return cls(generators, carry_global=not nested, agreed=agreed)

    def message(self) -> dict[str, Any]:
        global_state: bytes | bool | None = None
        if self.carry_global:
            current = generator_state(_torch().default_generator)
            if current == self.agreed:
                global_state = AGREED
            else:
                global_state, self.agreed = current, current
        return {"generators": len(self.generators), "global": global_state}

    def apply(self, reply: object, fail: Callable[[str], BaseException], *, callbacks_ran: bool = True) -> Any:
        """Check the worker's states, then set the caller's generators to them; returns the call's value.

        ``callbacks_ran=False`` says no code of the caller ran during the call: an agreed global state then
        needs no setting, the caller's still holds it.
        """
        torch = _torch()
        if not isinstance(reply, dict) or set(reply) != {"value", "generators", "global"}:
            raise fail("a call's reply does not carry the generator states it must")
        states = reply["generators"]
        if not isinstance(states, list) or len(states) != len(self.generators):
            raise fail("a call's reply carries the wrong number of generator states")
        try:
            checked = [
                None if state is None else checked_state(state, str(generator.device))
                for generator, state in zip(self.generators, states, strict=True)
            ]
            global_state = None
            if self.carry_global:
                # The worker answers AGREED when the call left its state where it was set: the agreed one.
                if reply["global"] is AGREED and self.agreed is not None:
                    global_state = checked_state(self.agreed, "cpu") if callbacks_ran else None
                else:
                    global_state = checked_state(reply["global"], "cpu")
                    self.agreed = reply["global"]
            elif reply["global"] is not None:
                raise RngStateError("a nested call's reply carries a global state")
        except RngStateError as exc:
            raise fail(str(exc)) from None
        for generator, state in zip(self.generators, checked, strict=True):
            if state is not None:
                generator.set_state(state)
        if global_state is not None:
            # Also when the worker's state is unchanged, if the caller's own callbacks ran: they may have drawn
            # from it during the call, and in-process the pipeline's draws are what the generator holds after.
            torch.default_generator.set_state(global_state)
        return reply["value"]
