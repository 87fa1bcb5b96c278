"""Hard limits every decoder applies to what the other side sends, in both directions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    #: Largest frame body (the msgpack bytes); bulk data above ``shm_threshold`` travels in memfds.
    max_frame_bytes: int = 64 * 1024 * 1024
    #: Nesting of containers (lists, maps, tuples, outputs) in one message.
    max_depth: int = 48
    #: Containers plus their items, summed over one message.
    max_items: int = 1_000_000
    #: Bytes of arrays, tensors, images and strings in one message, inline and in memfds together (the caller
    #: sets it from ``[sandbox] max_result_mb`` for the worker's replies).
    max_total_bytes: int = 16 * 1024 * 1024 * 1024
    #: File descriptors attached to one frame.
    max_fds: int = 64
    #: Arrays, tensors and images at least this large leave the frame: through the worker's transfer buffer
    #: or a sealed memfd (see :mod:`safeloader.ipc.shm`).
    shm_threshold: int = 1024 * 1024
    #: Dimensions of one array or tensor.
    max_ndim: int = 32


DEFAULT_LIMITS = Limits()
