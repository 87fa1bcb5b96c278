"""Frames over a socketpair: sizes, attached fds, truncation, timeouts."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from safeloader.ipc.channel import Channel
from safeloader.ipc.codec import Decoder, Encoder
from safeloader.ipc.framing import FrameError, FrameTimeout, PeerClosed, recv_frame, send_frame
from safeloader.ipc.limits import Limits


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield left, right
    left.close()
    right.close()


def test_frames_and_fds_round_trip(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    read_end, write_end = os.pipe()
    send_frame(left, b"hello", [write_end])
    send_frame(left, b"")
    body, fds = recv_frame(right)
    assert bytes(body) == b"hello" and len(fds) == 1
    os.write(fds[0], b"!")
    assert os.read(read_end, 1) == b"!"
    for fd in (*fds, read_end, write_end):
        os.close(fd)
    assert recv_frame(right) == (bytearray(), [])


def test_large_frame_arrives_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    import threading

    payload = os.urandom(3 * 1024 * 1024)
    sender = threading.Thread(target=send_frame, args=(left, payload))
    sender.start()
    body, _fds = recv_frame(right)
    sender.join()
    assert body == payload


def test_oversized_frames_are_refused_both_ways(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    limits = Limits(max_frame_bytes=100)
    with pytest.raises(FrameError):
        send_frame(left, b"x" * 101, limits=limits)
    left.sendall(struct.pack(">IB", 2**31, 0))
    with pytest.raises(FrameError, match="exceeds"):
        recv_frame(right, limits=limits)


def test_fd_count_mismatch(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">IB", 1, 2) + b"x")  # announces two fds, carries none
    with pytest.raises(FrameError, match="announced"):
        recv_frame(right)


def test_truncated_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">IB", 10, 0) + b"abc")
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(FrameError, match="closed after"):
        recv_frame(right)


def test_eof_between_frames_and_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    started = time.monotonic()
    with pytest.raises(FrameTimeout):
        recv_frame(right, deadline=time.monotonic() + 0.2)
    assert time.monotonic() - started < 2
    left.close()
    with pytest.raises(PeerClosed):
        recv_frame(right)


def test_too_many_fds_are_closed_and_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    read_end, write_end = os.pipe()
    send_frame(left, b"x", [write_end] * 5)
    with pytest.raises(FrameError):
        recv_frame(right, limits=Limits(max_fds=2))
    os.close(write_end)
    assert os.read(read_end, 1) == b""  # every received duplicate was closed, so the pipe is at EOF
    os.close(read_end)


@pytest.mark.parametrize("with_deadline", [True, False])
def test_polling_receive_falls_back_to_sleeping(pair: tuple[socket.socket, socket.socket], with_deadline: bool) -> None:
    """A frame that comes after the polling window still arrives (by select, or a blocking read), fds too."""
    left, right = pair
    read_end, write_end = os.pipe()
    timer = threading.Timer(0.1, send_frame, args=(left, b"late", [write_end]))
    timer.start()
    deadline = time.monotonic() + 10 if with_deadline else None
    body, fds = recv_frame(right, deadline=deadline, spin_s=0.001)
    timer.join()
    assert bytes(body) == b"late" and len(fds) == 1
    for fd in (*fds, read_end, write_end):
        os.close(fd)


def test_polling_receive_keeps_its_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    _left, right = pair
    started = time.monotonic()
    with pytest.raises(FrameTimeout):
        recv_frame(right, deadline=started + 0.2, spin_s=0.05)
    assert 0.2 <= time.monotonic() - started < 2


def test_channel_polls_only_while_the_peer_answers_fast(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    channel = Channel(right, Encoder(), Decoder())
    channel.spin_s = 0.05
    sender = Channel(left, Encoder(), Decoder())
    sender.send({"op": "fast"})
    assert channel.recv(time.monotonic() + 5)["op"] == "fast" and channel._answers_fast
    timer = threading.Timer(0.2, sender.send, args=({"op": "slow"},))
    timer.start()
    assert channel.recv(time.monotonic() + 5)["op"] == "slow"
    timer.join()
    assert not channel._answers_fast  # the next receive sleeps at once
    sender.send({"op": "fast again"})
    assert channel.recv(time.monotonic() + 5)["op"] == "fast again" and channel._answers_fast


def test_channel_does_not_poll_after_a_long_turn_of_its_own(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that just ran a long call (or a caller busy between calls) sleeps at once: no spinning
    neighbour for the other side's cores."""
    from safeloader.ipc import channel as channel_module

    left, right = pair
    spins: list[float] = []
    real_recv_frame = channel_module.recv_frame

    def recording_recv_frame(*args: object, **kwargs: object) -> object:
        spins.append(float(kwargs["spin_s"]))  # type: ignore[arg-type]
        return real_recv_frame(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(channel_module, "recv_frame", recording_recv_frame)
    channel = Channel(right, Encoder(), Decoder())
    channel.spin_s = 0.01
    sender = Channel(left, Encoder(), Decoder())
    for _ in range(2):
        sender.send({"op": "quick"})
        channel.recv(time.monotonic() + 5)
    time.sleep(0.1)  # this side's own turn: ten windows
    sender.send({"op": "after a long turn"})
    channel.recv(time.monotonic() + 5)
    assert spins[1] == 0.01 and spins[2] == 0
