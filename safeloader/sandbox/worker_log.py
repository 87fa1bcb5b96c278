"""The worker's stdout/stderr: read by the caller through a pipe into a bounded ring buffer.

A file on disk would let the worker fill the caller's disk, and a capped file would keep the *first*
bytes — a worker that prints 100 MB before it raises would hide its real error. The ring keeps only the
last :data:`TAIL_BYTES`, so ``WorkerCrashed`` always shows the worker's final lines whatever came first.
"""

from __future__ import annotations

import os
import threading

#: Bytes of the worker's output kept for error messages (the newest ones).
TAIL_BYTES = 64 * 1024
_READ_CHUNK = 1 << 16


class OutputTail:
    """Owns a pipe: the launcher and worker write to :attr:`write_fd`; a daemon thread keeps the tail."""

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self.limit = limit
        self.total_bytes = 0
        self._buffer = bytearray()
        self._lock = threading.Lock()
        read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self._reader = threading.Thread(target=self._drain, args=(read_fd,), name="safeloader-worker-log", daemon=True)
        self._reader.start()

    def _drain(self, read_fd: int) -> None:
        try:
            while chunk := os.read(read_fd, _READ_CHUNK):
                with self._lock:
                    self.total_bytes += len(chunk)
                    self._buffer += chunk
                    if len(self._buffer) > self.limit:
                        del self._buffer[: len(self._buffer) - self.limit]
        except OSError:
            pass
        finally:
            os.close(read_fd)

    def close_write_end(self) -> None:
        """Drop the caller's copy of the write end once the launcher holds its own."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def wait_for_end(self, timeout: float) -> None:
        """Wait until every writer has closed the pipe (the worker and launcher exited), at most ``timeout``."""
        self._reader.join(timeout)

    def text(self, lines: int) -> str:
        """The last ``lines`` lines kept, decoded leniently (a line cut by the ring loses its start)."""
        with self._lock:
            data = bytes(self._buffer)
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
