"""Round trips of every type the codec carries, and its limits, without any worker."""

from __future__ import annotations

import fcntl
import os
import pickle

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from safeloader.ipc.codec import TORCH_DTYPES, CodecError, Decoder, Encoder, Ext, GenericOutput, MessageTooLarge
from safeloader.ipc.limits import Limits
from safeloader.ipc.shm import TRANSFER_SEALS, TransferMappings


def round_trip(value: object, limits: Limits | None = None) -> object:
    encoder = Encoder() if limits is None else Encoder(limits=limits)
    decoder = Decoder() if limits is None else Decoder(limits=limits)
    body, fds = encoder.encode(value)
    return decoder.decode(body, fds)


plain_data = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(plain_data)
def test_plain_data_round_trips(value: object) -> None:
    assert round_trip(value) == value


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=4).map(tuple))
def test_tuples_stay_tuples(value: tuple[int, ...]) -> None:
    result = round_trip({"t": value, "nested": (value, [value])})
    assert result == {"t": value, "nested": (value, [value])}
    assert isinstance(result["t"], tuple)  # type: ignore[index]


@pytest.mark.parametrize(
    "dtype",
    [
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    ],
)
def test_numpy_arrays_round_trip_bit_exact(dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 1.7).astype(dtype)
    result = round_trip(array)
    assert isinstance(result, np.ndarray) and result.dtype == array.dtype and result.shape == array.shape
    assert result.tobytes() == array.tobytes()
    assert result.flags.writeable


def test_numpy_scalars_non_native_order_and_views() -> None:
    big_endian = np.arange(5, dtype=">i4")
    strided = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    scalar, swapped, view, empty = round_trip([np.float32(2.5), big_endian, strided, np.zeros((0, 3))])  # type: ignore[misc]
    assert isinstance(scalar, np.float32) and scalar == np.float32(2.5)
    assert np.array_equal(swapped, big_endian) and np.array_equal(view, strided) and empty.shape == (0, 3)


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_tensors_round_trip_bit_exact(dtype: str) -> None:
    source = torch.arange(12, dtype=torch.float32).reshape(3, 4).sub(5).mul(0.37)
    tensor = source.to(getattr(torch, dtype))
    result = round_trip(tensor)
    assert isinstance(result, torch.Tensor) and result.dtype == tensor.dtype and result.shape == tensor.shape
    assert torch.equal(result.view(torch.uint8), tensor.contiguous().view(torch.uint8))


def test_tensor_edge_cases() -> None:
    zero_dim, empty, transposed, with_grad = round_trip(  # type: ignore[misc]
        [torch.tensor(3.5), torch.empty(0, 4), torch.arange(6.0).reshape(2, 3).t(), torch.ones(2, requires_grad=True)]
    )
    assert zero_dim.shape == () and zero_dim.item() == 3.5
    assert empty.shape == (0, 4)
    assert torch.equal(transposed, torch.arange(6.0).reshape(2, 3).t())
    assert not with_grad.requires_grad


def test_large_buffers_travel_in_sealed_memfds_and_are_private() -> None:
    tensor = torch.randn(512, 1024)  # 2 MiB: over the 1 MiB threshold
    array = np.random.default_rng(0).random((300, 1000))
    body, fds = Encoder().encode({"t": tensor, "a": array})
    assert len(fds) == 2 and len(body) < 4096
    for fd in fds:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
    result = Decoder().decode(body, fds)
    assert torch.equal(result["t"], tensor) and np.array_equal(result["a"], array)
    result["t"][0, 0] = 1e9  # copy-on-write: writable for the receiver, never shared back
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)  # the decoder closed every received fd


def test_images_round_trip() -> None:
    rgb = Image.frombytes("RGB", (5, 3), bytes(range(45)))
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("F"), rgb.convert("1")):
        result = round_trip(image)
        assert isinstance(result, Image.Image) and result.mode == image.mode and result.size == image.size
        assert result.tobytes() == image.tobytes()


def test_generators_dtypes_devices() -> None:
    generator = torch.Generator().manual_seed(1234)
    torch.randn(3, generator=generator)  # the advanced state crosses, not only the seed
    result_gen, dtype, device, again = round_trip([generator, torch.bfloat16, torch.device("cpu"), generator])  # type: ignore[misc]
    assert isinstance(result_gen, torch.Generator) and result_gen.initial_seed() == 1234
    assert torch.equal(result_gen.get_state(), generator.get_state()) and again is result_gen
    assert dtype is torch.bfloat16 and device == torch.device("cpu")


def test_diffusers_outputs_are_rebuilt_from_the_allow_list_only() -> None:
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from diffusers.utils import BaseOutput

    images = np.zeros((1, 4, 4, 3), dtype=np.float32)
    rebuilt = round_trip(ImagePipelineOutput(images=images))
    assert type(rebuilt) is ImagePipelineOutput and np.array_equal(rebuilt.images, images)  # type: ignore[attr-defined]

    from dataclasses import dataclass

    @dataclass
    class CustomOutput(BaseOutput):
        latents: torch.Tensor
        note: str

    generic = round_trip(CustomOutput(latents=torch.ones(2), note="x"))
    assert isinstance(generic, GenericOutput) and generic.type_name == "CustomOutput"
    assert torch.equal(generic.latents, torch.ones(2)) and generic[1] == "x" and generic["note"] == "x"


def test_non_data_values_are_refused_on_encode() -> None:
    class WithReduce:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, ("true",))

    for value in (WithReduce(), print, {1: "int key"}, 2**70, np.array([object()]), torch.zeros(2, dtype=torch.uint16)):
        with pytest.raises(CodecError):
            Encoder().encode(value)


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def test_limits_depth_items_and_bytes_both_ways() -> None:
    limits = Limits(max_depth=10, max_items=100, max_total_bytes=1000)
    round_trip(_nested(9), limits)
    with pytest.raises(CodecError, match="deeper"):
        Encoder(limits=limits).encode(_nested(12))
    with pytest.raises(CodecError, match="deeper"):
        Decoder(limits=limits).decode(msgpack.packb(_nested(12)), [])
    with pytest.raises(CodecError, match="items"):
        Decoder(limits=limits).decode(msgpack.packb(list(range(200))), [])
    with pytest.raises(CodecError, match="bytes"):
        Decoder(limits=limits).decode(msgpack.packb([b"x" * 600, "y" * 600]), [])
    deep_tuples = msgpack.ExtType(Ext.TUPLE, msgpack.packb([]))
    for _ in range(12):
        deep_tuples = msgpack.ExtType(Ext.TUPLE, msgpack.packb([deep_tuples]))
    with pytest.raises(CodecError, match="deeper"):
        Decoder(limits=limits).decode(msgpack.packb(deep_tuples), [])


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # reserved msgpack byte
        msgpack.packb(msgpack.Timestamp(1, 2)),  # msgpack's built-in extension is not ours
        msgpack.packb([1, 2]) + b"\x00",  # trailing data
        msgpack.packb(msgpack.ExtType(99, pickle.dumps(print))),  # unknown extension carrying a pickle
        msgpack.packb(msgpack.ExtType(Ext.HANDLE, msgpack.packb([1, "x"]))),  # handles mean nothing without a hook
        msgpack.packb(msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["object", [1], b"\x00" * 8, False]))),
        msgpack.packb(msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["float32", [4], b"\x00" * 8, False]))),
        msgpack.packb(msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["float32", [-1], b"", False]))),
        msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1], 0, "cpu"]))),  # fd that is not there
        msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1], b"\x00" * 4, "evil://x"]))),
        msgpack.packb(msgpack.ExtType(Ext.DTYPE, msgpack.packb("__class__"))),
        msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["P", 2, 2, b"\x00" * 4]))),
        msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGB", 2, 2, b"\x00" * 5]))),
        # msgpack's true and false are ints to isinstance but not to torch: a seed of true made manual_seed raise
        # RuntimeError (found by fuzzing), a shape of true made reshape raise TypeError.
        msgpack.packb(msgpack.ExtType(Ext.GENERATOR, msgpack.packb([True, "cpu", None, 0]))),
        msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [True, 2], b"\x00" * 8, "cpu"]))),
        msgpack.packb(msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["float32", [True], b"\x00" * 4, False]))),
        msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["L", True, 1, b"\x00"]))),
    ],
)
def test_malformed_messages_are_codec_errors(body: bytes) -> None:
    with pytest.raises(CodecError):
        Decoder().decode(body, [])


def test_pickle_bytes_arrive_as_inert_bytes(tmp_path: object) -> None:
    payload = pickle.dumps(os.system)
    assert round_trip({"data": payload}) == {"data": payload}


def _memfd(data: bytes, seals: int) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_unsealed_or_wrongly_sized_memfds_and_unused_fds_are_refused() -> None:
    full = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    body = msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [4], 0, "cpu"])))
    assert Decoder().decode(body, [_memfd(b"\x00" * 16, full)]).shape == (4,)
    with pytest.raises(CodecError, match="sealed"):
        Decoder().decode(body, [_memfd(b"\x00" * 16, fcntl.F_SEAL_SHRINK)])
    with pytest.raises(CodecError, match="announced"):
        Decoder().decode(body, [_memfd(b"\x00" * 32, full)])
    with pytest.raises(CodecError, match="not referenced"):
        Decoder().decode(msgpack.packb(1), [_memfd(b"", full)])
    twice = msgpack.packb([msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [4], 0, "cpu"]))] * 2)
    with pytest.raises(CodecError, match="twice"):
        Decoder().decode(twice, [_memfd(b"\x00" * 16, full)])


def test_outputs_never_answer_protocol_attributes_for_the_worker() -> None:
    import numpy as np

    from safeloader.ipc.codec import GenericOutput

    hostile = {"data": [4096, False], "shape": [8], "typestr": "|u1"}
    # A private or dunder field name is refused outright.
    body = msgpack.packb(msgpack.ExtType(Ext.OUTPUT, msgpack.packb(["Sneaky", {"__array_interface__": hostile}])))
    with pytest.raises(CodecError, match="public identifier"):
        Decoder().decode(body, [])
    # diffusers' BaseOutput would turn the keys of a dict first field into attributes: a generic mapping instead.
    body = msgpack.packb(
        msgpack.ExtType(
            Ext.OUTPUT, msgpack.packb(["ImagePipelineOutput", {"images": {"__array_interface__": hostile}}])
        )
    )
    value = Decoder().decode(body, [])
    assert isinstance(value, GenericOutput)
    assert not hasattr(value, "__array_interface__") and not hasattr(value, "_repr_html_")
    assert np.asarray(value).dtype == object  # numpy sees a plain object, never worker-chosen memory


FULL_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _sparse_memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("sparse", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)  # no page is allocated: costs the sender nothing
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_sparse_memfds_and_mismatched_sizes_are_refused_before_anything_is_mapped() -> None:
    image = msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGBA", 32768, 32768, 0])))  # 4 GiB
    with pytest.raises(CodecError, match="backed by memory"):
        Decoder().decode(image, [_sparse_memfd(4 << 30, FULL_SEALS)])
    tensor = msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1 << 20], 0, "cpu"])))
    with pytest.raises(CodecError, match="not the announced"):  # shape x dtype larger than fstat
        Decoder().decode(tensor, [_memfd(b"\x00" * 4096, FULL_SEALS)])
    inline = msgpack.packb(msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["float64", [1000], b"\x00" * 10, False])))
    with pytest.raises(CodecError, match="inline buffer holds 10 bytes"):
        Decoder().decode(inline, [])
    wrong_size = msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGB", 100, 100, b"\x00" * 100])))
    with pytest.raises(CodecError, match="announced 30000"):
        Decoder().decode(wrong_size, [])


def test_the_ceiling_of_one_message_is_checked_before_mapping_or_copying() -> None:
    limits = Limits(max_total_bytes=1 << 20)
    tensor = msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [2 << 20], 0, "cpu"])))
    with pytest.raises(MessageTooLarge):
        Decoder(limits=limits).decode(tensor, [_memfd(b"\x01" * (2 << 20), FULL_SEALS)])
    # Two buffers under the ceiling each, over it together.
    pair = msgpack.packb(
        [msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["uint8", [600_000], b"\x00" * 600_000, False]))] * 2
    )
    with pytest.raises(MessageTooLarge):
        Decoder(limits=limits).decode(pair, [])


def test_transfer_buffer_round_trips_and_the_receiver_keeps_its_own_copy() -> None:
    encoder, decoder = Encoder(transfer_max=64 << 20), Decoder(transfer=TransferMappings())
    tensor = torch.randn(1024, 1024)
    array = np.arange(300_000, dtype=np.float64)
    image = Image.frombytes("RGB", (1024, 512), bytes(range(256)) * (1024 * 512 * 3 // 256))
    message = {"t": tensor, "a": array, "i": image, "small": torch.ones(3)}
    decoder.decode(*encoder.encode(message))  # the first message sizes the buffer (partly sealed memfds)
    body, fds = encoder.encode(message)
    assert len(fds) == 1  # from then on, one transfer buffer for every large buffer of a message
    assert fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & TRANSFER_SEALS == TRANSFER_SEALS
    assert not fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE  # reusable: the worker writes again
    result = decoder.decode(body, fds)
    assert torch.equal(result["t"], tensor) and np.array_equal(result["a"], array)
    assert result["i"].tobytes() == image.tobytes() and torch.equal(result["small"], torch.ones(3))
    # The sender overwrites its buffer (the next reply, or a hostile worker at any time): nothing the
    # receiver holds changes, because it copied each region once into memory of its own.
    assert encoder._transfer is not None
    encoder._transfer.mapping[:] = b"\xff" * encoder._transfer.capacity
    assert torch.equal(result["t"], tensor) and np.array_equal(result["a"], array)
    assert result["i"].tobytes() == image.tobytes()
    result["t"][0, 0] = 5.0  # and it is writable, like any tensor
    second = decoder.decode(*encoder.encode(tensor * 2))
    assert torch.equal(second, tensor * 2) and result["t"][0, 0] == 5.0
    # A message larger than the transfer limit goes through sealed memfds instead.
    body, fds = Encoder(transfer_max=1 << 20).encode(torch.zeros(1 << 19))
    assert fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    Decoder().decode(body, fds)


def test_transfer_regions_are_checked_like_sealed_buffers() -> None:
    region = msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [1 << 20], [0, 0], "cpu"])))
    with pytest.raises(CodecError, match="not accepted"):  # the worker never accepts them from the caller
        Decoder().decode(region, [_memfd(b"\x00" * (1 << 20), TRANSFER_SEALS)])
    with pytest.raises(CodecError, match="change size"):
        Decoder(transfer=TransferMappings()).decode(region, [_memfd(b"\x00" * (1 << 20), fcntl.F_SEAL_SHRINK)])
    with pytest.raises(CodecError, match="fewer than"):
        Decoder(transfer=TransferMappings()).decode(region, [_memfd(b"\x00" * 4096, TRANSFER_SEALS)])
    with pytest.raises(CodecError, match="backed by memory"):
        Decoder(transfer=TransferMappings()).decode(region, [_sparse_memfd(1 << 30, TRANSFER_SEALS)])
    beyond = msgpack.packb(msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [16], [0, -1], "cpu"])))
    with pytest.raises(CodecError, match="negative"):
        Decoder(transfer=TransferMappings()).decode(beyond, [_memfd(b"\x00" * 4096, TRANSFER_SEALS)])
    sealed_then_region = msgpack.packb(
        [
            msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [16], 0, "cpu"])),
            msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [16], [0, 0], "cpu"])),
        ]
    )
    with pytest.raises(CodecError, match="already used"):
        Decoder(transfer=TransferMappings()).decode(sealed_then_region, [_memfd(b"\x00" * 16, FULL_SEALS)])


def test_a_sparse_4_gib_image_costs_the_receiver_no_memory() -> None:
    image = msgpack.packb(msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGBA", 32768, 32768, 0])))
    before = _vm_hwm_kib()
    for _ in range(3):
        with pytest.raises(CodecError):
            Decoder().decode(image, [_sparse_memfd(4 << 30, FULL_SEALS)])
    assert _vm_hwm_kib() - before < 64 * 1024
