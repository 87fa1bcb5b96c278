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

from safeloader.ipc.limits import DEFAULT_LIMITS, Limits

_HEADER = struct.Struct(">IB")


class FrameError(Exception):
    """The peer broke the framing rules (size, fd count, truncated frame)."""


class PeerClosed(Exception):
    """The peer closed the connection (or died) between frames."""


class FrameTimeout(Exception):
    """No complete frame arrived before the deadline."""


def send_frame(
    sock: socket.socket, body: bytes | memoryview, fds: Sequence[int] = (), *, limits: Limits = DEFAULT_LIMITS
) -> None:
    if len(body) > limits.max_frame_bytes:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {limits.max_frame_bytes}-byte limit")
    if len(fds) > min(limits.max_fds, 255):
        raise FrameError(f"{len(fds)} file descriptors exceed the limit of {limits.max_fds} per frame")
    header = _HEADER.pack(len(body), len(fds))
    if fds:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([header], ancillary)
        if sent != len(header):
            sock.sendall(header[sent:])
    else:
        sock.sendall(header)
    if len(body):
        sock.sendall(body)


def _wait_readable(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        select.select([sock], [], [])
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
        raise FrameTimeout()


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
    sock: socket.socket, *, deadline: float | None = None, limits: Limits = DEFAULT_LIMITS
) -> tuple[bytearray, list[int]]:
    """Receive one frame; returns its body and the fds attached to it (the caller owns and closes them)."""
    fd_space = socket.CMSG_SPACE(min(limits.max_fds, 255) * array.array("i").itemsize)
    header = bytearray()
    fds: list[int] = []
    try:
        while len(header) < _HEADER.size:
            _wait_readable(sock, deadline)
            data, ancdata, flags, _addr = sock.recvmsg(_HEADER.size - len(header), fd_space)
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
            _wait_readable(sock, deadline)
            count, ancdata, _flags, _addr = sock.recvmsg_into([view[got:]], fd_space)
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
