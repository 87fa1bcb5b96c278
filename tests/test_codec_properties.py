"""Hypothesis properties of the IPC codec: every supported type round-trips bit-exactly in any shape and nesting,
inline or through sealed memfds, and the decoder enforces the limits by itself, exactly where the encoder does.

``test_ipc_codec.py`` covers fixed examples (each dtype once, each extension once, named malformed messages);
these generate the shapes, contents, byte orders, nestings and limits.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from safeloader.ipc.codec import IMAGE_MODES, NUMPY_DTYPES, TORCH_DTYPES, CodecError, Decoder, Encoder
from safeloader.ipc.limits import Limits
from safeloader.ipc.shm import TransferMappings

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Small thresholds send even tiny buffers out of the frame, so every path is generated: 1 through sealed
#: memfds, 64 through the reusable transfer buffer the receiver copies out of, 1 MiB inline.
THRESHOLDS = st.sampled_from([1, 64, 1024 * 1024])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def round_trip(value: object, shm_threshold: int = 1024 * 1024) -> Any:
    limits = Limits(shm_threshold=shm_threshold)
    transfer_max = 64 << 20 if shm_threshold == 64 else 0
    body, fds = Encoder(limits=limits, transfer_max=transfer_max).encode(value)
    return Decoder(limits=limits, transfer=TransferMappings()).decode(body, fds)


def same(sent: Any, received: Any) -> bool:
    """Equality as the receiver sees it: bit-exact buffers, the same types, tuples kept apart from lists."""
    if isinstance(sent, float):  # np.float64 is a float and crosses as one
        return type(received) is float and (received == sent or (math.isnan(sent) and math.isnan(received)))
    if isinstance(sent, np.ndarray | np.generic):
        return (
            type(received) is type(sent)
            and received.dtype == sent.dtype.newbyteorder("=")
            and received.shape == sent.shape
            and np.ascontiguousarray(received).tobytes() == np.ascontiguousarray(sent, dtype=received.dtype).tobytes()
        )
    if isinstance(sent, torch.Tensor):
        return (
            isinstance(received, torch.Tensor)
            and received.dtype == sent.dtype
            and received.shape == sent.shape
            and torch.equal(received.reshape(-1).view(torch.uint8), sent.reshape(-1).contiguous().view(torch.uint8))
        )
    if isinstance(sent, Image.Image):
        return (
            isinstance(received, Image.Image)
            and (received.mode, received.size) == (sent.mode, sent.size)
            and received.tobytes() == sent.tobytes()
        )
    if isinstance(sent, torch.Generator):
        return isinstance(received, torch.Generator) and received.initial_seed() == sent.initial_seed()
    if isinstance(sent, ImagePipelineOutput):
        return type(received) is ImagePipelineOutput and same(sent.images, received.images)
    if isinstance(sent, tuple | list):
        return (
            type(received) is type(sent)
            and len(received) == len(sent)
            and all(same(a, b) for a, b in zip(sent, received, strict=True))
        )
    if isinstance(sent, dict):
        return (
            isinstance(received, dict)
            and received.keys() == sent.keys()
            and all(same(sent[key], received[key]) for key in sent)
        )
    return type(received) is type(sent) and received == sent


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(sorted(NUMPY_DTYPES))))
    if dtype.itemsize > 1 and draw(st.booleans()):
        dtype = dtype.newbyteorder(">" if np.little_endian else "<")
    shape = draw(SHAPES)
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize, max_size=int(np.prod(shape)) * dtype.itemsize))
    array = np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape) if raw else np.empty(shape, dtype=dtype)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8).astype(np.bool_)  # only 0 and 1 are booleans
    if array.ndim and array.shape[-1] > 1 and draw(st.booleans()):
        array = array[..., ::2]  # a non-contiguous view
    return array


@st.composite
def numpy_scalars(draw: st.DrawFn) -> np.generic:
    array = draw(numpy_arrays())
    return array.reshape(-1)[0] if array.size else np.float64(draw(st.floats()))


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = getattr(torch, draw(st.sampled_from(TORCH_DTYPES)))
    shape = draw(SHAPES)
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = int(np.prod(shape))
    raw = draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    if dtype == torch.bool:
        raw = bytes(byte & 1 for byte in raw)
    tensor = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
    if tensor.dim() >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, 1)  # a non-contiguous view
    return tensor


@st.composite
def images(draw: st.DrawFn) -> Image.Image:
    mode = draw(st.sampled_from(sorted(IMAGE_MODES)))
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    size = len(Image.new(mode, (width, height)).tobytes())
    image = Image.frombytes(mode, (width, height), draw(st.binary(min_size=size, max_size=size)))
    return image


generators = st.integers(0, 2**64 - 1).map(lambda seed: torch.Generator().manual_seed(seed))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
leaves = (
    scalars
    | numpy_arrays()
    | numpy_scalars()
    | tensors()
    | images()
    | generators
    | st.sampled_from([getattr(torch, name) for name in TORCH_DTYPES])
    | st.sampled_from([torch.device("cpu")])
)
messages = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.lists(images(), min_size=1, max_size=2).map(lambda imgs: ImagePipelineOutput(images=imgs))
    ),
    max_leaves=12,
)


@SETTINGS
@given(numpy_arrays() | numpy_scalars(), THRESHOLDS)
def test_numpy_values_round_trip_in_any_shape_order_and_layout(array: np.ndarray, threshold: int) -> None:
    received = round_trip(array, threshold)
    assert same(array, received)
    if isinstance(received, np.ndarray):
        assert received.flags.writeable  # the receiver owns its copy (private pages when it came in a memfd)


@SETTINGS
@given(tensors(), THRESHOLDS)
def test_tensors_round_trip_in_any_dtype_and_shape(tensor: torch.Tensor, threshold: int) -> None:
    assert same(tensor, round_trip(tensor, threshold))


@SETTINGS
@given(images(), THRESHOLDS)
def test_images_round_trip_in_every_allowed_mode(image: Image.Image, threshold: int) -> None:
    assert same(image, round_trip(image, threshold))


@SETTINGS
@given(messages, THRESHOLDS)
def test_nested_messages_of_every_type_round_trip(message: Any, threshold: int) -> None:
    assert same(message, round_trip({"op": "result", "value": message}, threshold)["value"])


@SETTINGS
@given(st.integers(2**64, 2**80) | st.integers(-(2**80), -(2**63) - 1))
def test_integers_outside_64_bits_are_refused(value: int) -> None:
    with pytest.raises(CodecError, match="64 bits"):
        Encoder().encode({"n": value})


limits = st.builds(
    Limits,
    max_depth=st.integers(0, 6),
    max_items=st.integers(1, 40),
    max_total_bytes=st.integers(0, 400),
    max_ndim=st.integers(0, 4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, limits)
def test_the_decoder_enforces_each_limit_exactly_where_the_encoder_does(message: Any, limit: Limits) -> None:
    """A peer that ignores the limits is stopped by the receiver's own checks, and never an honest one."""
    try:
        Encoder(limits=limit).encode(message)
        accepted_by_sender = True
    except CodecError:
        accepted_by_sender = False
    body, fds = Encoder().encode(message)  # a sender that checks nothing beyond the defaults
    try:
        Decoder(limits=limit).decode(body, fds)
        accepted_by_receiver = True
    except CodecError:
        accepted_by_receiver = False
    event(f"accepted: {accepted_by_sender}")
    assert accepted_by_receiver == accepted_by_sender
