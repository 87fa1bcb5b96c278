"""The worker's side of asset calls: private folders for files the caller hands over and for what it writes.

``stage`` writes the caller's verified bytes into a fresh folder under the worker's private ``TMPDIR``
(read-only files), ``output_dir`` makes an empty folder for a method to write into, ``collect`` lists what
was written there (regular files only; anything else is reported as what it is, for the caller to refuse)
and returns file contents, ``discard`` removes a folder. The caller re-checks everything it receives: this
module runs next to the pipeline code, which can replace it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from safeloader.ipc import protocol

#: Files returned by one ``collect`` reply (each may travel in its own memfd; a frame carries at most 64).
MAX_FILES_PER_REPLY = 32


class AssetRequestRefused(Exception):
    """A malformed asset request (unknown folder id, a path outside the folder)."""


def _inside(root: Path, relpath: object) -> Path:
    if not isinstance(relpath, str) or not relpath or relpath.startswith("/") or "\0" in relpath:
        raise AssetRequestRefused(f"{str(relpath)[:80]!r} is not a relative path")
    if any(part in ("", ".", "..") for part in relpath.split("/")):
        raise AssetRequestRefused(f"{relpath[:80]!r} is not a plain relative path")
    return root.joinpath(*PurePosixPath(relpath).parts)


class WorkerAssets:
    """Folders this worker made for the caller, by id."""

    OPS = frozenset({protocol.STAGE, protocol.OUTPUT_DIR, protocol.COLLECT, protocol.DISCARD})

    def __init__(self) -> None:
        self.folders: dict[int, Path] = {}
        self.next_id = 1

    def handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == protocol.STAGE:
            return self.stage(request.get("id"), request.get("files"))
        if op == protocol.OUTPUT_DIR:
            return self.new_folder("safeloader-output-")
        if op == protocol.COLLECT:
            names = request.get("files")
            root = self.folder(request.get("id"))
            return self.listing(root) if names is None else self.contents(root, names)
        if op == protocol.DISCARD:
            shutil.rmtree(self.folders.pop(self._id(request.get("id"))), ignore_errors=True)
            return None
        raise AssetRequestRefused(f"unknown asset request {op!r}")

    def _id(self, folder_id: object) -> int:
        if not isinstance(folder_id, int) or folder_id not in self.folders:
            raise AssetRequestRefused(f"{folder_id!r} does not name a folder of this worker")
        return folder_id

    def folder(self, folder_id: object) -> Path:
        return self.folders[self._id(folder_id)]

    def new_folder(self, prefix: str) -> dict[str, Any]:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir()))
        folder_id, self.next_id = self.next_id, self.next_id + 1
        self.folders[folder_id] = path
        return {"id": folder_id, "path": str(path)}

    def stage(self, folder_id: object, files: object) -> dict[str, Any]:
        """Write ``files`` (relative path → bytes) read-only into a new folder, or into folder ``folder_id``."""
        info = self.new_folder("safeloader-asset-") if folder_id is None else {"id": folder_id}
        root = self.folder(info["id"])
        if not isinstance(files, dict):
            raise AssetRequestRefused("staged files must be a map of relative paths to bytes")
        for relpath, data in files.items():
            target = _inside(root, relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            raw = data.view(np.uint8).data.cast("B") if isinstance(data, np.ndarray) else memoryview(bytes(data))
            with open(target, "xb") as handle:
                handle.write(raw)
            target.chmod(0o400)
        return {"id": info["id"], "path": str(root)}

    def listing(self, root: Path) -> list[list[Any]]:
        """``[relpath, size, kind]`` below ``root``; kind is ``file``, ``link``, ``hardlink`` or ``other``."""
        entries: list[list[Any]] = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in sorted(filenames) + [d for d in sorted(dirnames) if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                info = os.lstat(path)
                relpath = os.path.relpath(path, root)
                if stat.S_ISLNK(info.st_mode):
                    kind = "link"
                elif not stat.S_ISREG(info.st_mode):
                    kind = "other"
                elif info.st_nlink > 1:
                    kind = "hardlink"
                else:
                    kind = "file"
                entries.append([relpath, int(info.st_size), kind])
        return entries

    def contents(self, root: Path, names: object) -> dict[str, Any]:
        if not isinstance(names, list) or len(names) > MAX_FILES_PER_REPLY:
            raise AssetRequestRefused(f"ask for at most {MAX_FILES_PER_REPLY} files at a time")
        contents: dict[str, Any] = {}
        for relpath in names:
            fd = os.open(_inside(root, relpath), os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise AssetRequestRefused(f"{relpath} is not a regular file")
                contents[str(relpath)] = np.frombuffer(handle.read(), dtype=np.uint8)
        return contents
