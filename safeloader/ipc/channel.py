"""One side of the connection: frames plus the codec, so each end sends and receives whole messages."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from safeloader.ipc.codec import CodecError, Decoder, Encoder
from safeloader.ipc.framing import recv_frame, send_frame
from safeloader.ipc.limits import DEFAULT_LIMITS, Limits

#: This side's turn between two receives may last this many polling windows for the next receive to poll.
_QUICK_TURNS = 5


class Channel:
    def __init__(
        self, sock: socket.socket, encoder: Encoder, decoder: Decoder, *, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.sock = sock
        self.encoder = encoder
        self.decoder = decoder
        self.limits = limits
        #: How long a receive may keep polling before it sleeps (see :func:`safeloader.ipc.framing.recv_frame`);
        #: 0 never polls.
        self.spin_s = 0.0
        # Adaptive, as a spinning mutex is: poll only while the exchange is quick on both sides, that is while
        # the peer's last answer came within the window and this side's own turn since then (its work and its
        # send) took at most a few windows. A long pipeline call is then never followed by a spinning neighbour
        # (measured: a worker polling after each 25 ms call made the calls 15 % slower on two cores), and a
        # caller busy between calls never polls.
        self._answers_fast = True
        self._received_at = 0.0

    def send(self, message: dict[str, Any], deadline: float | None = None) -> None:
        """Send one message; with ``deadline`` (``time.monotonic()``) a peer that stops reading raises FrameTimeout."""
        body, fds = self.encoder.encode(message)
        if len(body) > self.limits.max_frame_bytes:
            for fd in fds:
                os.close(fd)
            limit = self.limits.max_frame_bytes
            raise CodecError(f"the message is {len(body)} bytes, over the {limit}-byte frame limit")
        try:
            send_frame(self.sock, body, fds, limits=self.limits, deadline=deadline)
        finally:
            for fd in fds:
                os.close(fd)

    def recv(self, deadline: float | None = None) -> dict[str, Any]:
        """Receive one message; raises FrameError/CodecError on anything malformed, PeerClosed on EOF."""
        if self.spin_s > 0:
            started = time.monotonic()
            quick = self._answers_fast and started - self._received_at <= _QUICK_TURNS * self.spin_s
            body, fds = recv_frame(self.sock, deadline=deadline, limits=self.limits, spin_s=self.spin_s if quick else 0)
            self._received_at = time.monotonic()
            self._answers_fast = self._received_at - started < self.spin_s
        else:
            body, fds = recv_frame(self.sock, deadline=deadline, limits=self.limits)
        # The peer sends only once it has read everything it was sent: memory announced for it to read (see
        # safeloader.ipc.remote_read) need not be kept any longer.
        self.encoder.pinned.clear()
        message = self.decoder.decode(body, fds)
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise CodecError("a message is not a map with an 'op' string")
        return message
