"""The pickle-free encoding of everything that crosses between caller and worker.

msgpack for plain data, plus extension types for arrays, tensors, images, diffusers and transformers outputs,
generators (with their state), dtypes, devices, tuples, configs, opaque handles, callback markers and the caller's
library objects (see :mod:`safeloader.ipc.library_objects`). Decoding never imports or calls anything the
peer names: every extension is rebuilt from an allow list, and every message is checked against
:class:`~safeloader.ipc.limits.Limits` (depth, item count, total bytes, fd use).
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import sys
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, TypeGuard

import msgpack
import numpy as np

from safeloader.ipc import library_objects, torch_import
from safeloader.ipc.limits import DEFAULT_LIMITS, Limits
from safeloader.ipc.remote_read import RemoteMemory, RemoteReadError
from safeloader.ipc.rng import crossing_payload, is_library_output, output_fields, restore_generator
from safeloader.ipc.shm import (
    PARALLEL_COPY_BYTES,
    ReceivedPages,
    SharedMemoryError,
    TransferBuffer,
    TransferMappings,
    map_sealed_memfd,
    sealed_memfd_from,
)


class Ext(IntEnum):
    NDARRAY = 1
    TENSOR = 2
    IMAGE = 3
    OUTPUT = 4
    GENERATOR = 5
    DTYPE = 6
    DEVICE = 7
    HANDLE = 8
    TUPLE = 9
    CALLBACK = 10
    #: A diffusers ``FrozenDict`` config (both ways), rebuilt as one from data only.
    CONFIG = 20
    #: A library object the caller holds (scheduler, attention processor, model), rebuilt by the worker only.
    LIBRARY = 21


class ExtReplacement:
    """What an encoder fallback returns to have ``payload`` converted (tensors included) and sent as ``code``."""

    def __init__(self, code: int, payload: object) -> None:
        self.code = code
        self.payload = payload


class CodecError(Exception):
    """A value could not be encoded, or a received message is malformed or over a limit."""


class MessageTooLarge(CodecError):
    """A message announces more bulk bytes than ``Limits.max_total_bytes`` (checked before anything is mapped)."""


NUMPY_DTYPES: frozenset[str] = frozenset(
    {
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
    }
)
TORCH_DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "uint8",
    "int16",
    "int32",
    "int64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
)
#: Modes whose pixels ``Image.tobytes``/``Image.frombytes`` round-trip exactly without a palette.
IMAGE_MODES: frozenset[str] = frozenset({"1", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F", "I;16"})
#: diffusers output classes rebuilt by name; the import location is ours, never the peer's.
OUTPUT_CLASSES: Mapping[str, tuple[str, str]] = {
    "ImagePipelineOutput": ("diffusers.pipelines.pipeline_utils", "ImagePipelineOutput"),
    "AudioPipelineOutput": ("diffusers.pipelines.pipeline_utils", "AudioPipelineOutput"),
    "StableDiffusionPipelineOutput": ("diffusers.pipelines.stable_diffusion", "StableDiffusionPipelineOutput"),
    "StableDiffusionXLPipelineOutput": ("diffusers.pipelines.stable_diffusion_xl", "StableDiffusionXLPipelineOutput"),
    "FluxPipelineOutput": ("diffusers.pipelines.flux", "FluxPipelineOutput"),
    "UNet2DOutput": ("diffusers.models.unets.unet_2d", "UNet2DOutput"),
    "UNet2DConditionOutput": ("diffusers.models.unets.unet_2d_condition", "UNet2DConditionOutput"),
    "DDPMSchedulerOutput": ("diffusers.schedulers.scheduling_ddpm", "DDPMSchedulerOutput"),
    "DDIMSchedulerOutput": ("diffusers.schedulers.scheduling_ddim", "DDIMSchedulerOutput"),
    "SchedulerOutput": ("diffusers.schedulers.scheduling_utils", "SchedulerOutput"),
    "DecoderOutput": ("diffusers.models.autoencoders.vae", "DecoderOutput"),
    "AutoencoderKLOutput": ("diffusers.models.modeling_outputs", "AutoencoderKLOutput"),
    "Transformer2DModelOutput": ("diffusers.models.modeling_outputs", "Transformer2DModelOutput"),
    # transformers outputs are rebuilt only when their first field is a tensor (see _output).
    "BaseModelOutput": ("transformers.modeling_outputs", "BaseModelOutput"),
    "BaseModelOutputWithPooling": ("transformers.modeling_outputs", "BaseModelOutputWithPooling"),
    "CLIPTextModelOutput": ("transformers.models.clip.modeling_clip", "CLIPTextModelOutput"),
    "CLIPVisionModelOutput": ("transformers.models.clip.modeling_clip", "CLIPVisionModelOutput"),
}
_DEVICE_NAME = re.compile(r"(cpu|cuda|mps|xpu)(:[0-9]{1,3})?")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MAX_INT = 2**64 - 1
_MIN_INT = -(2**63)


def available_device(name: str) -> str:
    """Where a received tensor or generator goes: its named CUDA device when this side has CUDA, else CPU."""
    if name.startswith("cuda"):
        torch = _torch_loaded()
        if torch is not None and torch.cuda.is_available():
            return name
    return "cpu"


class _TooManyItems(Exception):
    """Raised from inside msgpack's unpacker to stop it at the item limit."""


class PublicFieldMapping(dict[str, Any]):
    """Data from the worker as a mapping whose public keys also read as attributes.

    Only public names: protocols (``__array_interface__``, ``_repr_html_``…) are looked up as attributes, and
    the worker must never be able to answer them.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class GenericOutput(PublicFieldMapping):
    """An output rebuilt as data: a diffusers or transformers output class that is not on the allow list, or
    whose library this process has not imported. It behaves as their ``BaseOutput`` / ``ModelOutput`` do: the
    fields that are not ``None`` are its keys, in order; every field reads as an attribute; an integer index
    reads :meth:`to_tuple`."""

    def __init__(self, type_name: str, fields: Mapping[str, Any]) -> None:
        super().__init__({name: value for name, value in fields.items() if value is not None})
        self.type_name = type_name
        self.field_names = tuple(fields)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in self.__dict__.get("field_names", ()) and name not in self:
            return None  # a field that is None: an attribute, not a key
        return super().__getattr__(name)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int | slice):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __repr__(self) -> str:
        return f"{self.type_name}({dict.__repr__(self)})"


_is_base_output = is_library_output


def _inert_first_field(module: str, first: object) -> bool:
    """Whether building the output class from ``first`` cannot turn worker data into attributes."""
    if module.startswith("transformers."):
        torch = _torch_loaded()
        return torch is not None and isinstance(first, torch.Tensor)
    return not isinstance(first, Mapping)


def _torch() -> Any:
    import torch

    return torch


_dtype_names: dict[Any, str] = {}


def _torch_dtype_name(dtype: Any) -> str:
    """``"float32"`` for ``torch.float32`` (remembered: ``str(dtype)`` costs a call on every tensor)."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = str(dtype).removeprefix("torch.")
    return name


#: torch if the caller has imported it (never imports it; waits for safeloader's own background import).
_torch_loaded = torch_import.loaded


@functools.lru_cache(maxsize=256)
def _image_row_bytes(mode: str, width: int) -> int:
    """Bytes of one row of ``width`` pixels in ``mode``, as PIL lays them out (asked once per mode and width)."""
    from PIL import Image

    return len(Image.new(mode, (width, 1)).tobytes())


@functools.lru_cache(maxsize=len(OUTPUT_CLASSES))
def _output_class(type_name: str) -> Any:
    """The allow-listed output class named ``type_name`` (its module is imported; see Decoder._output)."""
    import importlib

    module_name, class_name = OUTPUT_CLASSES[type_name]
    return getattr(importlib.import_module(module_name), class_name)


def _pil_image_class() -> Any:
    import sys

    module = sys.modules.get("PIL.Image")
    return None if module is None else module.Image


HandleEncoder = Callable[[object], "msgpack.ExtType | ExtReplacement"]
ExtDecoder = Callable[[int, Any], object]
#: Offsets in the transfer buffer are page-aligned, so copies run on aligned memory.
_REGION_ALIGN = 4096
_TRANSFER_ROUND = 2 * 1024 * 1024


def _is_int(value: object) -> TypeGuard[int]:
    """An integer as msgpack decodes one: never a bool, which is an int to ``isinstance`` but not to torch."""
    return type(value) is int


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class Encoder:
    """Turns one message into msgpack bytes plus the memfds that carry its bulk buffers.

    ``fallback`` is asked for any value that is not data (the worker makes it an opaque handle; the caller
    refuses it); it returns an ``ExtType`` or raises :class:`CodecError`.

    With ``transfer_max`` > 0 (the worker), bulk buffers of at least ``Limits.shm_threshold`` bytes whose
    message fits in ``transfer_max`` bytes are written into one reusable, pre-faulted transfer buffer, which
    the receiver copies out of (see :mod:`safeloader.ipc.shm`); the rest travel in fresh sealed memfds.
    """

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        fallback: HandleEncoder | None = None,
        transfer_max: int = 0,
        remote_read: bool = False,
    ) -> None:
        self.limits = limits
        self.fallback = fallback
        self.transfer_max = transfer_max
        #: The receiver reads large tensors and arrays out of this process (safeloader.ipc.remote_read): their
        #: address crosses instead of their bytes, and they are kept in :attr:`pinned` until it answers.
        self.remote_read = remote_read
        self.pinned: list[Any] = []
        self._transfer: TransferBuffer | None = None
        #: The transfer bytes the largest message so far wanted: the buffer grows to it at the next message.
        self._transfer_wanted = 0

    def encode(self, message: object) -> tuple[bytes, list[int]]:
        fds: list[int] = []
        self._items = 0
        self._bytes = 0
        self._generator_slots: dict[int, int] = {}
        self._transfer_used = 0
        self._transfer_index: int | None = None
        try:
            packed = msgpack.packb(self._convert(message, 0, fds), use_bin_type=True)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return packed, fds

    def _count(self, items: int = 0, nbytes: int = 0) -> None:
        self._items += items
        self._bytes += nbytes
        if self._items > self.limits.max_items:
            raise CodecError(f"the value has more than {self.limits.max_items} items")
        if self._bytes > self.limits.max_total_bytes:
            raise CodecError(f"the value holds more than {self.limits.max_total_bytes} bytes")

    def _pack(self, value: object) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def _buffer(
        self, raw: memoryview, fds: list[int], tensor: Any = None, *, address: int = 0, owner: Any = None
    ) -> bytes | int | list[int] | dict[str, int]:
        """Inline bytes, the index of a sealed memfd, ``[index, offset]`` of a region of the transfer buffer, or
        ``{"remote": address}`` of memory the receiver reads out of this process (``owner`` holds it)."""
        if raw.nbytes < self.limits.shm_threshold:
            return raw.tobytes()
        if self.remote_read and address and owner is not None:
            self.pinned.append(owner)  # alive until the receiver's next message: by then it has read it
            return {"remote": address}
        region = self._transfer_region(raw, fds, tensor)
        if region is not None:
            return region
        if len(fds) >= self.limits.max_fds:
            raise CodecError(f"the value needs more than {self.limits.max_fds} shared-memory buffers")
        fds.append(sealed_memfd_from(raw))
        return len(fds) - 1

    def _transfer_region(self, raw: memoryview, fds: list[int], tensor: Any) -> list[int] | None:
        offset = _round_up(self._transfer_used, _REGION_ALIGN)
        end = offset + raw.nbytes
        if end > self.transfer_max:
            return None
        self._transfer_wanted = max(self._transfer_wanted, end)
        # At a message's first buffer the buffer may grow to what the largest message so far wanted.
        if self._transfer is None or self._transfer.capacity < (end if offset else self._transfer_wanted):
            if offset:  # earlier buffers of this message are already in it: this one goes sealed this time
                self._transfer_used = end
                return None
            # Grown only between messages, never under a region this message already announced.
            if self._transfer is not None:
                self._transfer.close()
                self._transfer = None
            self._transfer = TransferBuffer(_round_up(self._transfer_wanted, _TRANSFER_ROUND))
        if self._transfer_index is None:
            if len(fds) >= self.limits.max_fds:
                return None
            fds.append(os.dup(self._transfer.fd))
            self._transfer_index = len(fds) - 1
        self._transfer.write(offset, raw, tensor)
        self._transfer_used = end
        return [self._transfer_index, offset]

    def _convert(self, value: object, depth: int, fds: list[int]) -> object:
        if depth > self.limits.max_depth:
            raise CodecError(f"the value is nested deeper than {self.limits.max_depth} levels")
        # Exact plain types first, counted inline: every call and every step callback pays this walk (the
        # checks are the same as in _count; only the order of the type tests differs).
        self._items += 1
        if self._items > self.limits.max_items:
            raise CodecError(f"the value has more than {self.limits.max_items} items")
        kind = type(value)
        if kind is str or kind is bytes:
            self._bytes += len(value)  # type: ignore[arg-type]
            if self._bytes > self.limits.max_total_bytes:
                raise CodecError(f"the value holds more than {self.limits.max_total_bytes} bytes")
            return value
        if kind is dict:
            converted_plain: dict[str, object] = {}
            for key, item in value.items():  # type: ignore[attr-defined]
                if not isinstance(key, str):
                    raise CodecError(f"a mapping key of type {type(key).__name__} cannot cross; use str keys")
                converted_plain[key] = self._convert(item, depth + 1, fds)
            return converted_plain
        if kind is list:
            return [self._convert(item, depth + 1, fds) for item in value]  # type: ignore[attr-defined]
        if kind is int:
            if not _MIN_INT <= value <= _MAX_INT:  # type: ignore[operator]
                raise CodecError("an integer does not fit in 64 bits")
            return value
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            if not _MIN_INT <= value <= _MAX_INT:
                raise CodecError("an integer does not fit in 64 bits")
            return int(value)
        if isinstance(value, str | bytes):
            self._count(nbytes=len(value))
            return str(value) if isinstance(value, str) else bytes(value)
        if isinstance(value, bytearray | memoryview):
            self._count(nbytes=len(value))
            return bytes(value)
        if isinstance(value, tuple):
            items = [self._convert(item, depth + 1, fds) for item in value]
            return msgpack.ExtType(Ext.TUPLE, self._pack(items))
        if isinstance(value, list):
            return [self._convert(item, depth + 1, fds) for item in value]
        if _is_base_output(value):
            # Every field, None ones too: a rebuilt output needs them all (``nsfw_content_detected=None``).
            fields = {str(k): self._convert(v, depth + 1, fds) for k, v in output_fields(value).items()}
            return msgpack.ExtType(Ext.OUTPUT, self._pack([type(value).__name__, fields]))
        if isinstance(value, dict) and type(value) is not dict and library_objects.is_frozen_dict(value):
            config = {str(k): self._convert(v, depth + 1, fds) for k, v in value.items()}
            return msgpack.ExtType(Ext.CONFIG, self._pack(config))
        if isinstance(value, dict):
            converted: dict[str, object] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise CodecError(f"a mapping key of type {type(key).__name__} cannot cross; use str keys")
                converted[key] = self._convert(item, depth + 1, fds)
            return converted
        if isinstance(value, np.ndarray | np.generic):
            return self._ndarray(value, fds)
        torch = _torch_loaded()
        if torch is not None:
            if isinstance(value, torch.Tensor):
                return self._tensor(value, fds)
            if isinstance(value, torch.Generator):
                # The full state crosses (None: reseed, see ipc.rng); the slot lets the receiver keep one
                # generator passed twice as one.
                slot = self._generator_slots.setdefault(id(value), len(self._generator_slots))
                payload = [*crossing_payload(value), slot]
                return msgpack.ExtType(Ext.GENERATOR, self._pack(payload))
            if isinstance(value, torch.dtype):
                return msgpack.ExtType(Ext.DTYPE, self._pack(str(value).removeprefix("torch.")))
            if isinstance(value, torch.device):
                return msgpack.ExtType(Ext.DEVICE, self._pack(str(value)))
        image_class = _pil_image_class()
        if image_class is not None and isinstance(value, image_class):
            return self._image(value, fds)
        if self.fallback is not None:
            replacement = self.fallback(value)
            if isinstance(replacement, ExtReplacement):
                replaced = self._convert(replacement.payload, depth + 1, fds)
                return msgpack.ExtType(replacement.code, self._pack(replaced))
            return replacement
        raise CodecError(f"a value of type {type(value).__name__} cannot cross to the worker; pass data only")

    def _ndarray(self, value: np.ndarray | np.generic, fds: list[int]) -> msgpack.ExtType:
        scalar = isinstance(value, np.generic)
        array = np.asarray(value)
        if array.dtype.name not in NUMPY_DTYPES:
            raise CodecError(f"numpy dtype {array.dtype} is not on the allow list")
        if array.ndim > self.limits.max_ndim:
            raise CodecError(f"an array has more than {self.limits.max_ndim} dimensions")
        shape = list(array.shape)
        flat = np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("="))
        self._count(nbytes=flat.nbytes)
        raw = memoryview(flat.view(np.uint8))  # type: ignore[arg-type]
        address = flat.ctypes.data if self.remote_read and raw.nbytes >= self.limits.shm_threshold else 0
        data = self._buffer(raw, fds, address=address, owner=flat)
        return msgpack.ExtType(Ext.NDARRAY, self._pack([flat.dtype.name, shape, data, scalar]))

    def _tensor(self, value: Any, fds: list[int]) -> msgpack.ExtType:
        torch = _torch()
        name = _torch_dtype_name(value.dtype)
        if name not in TORCH_DTYPES:
            raise CodecError(f"torch dtype {name} is not on the allow list")
        where = value.device
        if value.layout != torch.strided or value.is_quantized or where.type == "meta":
            raise CodecError("only dense tensors with data can cross")
        if value.dim() > self.limits.max_ndim:
            raise CodecError(f"a tensor has more than {self.limits.max_ndim} dimensions")
        device = "cpu" if where.type == "cpu" else str(where)
        flat = value.detach() if value.requires_grad else value
        if flat.is_conj() or flat.is_neg():  # lazy views: materialise their values (skipped: a call each)
            flat = flat.resolve_conj().resolve_neg()
        if device != "cpu":
            flat = flat.to("cpu")
        if flat.dim() != 1 or not flat.is_contiguous():  # each call costs a microsecond on a small tensor
            flat = flat.contiguous().reshape(-1)
        flat_bytes = flat.view(torch.uint8) if flat.numel() else None
        raw = memoryview(flat_bytes.numpy()) if flat_bytes is not None else memoryview(b"")
        self._count(nbytes=raw.nbytes)
        address = flat_bytes.data_ptr() if flat_bytes is not None else 0
        data = self._buffer(raw, fds, flat_bytes, address=address, owner=flat_bytes)
        return msgpack.ExtType(Ext.TENSOR, self._pack([name, list(value.shape), data, device]))

    def _image(self, value: Any, fds: list[int]) -> msgpack.ExtType:
        if value.mode not in IMAGE_MODES:
            raise CodecError(f"PIL image mode {value.mode} is not on the allow list")
        raw = value.tobytes()
        self._count(nbytes=len(raw))
        data = self._buffer(memoryview(raw), fds)
        return msgpack.ExtType(Ext.IMAGE, self._pack([value.mode, value.size[0], value.size[1], data]))


class Decoder:
    """Rebuilds one message from msgpack bytes and the memfds that came with its frame.

    ``on_handle(payload)`` and ``on_callback(payload)`` rebuild the HANDLE and CALLBACK extensions (each side
    decides what a handle means); without them those extensions are a protocol error.
    """

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_handle: ExtDecoder | None = None,
        on_callback: ExtDecoder | None = None,
        on_library: ExtDecoder | None = None,
        tensor_device: Callable[[str], str] | None = None,
        transfer: TransferMappings | None = None,
        remote: RemoteMemory | None = None,
    ) -> None:
        self.limits = limits
        self.on_handle = on_handle
        self.on_callback = on_callback
        self.on_library = on_library
        self.tensor_device = tensor_device
        #: The generators of the last decoded message, by slot (the worker sends their states back), and the
        #: device each came from (a state is only meaningful on the same kind of device).
        self.generators: list[Any] = []
        self.generator_sources: list[str] = []
        #: Where regions of the peer's transfer buffer are accepted (the caller); ``None`` refuses them.
        self.transfer = transfer
        #: Reads announced regions of the peer's memory (the caller, once the worker's probe passed);
        #: ``None`` refuses them.
        self.remote = remote
        #: Pages for large received buffers, reused once nothing refers to them (see ReceivedPages).
        self.pages = ReceivedPages()

    def decode(self, body: bytes | bytearray, fds: list[int]) -> Any:
        self._items = 0
        self._bytes = 0
        self._fds = fds
        self._used: set[int] = set()
        self.generators = []
        self.generator_sources = []
        self._transfer_fds: set[int] = set()
        try:
            value = self._convert(self._unpack(body), 0)
            if len(self._used) != len(fds):
                raise CodecError(f"{len(fds) - len(self._used)} attached file descriptors were not referenced")
            return value
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _unpack(self, data: bytes | bytearray) -> Any:
        # Count containers while msgpack builds them: a frame of tiny containers costs ~80 bytes of
        # memory per byte of frame, so the item limit must stop it during, not after, the unpacking.
        built = 0
        limit = self.limits.max_items
        # Each value the limits count costs at most three msgpack containers (an array's metadata list and
        # shape list); the exact item count is checked on the decoded value below.
        container_limit = 3 * limit + 64

        def counted(container: Any) -> Any:
            nonlocal built
            built += 1
            if built > container_limit:
                raise _TooManyItems
            return container

        # Every container takes at least one byte, so a body shorter than the limit cannot exceed it:
        # unpack it without a Python call per container (the common, small message).
        hooks: dict[str, Any] = {} if len(data) <= container_limit else {"list_hook": counted, "object_hook": counted}
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_array_len=limit + 64,
                max_map_len=limit + 64,
                **hooks,
            )
        except _TooManyItems:
            raise CodecError(f"message has more than {limit} items") from None
        except ValueError as exc:
            if "exceeds max_" in str(exc):  # msgpack's own per-container length limits
                raise CodecError(f"message has more than {limit} items in one container") from None
            raise CodecError(f"malformed msgpack ({type(exc).__name__}: {exc})") from exc
        except (TypeError, msgpack.StackError) as exc:
            raise CodecError(f"malformed msgpack ({type(exc).__name__}: {exc})") from exc
        except RecursionError as exc:
            raise CodecError("malformed msgpack (nested too deeply)") from exc

    def _count(self, items: int = 0, nbytes: int = 0) -> None:
        self._items += items
        self._bytes += nbytes
        if self._items > self.limits.max_items:
            raise CodecError(f"the message has more than {self.limits.max_items} items")
        if self._bytes > self.limits.max_total_bytes:
            raise MessageTooLarge(f"the message holds more than {self.limits.max_total_bytes} bytes")

    def _convert(self, value: Any, depth: int) -> Any:
        if depth > self.limits.max_depth:
            raise CodecError(f"the message is nested deeper than {self.limits.max_depth} levels")
        self._items += 1
        if self._items > self.limits.max_items:
            raise CodecError(f"the message has more than {self.limits.max_items} items")
        kind = type(value)
        if kind is str or kind is bytes:
            self._bytes += len(value)
            if self._bytes > self.limits.max_total_bytes:
                raise MessageTooLarge(f"the message holds more than {self.limits.max_total_bytes} bytes")
            return value
        if kind is int or kind is bool or kind is float or value is None:
            return value
        if kind is list:
            return [self._convert(item, depth + 1) for item in value]
        if kind is dict:
            return {key: self._convert(item, depth + 1) for key, item in value.items()}
        if isinstance(value, str | bytes):
            self._count(nbytes=len(value))
            return value
        if isinstance(value, msgpack.ExtType):
            return self._ext(value.code, value.data, depth)
        if isinstance(value, msgpack.Timestamp):
            raise CodecError("msgpack timestamps are not part of the protocol")
        return value

    def _payload(self, data: bytes, shape: str) -> Any:
        payload = self._unpack(data)
        if shape == "list" and not isinstance(payload, list):
            raise CodecError("an extension payload is not a list")
        return payload

    def _ext(self, code: int, data: bytes, depth: int) -> Any:
        if code == Ext.TUPLE:
            return tuple(self._convert(item, depth + 1) for item in self._payload(data, "list"))
        if code == Ext.NDARRAY:
            return self._ndarray(self._payload(data, "list"))
        if code == Ext.TENSOR:
            return self._tensor(self._payload(data, "list"))
        if code == Ext.IMAGE:
            return self._image(self._payload(data, "list"))
        if code == Ext.OUTPUT:
            return self._output(self._payload(data, "list"), depth)
        if code == Ext.GENERATOR:
            return self._generator(self._payload(data, "list"))
        if code == Ext.DTYPE:
            name = self._payload(data, "any")
            if name not in TORCH_DTYPES:
                raise CodecError(f"torch dtype {name!r} is not on the allow list")
            return getattr(_torch(), name)
        if code == Ext.DEVICE:
            return _torch().device(self._device_name(self._payload(data, "any")))
        if code == Ext.HANDLE and self.on_handle is not None:
            return self.on_handle(code, self._payload(data, "any"))
        if code == Ext.CALLBACK and self.on_callback is not None:
            return self.on_callback(code, self._payload(data, "any"))
        if code == Ext.CONFIG:
            return self._config(self._payload(data, "any"), depth)
        if code == Ext.LIBRARY and self.on_library is not None:
            return self.on_library(code, self._convert(self._payload(data, "list"), depth + 1))
        raise CodecError(f"extension type {code} is not allowed here")

    def _device_name(self, name: object) -> str:
        if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name):
            raise CodecError(f"device name {name!r} is not allowed")
        return name

    def _shape(self, shape: object) -> tuple[int, ...]:
        if (
            not isinstance(shape, list)
            or len(shape) > self.limits.max_ndim
            or not all(_is_int(dim) and 0 <= dim < 2**48 for dim in shape)
        ):
            raise CodecError("an array shape is malformed")
        return tuple(shape)

    def _bytes_of(self, data: object, nbytes: int) -> tuple[Any, str]:
        """The bulk bytes of an array-like, after the announced size passed the message's byte limit.

        Returns ``(bytes, "inline")``, ``(mapping, "sealed")`` for a checked, privately mapped sealed memfd
        the result may keep, or ``(memoryview, "shared")`` for a region of the peer's transfer buffer, which
        the caller must copy exactly once, into memory of its own, before looking at it.
        """
        self._count(nbytes=nbytes)
        if isinstance(data, bytes):
            if len(data) != nbytes:
                raise CodecError(f"inline buffer holds {len(data)} bytes, not the announced {nbytes}")
            return data, "inline"
        if _is_int(data) and 0 <= data < len(self._fds):
            if data in self._used:
                raise CodecError("one shared-memory buffer was referenced twice")
            self._used.add(data)
            try:
                return map_sealed_memfd(self._fds[data], nbytes), "sealed"
            except (SharedMemoryError, OSError, ValueError) as exc:
                raise CodecError(str(exc)) from exc
        if isinstance(data, list) and len(data) == 2 and all(type(item) is int for item in data):
            return self._transfer_region(data[0], data[1], nbytes), "shared"
        if isinstance(data, dict) and len(data) == 1 and type(data.get("remote")) is int:
            if self.remote is None:
                raise CodecError("regions of the peer's memory are not accepted in this direction")
            if nbytes < self.limits.shm_threshold:
                raise CodecError("a buffer below the shared-memory threshold must be sent inline")
            return data["remote"], "remote"
        raise CodecError("an array's data is neither inline bytes nor an attached memfd")

    def _read_remote(self, address: int, nbytes: int) -> Any:
        """Pages of our own holding ``nbytes`` read at ``address`` in the peer (its memory is never kept)."""
        remote = self.remote
        if remote is None:  # _bytes_of refuses such regions first; kept for readers of this method alone
            raise CodecError("regions of the peer's memory are not accepted in this direction")
        pages = self.pages.take(nbytes)
        with memoryview(pages) as view:
            landing = np.frombuffer(view, dtype=np.uint8, count=nbytes)
            try:
                remote.read_into(landing.ctypes.data, address, nbytes)
            except RemoteReadError as exc:
                raise CodecError(str(exc)) from None
            finally:
                del landing
        self.pages.keep(pages)
        return pages

    def _transfer_region(self, index: int, offset: int, nbytes: int) -> memoryview:
        if self.transfer is None:
            raise CodecError("transfer-buffer regions are not accepted in this direction")
        if not 0 <= index < len(self._fds) or (index in self._used and index not in self._transfer_fds):
            raise CodecError("a transfer-buffer region names a descriptor that is missing or already used")
        if offset < 0:
            raise CodecError("a transfer-buffer region has a negative offset")
        self._used.add(index)
        self._transfer_fds.add(index)
        try:
            mapping = self.transfer.map(self._fds[index], offset + nbytes)
        except (SharedMemoryError, OSError, ValueError) as exc:
            raise CodecError(str(exc)) from exc
        return memoryview(mapping)[offset : offset + nbytes]

    def _ndarray(self, payload: list[Any]) -> Any:
        if len(payload) != 4 or not isinstance(payload[0], str) or payload[0] not in NUMPY_DTYPES:
            raise CodecError("an ndarray extension is malformed or its dtype is not allowed")
        dtype = np.dtype(payload[0])
        shape = self._shape(payload[1])
        count = int(np.prod(shape, dtype=object)) if shape else 1
        buffer, kind = self._bytes_of(payload[2], count * dtype.itemsize)
        if kind == "remote":
            buffer, kind = self._read_remote(buffer, count * dtype.itemsize), "sealed"  # our own pages
        if kind == "shared":
            with buffer:
                pages = self.pages.take(buffer.nbytes)
                with memoryview(pages) as target:
                    target[: buffer.nbytes] = buffer  # one read of the shared region, into our own pages
            self.pages.keep(pages)
            buffer, kind = pages, "sealed"  # our own pages now, kept like a mapping
        array = np.frombuffer(buffer, dtype=dtype, count=count) if count else np.empty(0, dtype=dtype)
        array = array.reshape(shape) if kind == "sealed" else array.reshape(shape).copy()
        return array[()] if payload[3] is True and array.ndim == 0 else array

    def _tensor(self, payload: list[Any]) -> Any:
        torch = _torch()
        if len(payload) != 4 or payload[0] not in TORCH_DTYPES:
            raise CodecError("a tensor extension is malformed or its dtype is not allowed")
        dtype = getattr(torch, payload[0])
        shape = self._shape(payload[1])
        device = self._device_name(payload[3])
        count = 1
        for dim in shape:
            count *= dim
        itemsize = dtype.itemsize
        buffer, kind = self._bytes_of(payload[2], count * itemsize)
        if kind == "remote":
            buffer, kind = self._read_remote(buffer, count * itemsize), "sealed"  # our own pages, kept as a mapping
        if count == 0:
            if kind == "shared":
                buffer.release()
            tensor = torch.empty(shape, dtype=dtype)
        elif kind == "shared":
            with buffer:
                pages = self.pages.take(buffer.nbytes)
                # One read of the shared region; only the copy is used after this.
                if buffer.nbytes >= PARALLEL_COPY_BYTES:
                    received = torch.frombuffer(pages, dtype=torch.uint8, count=buffer.nbytes)
                    received.copy_(torch.frombuffer(buffer, dtype=torch.uint8))
                    del received
                else:
                    with memoryview(pages) as own:
                        own[: buffer.nbytes] = buffer
            tensor = torch.frombuffer(pages, dtype=dtype, count=count)
            self.pages.keep(pages)
        else:
            tensor = torch.frombuffer(buffer if kind == "sealed" else bytearray(buffer), dtype=dtype, count=count)
        if len(shape) != 1:  # frombuffer gives the flat shape; a reshape costs more than the rest of a small decode
            tensor = tensor.reshape(shape)
        target = self.tensor_device(device) if self.tensor_device is not None else "cpu"
        return tensor if target == "cpu" else tensor.to(target)

    def _image(self, payload: list[Any]) -> Any:
        from PIL import Image

        if (
            len(payload) != 4
            or not isinstance(payload[0], str)
            or payload[0] not in IMAGE_MODES
            or not _is_int(payload[1])
            or not _is_int(payload[2])
            or not 0 < payload[1] <= 1 << 16
            or not 0 < payload[2] <= 1 << 16
        ):
            raise CodecError("an image extension is malformed or its mode is not allowed")
        mode, width, height = payload[0], payload[1], payload[2]
        expected = _image_row_bytes(mode, width) * height
        buffer, kind = self._bytes_of(payload[3], expected)
        try:
            # frombytes copies the pixels once into the image's own memory, straight from the inline bytes,
            # the private mapping or the shared region (read once, like a tensor's).
            return Image.frombytes(mode, (width, height), buffer)
        except ValueError as exc:
            raise CodecError(f"image data does not match its mode and size ({exc})") from exc
        finally:
            if kind == "shared":
                buffer.release()
            elif isinstance(buffer, mmap.mmap):
                buffer.close()

    def _output(self, payload: list[Any], depth: int) -> Any:
        if len(payload) != 2 or not isinstance(payload[0], str) or not isinstance(payload[1], dict):
            raise CodecError("an output extension is malformed")
        type_name = payload[0] if _IDENTIFIER.match(payload[0]) else "UnnamedOutput"
        for key in payload[1]:
            if not (isinstance(key, str) and key.isidentifier() and not key.startswith("_")):
                raise CodecError(f"an output field name {str(key)[:40]!r} is not a public identifier")
        fields = {key: self._convert(item, depth + 1) for key, item in payload[1].items()}
        location = OUTPUT_CLASSES.get(type_name)
        # diffusers' BaseOutput turns the keys of a dict in its first field into attributes, and transformers'
        # ModelOutput those of a list of pairs too: never build one unless its first field is a plain value.
        first = next(iter(fields.values()), None)
        # The real class only where its library is already imported here: a script that names the class (or
        # checks isinstance) has imported it; one that never does should not pay for diffusers in its own
        # process (2.5 s to import, 0.5 s more at exit and hundreds of MiB, measured): the worker holds it.
        if location is not None and location[0].split(".")[0] in sys.modules and _inert_first_field(location[0], first):
            try:
                return _output_class(type_name)(**fields)
            except (ImportError, AttributeError, TypeError):
                pass
        return GenericOutput(type_name, fields)

    def _config(self, payload: Any, depth: int) -> Any:
        if not isinstance(payload, dict) or not all(isinstance(key, str) for key in payload):
            raise CodecError("a config extension is malformed")
        fields = {key: self._convert(item, depth + 1) for key, item in payload.items()}
        return library_objects.frozen_dict(fields)

    def _generator(self, payload: list[Any]) -> Any:
        _torch()
        if (
            len(payload) != 4
            or not _is_int(payload[0])
            or not 0 <= payload[0] <= _MAX_INT
            or not _is_int(payload[3])
            or not 0 <= payload[3] <= len(self.generators)
        ):
            raise CodecError("a generator extension is malformed")
        if payload[3] < len(self.generators):
            return self.generators[payload[3]]  # the same generator passed twice stays one generator
        device = self._device_name(payload[1])
        target = self.tensor_device(device) if self.tensor_device is not None else "cpu"
        try:
            generator = restore_generator(payload[0], device, payload[2], target)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        self.generators.append(generator)
        self.generator_sources.append(device)
        return generator
