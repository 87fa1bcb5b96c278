"""Bulk bytes through shared memory, on two paths chosen by size (see SECURITY.md, "Tensors and arrays").

**Sealed memfds** — the caller keeps the sender's pages. The sender copies the bytes into a fresh memfd and
seals it (no write, no shrink, no grow, no further seal changes), so it can no longer change them once the
receiver has checked them; the receiver checks seals, size and that every page is really there, and maps it
``MAP_PRIVATE`` (copy-on-write pages of its own).

**A reusable transfer buffer** — the caller copies out once. The worker keeps one pre-faulted memfd (sealed
only against shrinking and growing, so it can never take pages away under the caller's reads) and writes each
reply's bulk bytes into it; the caller copies them into memory of its own and only then decodes them. The
worker can still change the buffer at any time, which changes nothing the caller holds: the caller reads each
region exactly once, into its own pages, and makes no decision from the shared bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import sys
from typing import Any

REQUIRED_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
#: Seals a transfer buffer must carry: its size is fixed, so reading it never faults past its end (SIGBUS).
TRANSFER_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_HUGE_PAGE = 2 * 1024 * 1024
#: Copies at least this large use torch's parallel copy; smaller ones a plain memmove, because entering an
#: OpenMP parallel region costs more than it saves there (and far more on a machine with busy cores).
PARALLEL_COPY_BYTES = 64 * 1024 * 1024


class SharedMemoryError(Exception):
    """A received memfd is not sealed as required, or is smaller (or sparser) than announced."""


def _require_pages(status: os.stat_result, needed: int, what: str) -> None:
    """Every page of ``needed`` bytes is allocated: a sparse memfd costs its sender nothing and would make the
    receiver allocate (and copy) every page it reads."""
    backed = status.st_blocks * 512
    if backed < needed:
        raise SharedMemoryError(
            f"the attached {what} announces {needed} bytes but only {backed} are backed by memory (a sparse file)"
        )


def sealed_memfd_from(buffer: memoryview) -> int:
    """Copy ``buffer`` into a new memfd, seal it, and return the fd (the caller closes it after sending)."""
    source = buffer.cast("B")
    size = source.nbytes
    fd = os.memfd_create("safeloader-ipc", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if size:
            # pwrite lets the kernel allocate and fill the pages in one pass (measured ~2x faster than
            # faulting them in through a shared mapping); there is never a writable mapping to unmap.
            os.ftruncate(fd, size)
            written = 0
            while written < size:
                written += os.pwrite(fd, source[written:], written)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_seals(fd: int, required: int, problem: str) -> None:
    """Refuse ``fd`` unless it is a memfd carrying every seal in ``required``."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise SharedMemoryError(f"the attached descriptor is not a sealable memfd ({exc.strerror})") from exc
    if seals & required != required:
        raise SharedMemoryError(f"{problem} (seals {seals:#x})")


def map_sealed_memfd(fd: int, size: int) -> mmap.mmap | bytes:
    """Check ``fd``'s seals, size and pages, and map ``size`` bytes of it copy-on-write; does not close ``fd``."""
    _require_seals(fd, REQUIRED_SEALS, "the attached memfd is not fully sealed")
    status = os.fstat(fd)
    if status.st_size != size:
        raise SharedMemoryError(f"the attached memfd holds {status.st_size} bytes, not the announced {size}")
    # Sealed against writes, so the page count checked here is the page count the mapping will see.
    _require_pages(status, size, "memfd")
    if size == 0:
        return b""
    # Writable but private: the receiver may modify its copy (copy-on-write, page by page); pages are
    # mapped lazily, because populating a writable private mapping would copy every page up front.
    return mmap.mmap(fd, size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)


def fresh_pages(nbytes: int) -> mmap.mmap:
    """Private anonymous memory for a received buffer, in transparent huge pages where the host allows it.

    A fresh 256 MiB destination in 4 KiB pages costs 65 536 page faults — several times the copy itself on
    a virtual machine; huge pages make that 128.
    """
    pages = mmap.mmap(-1, max(nbytes, 1), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            pages.madvise(mmap.MADV_HUGEPAGE)
    return pages


class ReceivedPages:
    """The receiver's pages for large received buffers, reused once nothing refers to them any more.

    A fresh destination costs a page fault per page (on the virtual machines measured, more than the copy
    itself); a loop that receives one large tensor per call and drops the previous one gets back the same,
    already-faulted pages, as a caching allocator would. Only exact sizes are reused, every byte of a reused
    buffer is overwritten, and at most ``keep`` buffers are remembered (the ones still in use cost nothing
    extra; a free one is held until the next large receive or until the session closes).
    """

    #: Buffers smaller than this are not worth remembering.
    MIN_BYTES = 1024 * 1024

    def __init__(self, keep: int = 2) -> None:
        self._keep = keep
        self._kept: list[mmap.mmap] = []

    def take(self, nbytes: int) -> mmap.mmap:
        """Pages for ``nbytes``: a remembered buffer nobody uses any more, else fresh ones."""
        size = max(_round_up_page(nbytes), 1)
        for index in range(len(self._kept)):  # not enumerate: its cached result tuple holds a reference
            pages = self._kept[index]
            # Referenced only by this list, the local name and getrefcount's argument: no tensor, array or
            # view holds it any more (each holds a reference for as long as it exports the buffer).
            if len(pages) == size and sys.getrefcount(pages) <= 3:
                del self._kept[index]
                if size > nbytes:
                    pages[nbytes:size] = bytes(size - nbytes)  # the tail is visible through the storage
                return pages
        return fresh_pages(size)

    def keep(self, pages: mmap.mmap) -> None:
        if len(pages) < self.MIN_BYTES or self._keep <= 0:
            return
        self._kept.append(pages)
        if len(self._kept) > self._keep:
            del self._kept[0]

    def clear(self) -> None:
        self._kept.clear()


def _round_up_page(nbytes: int) -> int:
    return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


class TransferBuffer:
    """The sender's reusable, pre-faulted shared buffer (the worker holds one; see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.fd = os.memfd_create("safeloader-transfer", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, capacity)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, TRANSFER_SEALS)
            # MAP_POPULATE allocates and maps every page now, once, instead of faulting each one per reply.
            self.mapping = mmap.mmap(
                self.fd, capacity, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, offset: int, source: memoryview, tensor: Any = None) -> None:
        """Copy ``source`` (or the flat uint8 ``tensor`` it views, with torch's parallel copy) to ``offset``."""
        size = source.nbytes
        if tensor is not None and size >= PARALLEL_COPY_BYTES:
            import torch

            target = torch.frombuffer(self.mapping, dtype=torch.uint8, count=size, offset=offset)
            target.copy_(tensor)
        else:
            self.mapping[offset : offset + size] = source.cast("B")

    def close(self) -> None:
        self.mapping.close()
        os.close(self.fd)


class TransferMappings:
    """The receiver's read mappings of the sender's transfer buffers, kept while the same buffer comes back.

    Mapping 256 MiB afresh for every reply would cost a page-table fault per page at the first read; the
    buffer's inode identifies it (the kept descriptor keeps the inode alive, so its number cannot be reused).
    """

    _KEEP = 2

    def __init__(self) -> None:
        self._by_inode: dict[tuple[int, int], tuple[int, mmap.mmap]] = {}

    def map(self, fd: int, needed: int) -> mmap.mmap:
        """Check ``fd`` as a transfer buffer holding at least ``needed`` bytes and return its mapping."""
        _require_seals(fd, TRANSFER_SEALS, "the attached transfer buffer can still change size")
        status = os.fstat(fd)
        if status.st_size < needed:
            raise SharedMemoryError(f"the attached transfer buffer holds {status.st_size} bytes, fewer than {needed}")
        # Checked at every reply (pages can be punched out between replies): reading a hole would make the
        # caller allocate the page. A hole punched after this check costs at most the buffer's own size.
        _require_pages(status, status.st_size, "transfer buffer")
        key = (status.st_dev, status.st_ino)
        kept = self._by_inode.get(key)
        if kept is not None and len(kept[1]) == status.st_size:
            return kept[1]
        if len(self._by_inode) >= self._KEEP:
            self.close()
        # Private and writable only so that torch can wrap it without a warning; nothing ever writes to it,
        # so no page is ever copied and every read sees the buffer's current page.
        mapping = mmap.mmap(fd, status.st_size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        self._by_inode[key] = (os.dup(fd), mapping)
        return mapping

    def close(self) -> None:
        for fd, mapping in self._by_inode.values():
            with contextlib.suppress(BufferError):
                mapping.close()
            os.close(fd)
        self._by_inode.clear()
