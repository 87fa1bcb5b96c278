"""Authenticate cache records (manifests, refs, commit records) with an HMAC under a per-user secret.

Blobs are named by their sha256 and re-hashed on every read, but a record that says *which* blobs make up
``org/pipe@<commit>`` could be rewritten by anyone able to write the cache (a new blob plus a manifest
naming it). Each record is therefore stored with ``HMAC-SHA256(secret, purpose, key, canonical body)``:
the secret is 32 random bytes in ``<cache>/cache.key`` (0600, owned by the user, created atomically on first
use), the purpose and key bind a record to the one slot it was written for, so a record copied to another
slot (a swap) fails as surely as a forged one.

What this does not stop: a process running as the same user can read the secret, and a cache copied from
someone else together with its key is trusted like one's own — never use a cache directory you did not
create (the ownership check in :mod:`safeloader.resolve.private_dir` refuses other users' directories).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safeloader.errors import CacheError

SECRET_FILE = "cache.key"
SECRET_BYTES = 32
MAC_FIELD = "mac"
_MAC_PREFIX = "hmac-sha256:"
_DOMAIN = b"safeloader-cache-record-v1"


def _refuse_secret(path: Path, problem: str) -> CacheError:
    return CacheError(
        f"the cache secret {path} {problem}; delete it (cached entries are then fetched again) "
        "or set $SAFELOADER_CACHE to a private directory."
    )


def _read_secret(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refuse_secret(path, f"cannot be opened ({exc.strerror}; a symlink is refused)") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse_secret(path, "is not a regular file")
        if info.st_uid != os.geteuid():
            raise _refuse_secret(path, f"is owned by uid {info.st_uid}, not by you")
        if info.st_mode & 0o077:
            raise _refuse_secret(path, f"is readable or writable by others (mode {stat.S_IMODE(info.st_mode):o})")
        data = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != SECRET_BYTES:
        raise _refuse_secret(path, f"does not hold {SECRET_BYTES} bytes")
    return data


def load_or_create_secret(root: Path) -> bytes:
    """The per-user secret of the cache at ``root``; created (0600) by whichever process needs it first."""
    path = root / SECRET_FILE
    existing = _read_secret(path)
    if existing is not None:
        return existing
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{SECRET_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if another process got there first: then both use the winner's secret.
        with contextlib.suppress(FileExistsError):
            os.link(tmp_name, path)
    except OSError as exc:
        raise CacheError(
            f"cannot create the cache secret {path} ({exc.strerror}); check the cache permissions."
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
    created = _read_secret(path)
    if created is None:
        raise _refuse_secret(path, "vanished while it was created")
    return created


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def record_mac(secret: bytes, purpose: str, key: str, body: Mapping[str, Any]) -> str:
    """The MAC of ``body`` (without its ``mac`` field) for slot ``purpose``/``key``."""
    unsigned = {k: v for k, v in body.items() if k != MAC_FIELD}
    message = b"\0".join((_DOMAIN, purpose.encode("utf-8"), key.encode("utf-8"), _canonical(unsigned)))
    return _MAC_PREFIX + hmac.new(secret, message, hashlib.sha256).hexdigest()


def seal(secret: bytes, purpose: str, key: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with its MAC added, ready to be written."""
    return {**body, MAC_FIELD: record_mac(secret, purpose, key, body)}


def mac_valid(secret: bytes, purpose: str, key: str, body: Mapping[str, Any]) -> bool:
    """Whether ``body`` carries the MAC this cache would have written for slot ``purpose``/``key``."""
    found = body.get(MAC_FIELD)
    return isinstance(found, str) and hmac.compare_digest(found, record_mac(secret, purpose, key, body))
