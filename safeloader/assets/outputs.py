"""Copy what a worker method wrote into its private folder back into the caller's destination folder.

The worker only sends names and bytes; the caller decides what becomes a file: regular files only (a
symlink, hardlink, device or fifo in the worker's folder refuses the whole copy), relative paths that stay
inside the destination, at most ``[sandbox] max_output_mb`` in all. Files are created by the caller, so
they are owned by the caller with its umask's permissions; they are written into a hidden folder inside
the destination first and moved into place only once every byte arrived, so a refused or failed copy
leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from safeloader.assets.resolve import check_relpath
from safeloader.errors import OutputRefused, PathTraversalError, ProtocolError
from safeloader.ipc import protocol

#: Files one destination may receive.
MAX_OUTPUT_FILES = 10_000
#: Bytes asked for in one collect request (a single larger file is asked for alone).
_BATCH_BYTES = 1 << 30
_MAX_NAME_BYTES = 4096
_STAGING_PREFIX = ".safeloader-incoming-"


class Requester(Protocol):
    def request(self, message: dict[str, Any], *, timeout_s: float, doing: str) -> Any: ...
    def close(self) -> None: ...


def _hostile(session: Requester, what: str) -> ProtocolError:
    session.close()
    return ProtocolError(
        f"the sandboxed worker answered with {what} while its files were copied back and was killed; "
        "the pipeline code is misbehaving — nothing was written, do not trust its output."
    )


def checked_listing(session: Requester, listing: object, dest: Path, cap_bytes: int) -> list[tuple[str, int]]:
    """The worker's ``[relpath, size, kind]`` entries, checked: regular files, safe names, within the cap."""
    if not isinstance(listing, list) or len(listing) > MAX_OUTPUT_FILES:
        if isinstance(listing, list):
            raise OutputRefused(
                f"the worker wrote {len(listing)} files for {dest}, more than the {MAX_OUTPUT_FILES} "
                "safeloader copies back; nothing was written — save fewer, larger files."
            )
        raise _hostile(session, "a malformed file listing")
    entries: list[tuple[str, int]] = []
    seen: set[str] = set()
    total = 0
    for entry in listing:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
            or entry[1] < 0
            or entry[2] not in ("file", "link", "hardlink", "other")
        ):
            raise _hostile(session, "a malformed file listing")
        relpath, size, kind = entry
        try:
            clean = check_relpath(relpath, what="file")
        except PathTraversalError:
            raise OutputRefused(
                f"the worker named a file {relpath[:200]!r} outside {dest}; nothing was written — "
                "the pipeline code is misbehaving, do not trust its output."
            ) from None
        if kind != "file":
            what = {"link": "a symlink", "hardlink": "a hard link", "other": "not a regular file"}[kind]
            raise OutputRefused(
                f"{clean} written by the worker for {dest} is {what}; only regular files are copied back, so "
                "nothing was written — the pipeline code is misbehaving, do not trust its output."
            )
        if len(clean.encode()) > _MAX_NAME_BYTES or clean in seen or clean.split("/")[0].startswith(_STAGING_PREFIX):
            raise _hostile(session, f"an unacceptable file name {clean[:100]!r}")
        seen.add(clean)
        total += size
        if total > cap_bytes:
            raise OutputRefused(
                f"the worker wrote more than the {cap_bytes // (1 << 20)} MiB that [sandbox] max_output_mb allows "
                f"for {dest}; nothing was written — raise max_output_mb if the output is expected to be that large."
            )
        entries.append((clean, size))
    return entries


def _batches(entries: list[tuple[str, int]], max_files: int) -> list[list[tuple[str, int]]]:
    batches: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    size = 0
    for entry in entries:
        if current and (len(current) >= max_files or size + entry[1] > _BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry[1]
    if current:
        batches.append(current)
    return batches


def _bytes_of(session: Requester, value: object, size: int, relpath: str) -> memoryview:
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 1 and value.size == size:
        return np.ascontiguousarray(value).data.cast("B")
    if isinstance(value, bytes) and len(value) == size:
        return memoryview(value)
    raise _hostile(session, f"contents for {relpath[:100]!r} that do not match its listed size")


def _move_into_place(staging: Path, dest_real: Path, relpaths: list[str]) -> None:
    for relpath in relpaths:
        target = dest_real.joinpath(*relpath.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(dest_real):
            raise OutputRefused(
                f"{relpath} would be written outside {dest_real} through a symlink already in the destination; "
                "remove that symlink or choose another folder."
            )
        if target.is_dir() and not target.is_symlink():
            raise OutputRefused(f"{target} is a folder and cannot be replaced by a file; choose another destination.")
        os.replace(staging.joinpath(*relpath.split("/")), target)


def copy_back(session: Requester, folder_id: int, dest: Path, *, cap_bytes: int, timeout_s: float) -> list[str]:
    """Copy every file of worker folder ``folder_id`` into ``dest`` (created if needed); returns the paths."""
    from safeloader.worker.assets import MAX_FILES_PER_REPLY

    doing = f"copying the files written for {dest} back"
    listing = session.request(
        {"op": protocol.COLLECT, "id": folder_id, "files": None}, timeout_s=timeout_s, doing=doing
    )
    entries = checked_listing(session, listing, dest, cap_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    dest_real = dest.resolve()
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=dest_real))
    try:
        for batch in _batches(entries, MAX_FILES_PER_REPLY):
            names = [relpath for relpath, _ in batch]
            contents = session.request(
                {"op": protocol.COLLECT, "id": folder_id, "files": names}, timeout_s=timeout_s, doing=doing
            )
            if not isinstance(contents, dict) or set(contents) != set(names):
                raise _hostile(session, "other files than were asked for")
            for relpath, size in batch:
                data = _bytes_of(session, contents[relpath], size, relpath)
                path = staging.joinpath(*relpath.split("/"))
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "xb") as handle:
                    handle.write(data)
            del contents
        _move_into_place(staging, dest_real, [relpath for relpath, _ in entries])
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return [relpath for relpath, _ in entries]
