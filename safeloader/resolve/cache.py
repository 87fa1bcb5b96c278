"""The content-addressed safeloader cache.

Layout under ``$SAFELOADER_CACHE`` (default: the platform's user cache dir, e.g. ``~/.cache/safeloader``)::

    cache.key                            per-user secret (0600) that authenticates every record below
    blobs/<sha256[:2]>/<sha256>          file bytes, named by their hash
    manifests/<source-kind>/<key>.json   one manifest per resolved pipeline and Hub endpoint
    refs/<key>.json                      last commit a branch or tag resolved to at one endpoint (offline use)
    listings/<key>.json                  the file ids every endpoint gave for one repo@commit
    locks/<key>.lock                     one filelock per entry

Every key of a remote entry includes the normalized Hub endpoint, so bytes fetched through one mirror are
never served for another endpoint. Manifests, refs and listings carry an HMAC bound to their key
(:mod:`safeloader.resolve.cache_mac`); the cache root and every directory in it must be the user's own and
writable by nobody else (:mod:`safeloader.resolve.private_dir`); new directories are 0700, files 0600.

Every write goes to a temp file in the target directory, is fsynced, then ``os.replace``d, so a crash
never leaves a half-written file under a real name. Every load re-hashes and checks the MAC: a mismatch is
an :class:`~safeloader.errors.IntegrityError`, never a silent re-download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import filelock

from safeloader.errors import CacheError, IntegrityError
from safeloader.resolve.cache_mac import load_or_create_secret, mac_valid, seal
from safeloader.resolve.manifest import Manifest, sha256_hex
from safeloader.resolve.private_dir import PRIVATE_FILE_MODE, cache_root, ensure_private_subdir, secure_root

_LOCK_TIMEOUT_S = 600.0


def secure_cache_root() -> Path:
    """The cache root, created 0700 if missing, after refusing one another user owns or can write.

    Raises :class:`~safeloader.errors.CacheError` when the root, or a directory above it, could be changed by
    another user. Anything stored under the cache should call this (then :func:`private_subdir`).
    """
    return secure_root(cache_root())


def private_subdir(root: Path, relative: str) -> Path:
    """``root / relative``, every level created 0700 and checked like the root."""
    return ensure_private_subdir(root, root / relative)


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


def _listing_value(git_oid: str, lfs_sha256: str | None) -> str:
    return git_oid if lfs_sha256 is None else f"{git_oid} lfs:{lfs_sha256}"


class Cache:
    """Blob store, manifests, refs, listings and locks under one root."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = secure_root(root if root is not None else cache_root())
        self.blob_root = self.root / "blobs"
        self._secret: bytes | None = None

    def _ensure(self, path: Path) -> Path:
        return ensure_private_subdir(self.root, path)

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = load_or_create_secret(self.root)
        return self._secret

    def _write(self, path: Path, data: bytes) -> None:
        self._ensure(path.parent)
        try:
            atomic_write(path, data, mode=PRIVATE_FILE_MODE)
        except OSError as exc:
            raise CacheError(f"cannot write {path} ({exc.strerror}); check free space and permissions.") from exc

    def _write_record(self, path: Path, purpose: str, key: str, body: Mapping[str, Any]) -> None:
        sealed = seal(self.secret, purpose, key, body)
        self._write(path, json.dumps(sealed, indent=2, sort_keys=True).encode("utf-8"))

    def _read_record(self, path: Path, purpose: str, key: str, what: str) -> dict[str, Any] | None:
        """A record's body after its MAC was checked; ``None`` when the file does not exist."""
        self._ensure(path.parent)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {path} ({exc.strerror}); check its permissions.") from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"cached {what} {path} is not valid JSON; delete it and fetch again.") from exc
        if not isinstance(data, dict):
            raise IntegrityError(f"cached {what} {path} is malformed; delete it and fetch again.")
        if not mac_valid(self.secret, purpose, key, data):
            raise IntegrityError(
                f"cached {what} {path} was not written by safeloader for this entry (its MAC is missing or wrong: "
                "planted, copied from another entry, or from another cache); delete it and fetch again."
            )
        return data

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-entry lock, so concurrent resolvers of one entry download it once."""
        lock_path = self._ensure(self.root / "locks") / f"{key}.lock"
        try:
            with filelock.FileLock(str(lock_path), timeout=_LOCK_TIMEOUT_S, mode=PRIVATE_FILE_MODE):
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
        self._write(path, data)
        return digest

    # --- manifests ----------------------------------------------------------------------------

    def manifest_path(self, source_kind: str, key: str) -> Path:
        return self.root / "manifests" / source_kind / f"{key}.json"

    def save_manifest(self, manifest: Manifest, key: str) -> Path:
        path = self.manifest_path(manifest.source, key)
        self._write_record(path, "manifest", f"{manifest.source}/{key}", manifest.to_json_dict())
        return path

    def load_manifest(self, source_kind: str, key: str) -> Manifest | None:
        """Load a manifest, check its MAC and re-hash every file it lists; ``None`` when it does not exist."""
        path = self.manifest_path(source_kind, key)
        data = self._read_record(path, "manifest", f"{source_kind}/{key}", "manifest")
        if data is None:
            return None
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
        self._write_record(self._ref_path(key), "ref", key, {"commit": commit})

    def load_ref(self, key: str) -> str | None:
        data = self._read_record(self._ref_path(key), "ref", key, "branch record")
        commit = data.get("commit") if data is not None else None
        return commit if isinstance(commit, str) else None

    # --- listings (what each endpoint says a commit holds) ------------------------------------

    def check_listing(
        self,
        *,
        repo: str,
        repo_type: str,
        commit: str,
        endpoint: str,
        files: Mapping[str, tuple[str, str | None]],
    ) -> None:
        """Compare an endpoint's file ids for ``repo@commit`` with what other endpoints said; then record them.

        ``files`` maps paths to ``(git blob id, LFS sha256 or None)``. A commit id names exactly one tree, so
        two endpoints that disagree about a file at one commit mean one of them serves forged bytes under a
        real commit id: that is an :class:`IntegrityError`, raised before anything from this answer is used.
        Repo ids are compared case-insensitively, as the Hub does.
        """
        key = entry_key("listing", repo_type, repo.lower(), commit)
        path = self.root / "listings" / f"{key}.json"
        with self.lock(key):
            record = self._read_record(path, "listing", key, "file listing")
            known: dict[str, str] = {}
            endpoints: list[str] = []
            if record is not None:
                raw_files, raw_endpoints = record.get("files"), record.get("endpoints")
                if not (
                    isinstance(raw_files, dict)
                    and all(isinstance(v, str) for v in raw_files.values())
                    and isinstance(raw_endpoints, list)
                    and all(isinstance(e, str) for e in raw_endpoints)
                ):
                    raise IntegrityError(f"cached file listing {path} is malformed; delete it and fetch again.")
                known, endpoints = dict(raw_files), list(raw_endpoints)
            observed = {p: _listing_value(oid, lfs) for p, (oid, lfs) in files.items()}
            conflicts = sorted(p for p, value in observed.items() if p in known and known[p] != value)
            if conflicts:
                others = ", ".join(e for e in endpoints if e != endpoint) or "an earlier answer"
                raise IntegrityError(
                    f"{endpoint} and {others} list different contents for {repo}@{commit} "
                    f"({', '.join(conflicts[:5])}); one commit id names one tree, so one of these endpoints serves "
                    f"forged files — nothing from this answer was used; find out which endpoint to trust, then "
                    f"delete {path} (and the other endpoint's entries) and fetch again."
                )
            if endpoint in endpoints and set(observed) <= set(known):
                return
            if endpoint not in endpoints:
                endpoints.append(endpoint)
            body = {
                "repo": repo.lower(),
                "repo_type": repo_type,
                "commit": commit,
                "endpoints": endpoints,
                "files": {**known, **observed},
            }
            self._write_record(path, "listing", key, body)
