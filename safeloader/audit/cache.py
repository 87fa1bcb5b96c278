"""The content-addressed audit cache: what one file's audit found, keyed by everything that decided it.

Layout under ``$SAFELOADER_CACHE`` (the directory the resolver caches under)::

    audit/v1/<key[:2]>/<key>.json     one file's raw audit result

``key`` is the SHA-256 of: the file's SHA-256, its path in the pipeline, a digest of the policy's ``[audit]``
section, the safeloader version, a digest of the audit's own code (so an edited rule never reuses a stale
verdict under an unchanged version string), the Python version (the AST is Python's) and RestrictedPython's
version. An entry is therefore only ever read back for the very bytes, path, policy and auditor that
produced it: changed bytes have another key and are audited afresh.

Entries are written to a temp file created exclusively in the target directory (mode 0600, directories
0700) and
``os.replace``d, so a reader sees a whole entry or none. A read re-validates the entry's structure and the key
recorded inside it; anything unreadable, malformed or from another key is ignored and recomputed (then
overwritten). Not fsynced: a power loss may leave an empty entry, which reads as corrupt and is recomputed.

Integrity: the cache root is checked as the resolver checks it (the user's own, not writable by others:
:mod:`safeloader.resolve.private_dir`), and every entry carries an HMAC under the cache's per-user secret
(:mod:`safeloader.resolve.cache_mac`) bound to its key: the key binds bytes, policy and auditor, the MAC binds
the entry to this user's cache, so a planted or edited entry (an ``allow`` for bytes someone chose) is
ignored and the file audited afresh. Not covered, as for the resolver's records: code running as the same
user, which can read the secret.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from safeloader.audit.analyzer import FileAnalysis, RawHit, RelativeImport
from safeloader.audit.model import ImportRecord, RestrictedOutcome
from safeloader.policy.schema import Policy
from safeloader.resolve.cache_mac import load_or_create_secret, mac_valid, seal
from safeloader.resolve.private_dir import cache_root, ensure_private_subdir, secure_root

FORMAT = 1
#: The MAC's slot name: an audit entry can never stand in for a resolver record, nor the other way round.
MAC_PURPOSE = "audit-result"
_MAX_ENTRY_BYTES = 4 * 1024 * 1024
_TEMP_COUNTER = itertools.count()


def _auditor_digest() -> str:
    """The safeloader version plus a hash of the audit package's source: any change to a rule changes it."""
    from safeloader import __version__

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{__version__}\0{sys.version}\0".encode())
    try:
        digest.update(metadata.version("RestrictedPython").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"-")
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def policy_digest(policy: Policy) -> str:
    """Everything in the policy's ``[audit]`` section (a frozen dataclass of strings and tuples)."""
    return hashlib.sha256(repr(policy.audit).encode()).hexdigest()


class AuditCache:
    """Per-file raw audit results for one policy, under ``root`` (default :func:`cache_root`)."""

    def __init__(self, policy: Policy, root: Path | None = None) -> None:
        # Refuses (CacheError) a cache root another user owns or can write, as the resolver does.
        secured = secure_root(root if root is not None else cache_root())
        self.directory = ensure_private_subdir(secured, secured / "audit" / f"v{FORMAT}")
        self._secret = load_or_create_secret(secured)
        self._context = f"{_auditor_digest()}\0{policy_digest(policy)}\0{policy.audit.restricted_python}"
        self._made: set[Path] = set()

    def key(self, relpath: str, sha256: str) -> str:
        return hashlib.sha256(f"{self._context}\0{relpath}\0{sha256}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def load(self, relpath: str, sha256: str) -> tuple[FileAnalysis, RestrictedOutcome | None] | None:
        """The cached result for these bytes at this path, or ``None`` (absent, unreadable or malformed)."""
        key = self.key(relpath, sha256)
        try:
            with open(self._path(key), "rb") as handle:
                raw = handle.read(_MAX_ENTRY_BYTES + 1)
            if len(raw) > _MAX_ENTRY_BYTES:
                return None
            entry = json.loads(raw)
            if not isinstance(entry, dict) or not mac_valid(self._secret, MAC_PURPOSE, key, entry):
                return None  # planted, edited or from another cache: audited afresh (and overwritten)
            return decode_result(entry, key, relpath)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def store(self, relpath: str, sha256: str, analysis: FileAnalysis, restricted: RestrictedOutcome | None) -> None:
        """Best effort: a cache that cannot be written only costs the next audit its speed."""
        key = self.key(relpath, sha256)
        path = self._path(key)
        entry = seal(self._secret, MAC_PURPOSE, key, encode_result(key, analysis, restricted))
        data = json.dumps(entry, separators=(",", ":")).encode()
        # A unique temp name in the target directory, created exclusively (never follows a planted link).
        tmp = path.parent / f".{key[:16]}.{os.getpid()}.{next(_TEMP_COUNTER)}.tmp"
        try:
            if path.parent not in self._made:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._made.add(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def encode_result(key: str, analysis: FileAnalysis, restricted: RestrictedOutcome | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "key": key,
        "hits": [[h.rule_id, h.detail, h.line, h.column] for h in analysis.hits],
        "imports": [[i.module, i.how, i.line] for i in analysis.imports],
        "relative": [[r.level, r.module, list(r.names), r.line, r.column] for r in analysis.relative_imports],
        "restricted": None if restricted is None else [restricted.compiled, list(restricted.errors)],
    }


def _str(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("not a string")
    return value


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise TypeError("not a non-negative int")
    return value


def decode_result(entry: Any, key: str, relpath: str) -> tuple[FileAnalysis, RestrictedOutcome | None] | None:
    """Rebuild a result from JSON, checking every field's type; raises on anything unexpected."""
    from safeloader.audit.rules import RULES

    if type(entry) is not dict or entry.get("format") != FORMAT or entry.get("key") != key:
        return None
    hits = []
    for rule_id, detail, line, column in entry["hits"]:
        if _str(rule_id) not in RULES:
            return None
        hits.append(RawHit(rule_id, _str(detail), _int(line), _int(column)))
    imports = tuple(ImportRecord(_str(m), _str(how), relpath, _int(line)) for m, how, line in entry["imports"])
    relative = tuple(
        RelativeImport(_int(level), _str(module), tuple(_str(n) for n in names), _int(line), _int(column))
        for level, module, names, line, column in entry["relative"]
    )
    restricted_raw = entry["restricted"]
    restricted = None
    if restricted_raw is not None:
        compiled, errors = restricted_raw
        if type(compiled) is not bool:
            return None
        restricted = RestrictedOutcome(compiled, tuple(_str(e) for e in errors))
    return FileAnalysis(tuple(hits), imports, relative), restricted
