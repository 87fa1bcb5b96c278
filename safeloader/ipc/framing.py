"""Length-prefixed frames over a connected AF_UNIX stream socket, with file descriptors riding along.

A frame is a 5-byte header (big-endian body length, number of attached fds) followed by the body. The fds
travel as SCM_RIGHTS on the header's first byte, so they are never separated from the frame they belong to.
Anything that breaks these rules raises :class:`FrameError`; the caller turns that into a protocol error and
kills the peer.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from safeloader.ipc.limits import DEFAULT_LIMITS, Limits

_HEADER = struct.Struct(">IB")
#: Without a deadline the socket simply blocks; with one, each call returns at once and select() waits.
_NO_WAIT = socket.MSG_DONTWAIT


class FrameError(Exception):
    """The peer broke the framing rules (size, fd count, truncated frame)."""


class PeerClosed(Exception):
    """The peer closed the connection (or died) between frames."""


class FrameTimeout(Exception):
    """No complete frame arrived before the deadline."""


def send_frame(
    sock: socket.socket,
    body: bytes | memoryview,
    fds: Sequence[int] = (),
    *,
    limits: Limits = DEFAULT_LIMITS,
    deadline: float | None = None,
) -> None:
    """Send one frame; with ``deadline`` (``time.monotonic()``), a peer that stops reading raises FrameTimeout.

    Header and body leave in one ``sendmsg`` (one system call and one wake-up of the peer for a small frame);
    the fds ride on that call, so they arrive with the header's first byte.
    """
    if len(body) > limits.max_frame_bytes:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {limits.max_frame_bytes}-byte limit")
    if len(fds) > min(limits.max_fds, 255):
        raise FrameError(f"{len(fds)} file descriptors exceed the limit of {limits.max_fds} per frame")
    header = _HEADER.pack(len(body), len(fds))
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    total = _HEADER.size + len(body)
    sent = _send_some(sock, [header, body] if len(body) else [header], ancillary, deadline)
    if sent < total:  # the socket buffer filled up: the rest follows without the fds
        if sent < _HEADER.size:
            _send_all(sock, memoryview(header)[sent:], deadline)
            sent = _HEADER.size
        _send_all(sock, memoryview(body)[sent - _HEADER.size :], deadline)


def _send_some(sock: socket.socket, buffers: list[Any], ancillary: list[Any], deadline: float | None) -> int:
    while True:
        try:
            return sock.sendmsg(buffers, ancillary, _NO_WAIT if deadline is not None else 0)
        except BlockingIOError:
            _wait(sock, deadline, writing=True)


def _send_all(sock: socket.socket, data: memoryview, deadline: float | None) -> None:
    while data.nbytes:
        data = data[_send_some(sock, [data], [], deadline) :]


def _wait(sock: socket.socket, deadline: float | None, *, writing: bool = False) -> None:
    """Wait until ``sock`` is readable (or writable); FrameTimeout once ``deadline`` has passed."""
    waiting: tuple[list[socket.socket], list[socket.socket], list[socket.socket]] = (
        ([], [sock], []) if writing else ([sock], [], [])
    )
    if deadline is None:
        select.select(*waiting)
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not any(select.select(*waiting, remaining)):
        raise FrameTimeout()


def _recv_some(
    sock: socket.socket, size: int, fd_space: int, deadline: float | None, spin_until: float | None = None
) -> Any:
    # Try first, wait only when nothing is there: a reply that has already arrived costs one system call.
    # Until ``spin_until`` keep trying without sleeping: a reply that comes within tens of microseconds is then
    # read on a CPU that never went idle (measured: a sleep and wake-up cost about as much as the reply itself).
    while True:
        try:
            waits = deadline is not None or spin_until is not None
            return sock.recvmsg(size, fd_space, _NO_WAIT if waits else 0)
        except BlockingIOError:
            if spin_until is not None and time.monotonic() < spin_until:
                continue
            spin_until = None
            if deadline is not None:
                _wait(sock, deadline)


def _recv_some_into(sock: socket.socket, view: memoryview, fd_space: int, deadline: float | None) -> Any:
    while True:
        try:
            return sock.recvmsg_into([view], fd_space, _NO_WAIT if deadline is not None else 0)
        except BlockingIOError:
            _wait(sock, deadline)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds


def recv_frame(
    sock: socket.socket, *, deadline: float | None = None, limits: Limits = DEFAULT_LIMITS, spin_s: float = 0.0
) -> tuple[bytearray, list[int]]:
    """Receive one frame; returns its body and the fds attached to it (the caller owns and closes them)."""
    fd_space = socket.CMSG_SPACE(min(limits.max_fds, 255) * array.array("i").itemsize)
    header = bytearray()
    fds: list[int] = []
    try:
        spin_until = time.monotonic() + spin_s if spin_s > 0 else None
        while len(header) < _HEADER.size:
            data, ancdata, flags, _addr = _recv_some(
                sock, _HEADER.size - len(header), fd_space, deadline, spin_until if not header else None
            )
            fds.extend(_fds_from_ancillary(ancdata))
            if flags & socket.MSG_CTRUNC:
                raise FrameError("too many file descriptors were attached to one frame")
            if not data:
                if header:
                    raise FrameError("the connection closed in the middle of a frame header")
                raise PeerClosed()
            if header and ancdata:
                raise FrameError("file descriptors arrived in the middle of a frame header")
            header.extend(data)
        length, fd_count = _HEADER.unpack(header)
        if length > limits.max_frame_bytes:
            raise FrameError(f"frame of {length} bytes exceeds the {limits.max_frame_bytes}-byte limit")
        if fd_count != len(fds) or fd_count > limits.max_fds:
            raise FrameError(f"frame announced {fd_count} file descriptors but carried {len(fds)}")
        body = bytearray(length)
        view = memoryview(body)
        got = 0
        while got < length:
            count, ancdata, _flags, _addr = _recv_some_into(sock, view[got:], fd_space, deadline)
            if ancdata:
                _close_all(_fds_from_ancillary(ancdata))
                raise FrameError("file descriptors arrived in the middle of a frame body")
            if not count:
                raise FrameError(f"the connection closed after {got} of {length} frame bytes")
            got += count
        return body, fds
    except BaseException:
        _close_all(fds)
        raise
