"""The content-addressed safeloader cache.

Layout under ``$SAFELOADER_CACHE`` (default: the platform's user cache dir, e.g. ``~/.cache/safeloader``)::

    blobs/<sha256[:2]>/<sha256>          file bytes, named by their hash
    manifests/<source-kind>/<key>.json   one manifest per resolved pipeline
    refs/<key>.json                      last commit a branch or tag resolved to (for offline use)
    locks/<key>.lock                     one filelock per entry

Every write goes to a temp file in the target directory, is fsynced, then ``os.replace``d, so a crash
never leaves a half-written file under a real name. Every load re-hashes: a mismatch is an
:class:`~safeloader.errors.IntegrityError`, never a silent re-download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from safeloader.errors import CacheError, IntegrityError
from safeloader.resolve.manifest import Manifest, sha256_hex

_LOCK_TIMEOUT_S = 600.0


def cache_root() -> Path:
    """The cache directory, read from ``$SAFELOADER_CACHE`` at call time."""
    configured = os.environ.get("SAFELOADER_CACHE")
    return Path(configured).expanduser() if configured else Path(platformdirs.user_cache_dir("safeloader"))


def entry_key(*parts: str | None) -> str:
    """A stable file-name-safe key for an entry identified by ``parts``."""
    return hashlib.sha256(json.dumps(list(parts)).encode("utf-8")).hexdigest()


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Cache:
    """Blob store, manifests, refs and locks under one root."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else cache_root()
        self.blob_root = self.root / "blobs"

    def _ensure(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create cache directory {path} ({exc.strerror}); set $SAFELOADER_CACHE to a writable directory."
            ) from exc
        return path

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-entry lock, so concurrent resolvers of one entry download it once."""
        lock_path = self._ensure(self.root / "locks") / f"{key}.lock"
        try:
            with filelock.FileLock(str(lock_path), timeout=_LOCK_TIMEOUT_S):
                yield
        except filelock.Timeout as exc:
            raise CacheError(
                f"cache entry lock {lock_path} was held for over {_LOCK_TIMEOUT_S:.0f}s; "
                "check for a stuck safeloader process and retry."
            ) from exc

    # --- blobs --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blob_root / digest[:2] / digest

    def store_blob(self, data: bytes) -> str:
        """Store ``data`` under its sha256 and return the digest; an existing blob must hash the same."""
        digest = sha256_hex(data)
        path = self.blob_path(digest)
        if path.exists():
            if sha256_hex(path.read_bytes()) != digest:
                raise IntegrityError(
                    f"cached blob {path} does not match its name; the cache was modified — delete it and fetch again."
                )
            return digest
        self._ensure(path.parent)
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise CacheError(f"cannot write {path} ({exc.strerror}); check free space and permissions.") from exc
        return digest

    # --- manifests ----------------------------------------------------------------------------

    def manifest_path(self, source_kind: str, key: str) -> Path:
        return self.root / "manifests" / source_kind / f"{key}.json"

    def save_manifest(self, manifest: Manifest, key: str) -> Path:
        path = self.manifest_path(manifest.source, key)
        self._ensure(path.parent)
        body = json.dumps(manifest.to_json_dict(), indent=2, sort_keys=True).encode("utf-8")
        try:
            atomic_write(path, body)
        except OSError as exc:
            raise CacheError(f"cannot write {path} ({exc.strerror}); check free space and permissions.") from exc
        return path

    def load_manifest(self, source_kind: str, key: str) -> Manifest | None:
        """Load a manifest and re-hash every file it lists; ``None`` when the entry does not exist."""
        path = self.manifest_path(source_kind, key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {path} ({exc.strerror}); check its permissions.") from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(
                f"cached manifest {path} is not valid JSON; delete it and fetch the pipeline again."
            ) from exc
        if not isinstance(data, dict):
            raise IntegrityError(f"cached manifest {path} is malformed; delete it and fetch the pipeline again.")
        manifest = Manifest.from_json_dict(data, self.blob_root)
        manifest.read_all_verified()
        if manifest.signature_sha256 is not None:
            self.read_blob_verified(manifest.signature_sha256, what=f"signature of {manifest.source_id}")
        return manifest

    def read_blob_verified(self, digest: str, *, what: str) -> bytes:
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(
                f"cached {what} ({path}) is unreadable ({exc.strerror}); delete the cache entry and fetch again."
            ) from exc
        if sha256_hex(data) != digest:
            raise IntegrityError(
                f"cached {what} does not match its sha256 {digest}; the cache was modified — delete it and fetch again."
            )
        return data

    # --- refs (branch/tag → commit, for offline use) ------------------------------------------

    def _ref_path(self, key: str) -> Path:
        return self.root / "refs" / f"{key}.json"

    def save_ref(self, key: str, commit: str) -> None:
        path = self._ref_path(key)
        self._ensure(path.parent)
        try:
            atomic_write(path, json.dumps({"commit": commit}).encode("utf-8"))
        except OSError as exc:
            raise CacheError(f"cannot write {path} ({exc.strerror}); check free space and permissions.") from exc

    def load_ref(self, key: str) -> str | None:
        try:
            data: Any = json.loads(self._ref_path(key).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        commit = data.get("commit") if isinstance(data, dict) else None
        return commit if isinstance(commit, str) else None
