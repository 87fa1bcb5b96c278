"""Large tensors and arrays from the worker in one copy: the caller reads them out of the worker's memory.

The worker announces where a reply's bulk bytes lie in its own address space and keeps them alive until the
caller's next message; the caller copies them with ``process_vm_readv(2)`` straight into pages of its own, and
only then builds the tensor. That is one copy, where a shared buffer needs two (the worker's copy in, the
caller's copy out), and nothing the caller keeps is shared with the worker afterwards.

Why it is safe (see SECURITY.md, "Tensors and arrays"):

* Data only crosses one way, into memory the caller allocated for exactly the announced size, after that size
  passed the reply's ``max_result_mb`` bound; the kernel checks every address against the worker's own
  mappings, and a short or failed read is a protocol violation.
* The read targets the worker by pid, and a pid can be reused once its process is gone. The caller holds a
  pidfd of the worker from its hello on, and accepts a read only if the worker is still alive afterwards: a
  process alive after the read was alive, under that pid, throughout it.
* The worker may change the bytes while they are read; that changes only what it answers, which it decides
  anyway. The caller makes no decision from them.

The read needs ptrace access to the worker (the worker's user namespace belongs to the caller). Where it is
refused (Yama, a non-dumpable worker) the hello's probe fails and the worker's transfer buffer is used instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import threading
from functools import lru_cache

#: Reads at least this large are split across two threads (each ``process_vm_readv`` releases the GIL).
PARALLEL_READ_BYTES = 64 * 1024 * 1024
#: One ``process_vm_readv`` call moves at most this much (the kernel may stop early at a mapping's end).
_READ_CHUNK = 1 << 30


class RemoteReadError(Exception):
    """The worker's memory could not be read as announced, or the worker was gone after the read."""


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


@lru_cache(maxsize=1)
def _process_vm_readv() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    function.restype = ctypes.c_ssize_t
    function.argtypes = (
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    )
    return function


class RemoteMemory:
    """Reads from one worker process; holds a pidfd of it so that a reused pid is never read from unnoticed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd: int | None = os.pidfd_open(pid)

    def alive(self) -> bool:
        if self._pidfd is None:
            return False
        # A pidfd polls readable once its process has exited.
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        return not readable

    def _read_range(self, destination: int, address: int, nbytes: int) -> None:
        read = _process_vm_readv()
        done = 0
        while done < nbytes:
            size = min(nbytes - done, _READ_CHUNK)
            local = _IoVec(destination + done, size)
            remote = _IoVec(address + done, size)
            got = read(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if got <= 0:
                error = ctypes.get_errno() if got < 0 else 0
                raise RemoteReadError(
                    f"{nbytes} bytes at {address:#x} of the worker could not be read "
                    f"({os.strerror(error) if error else 'nothing read'})"
                )
            done += got

    def read_into(self, destination: int, address: int, nbytes: int) -> None:
        """Copy ``nbytes`` at ``address`` in the worker to ``destination`` (caller memory of that size)."""
        if nbytes <= 0:
            return
        if address <= 0 or address + nbytes > 1 << 64:
            raise RemoteReadError(f"the announced worker address {address:#x} is not a valid user address")
        if not self.alive():
            raise RemoteReadError("the worker is gone; its memory cannot be read")
        if nbytes < PARALLEL_READ_BYTES:
            self._read_range(destination, address, nbytes)
        else:
            half = (nbytes // 2) & ~4095
            failures: list[BaseException] = []

            def second_half() -> None:
                try:
                    self._read_range(destination + half, address + half, nbytes - half)
                except BaseException as exc:
                    failures.append(exc)

            helper = threading.Thread(target=second_half, name="safeloader-remote-read", daemon=True)
            helper.start()
            try:
                self._read_range(destination, address, half)
            finally:
                helper.join()
            if failures:
                raise failures[0]
        if not self.alive():
            raise RemoteReadError("the worker exited while its memory was read; the data is discarded")

    def probe(self, address: object, expected: object) -> bool:
        """Whether ``expected`` (the worker's hello cookie) can be read back at ``address``."""
        if not isinstance(address, int) or not isinstance(expected, bytes) or not 8 <= len(expected) <= 64:
            return False
        landing = ctypes.create_string_buffer(len(expected))
        try:
            self.read_into(ctypes.addressof(landing), address, len(expected))
        except RemoteReadError:
            return False
        return landing.raw == expected

    def close(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


def open_remote_memory(pid: int) -> RemoteMemory | None:
    """A reader for ``pid``, or ``None`` when this kernel or process cannot hold a pidfd for it."""
    try:
        return RemoteMemory(pid)
    except (OSError, AttributeError):
        return None
