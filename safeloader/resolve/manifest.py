"""The resolved pipeline: which exact files will run, and their sha256."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safeloader.errors import IntegrityError

SourceKind = Literal["local_dir", "local_file", "hub", "community", "model_repo"]
MANIFEST_VERSION = 1


_HEX = frozenset("0123456789abcdef")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _is_plain_relpath(path: str) -> bool:
    """A POSIX path inside the pipeline root: relative, no ``..``, no empty or ``.`` parts."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """Everything needed to find, re-verify and report on one resolved pipeline.

    ``files`` maps POSIX paths relative to the pipeline root (``pipeline.py``, ``utils/helpers.py``) to
    the sha256 of their bytes; the bytes themselves live in the content-addressed cache under
    ``blob_root`` and are re-hashed by :meth:`read_verified` every time they are read.
    """

    source: SourceKind
    #: What ``[sources] allow/deny`` patterns match: ``org/name``, ``community:name``, ``local:/abs/path``.
    source_id: str
    #: Hub repo id (``org/name`` or the community mirror) or the absolute local path.
    repo: str
    repo_type: str | None
    requested_revision: str | None
    #: The 40-hex commit every file was fetched at (``None`` for local sources).
    commit: str | None
    #: Relative path of the module that defines the pipeline class.
    entry: str
    files: Mapping[str, str]
    fetched_at: str
    blob_root: Path
    #: Free-form facts recorded at resolution (e.g. ``{"unpinned_warning": "…"}``).
    notes: Mapping[str, str] = field(default_factory=dict)
    #: Folder of the repo that is the pipeline root (``v0.42.1`` for community pipelines, else ``""``);
    #: ``files`` keys are relative to it.
    subfolder: str = ""
    #: sha256 of the ``safeloader.sig`` file fetched at ``commit`` (its bytes live in the blob store).
    signature_sha256: str | None = None
    #: The normalized Hub endpoint the files came from (``None`` for local sources); cache entries are bound to it.
    endpoint: str | None = None

    @property
    def pinned(self) -> bool:
        """True when the caller asked for the exact commit that was fetched."""
        return self.commit is not None and self.requested_revision == self.commit

    def blob_path(self, relpath: str) -> Path:
        digest = self.files[relpath]
        return self.blob_root / digest[:2] / digest

    def read_verified(self, relpath: str) -> bytes:
        """Read a file's bytes from the cache and check them against the recorded hash."""
        if relpath not in self.files:
            raise IntegrityError(f"{relpath} is not part of the resolved pipeline {self.source_id}; re-resolve it.")
        expected = self.files[relpath]
        path = self.blob_path(relpath)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(
                f"cached file {path} for {relpath} is unreadable ({exc.strerror}); "
                "run `safeloader fetch` again to re-download it."
            ) from exc
        if sha256_hex(data) != expected:
            raise IntegrityError(
                f"cached file {relpath} of {self.source_id} does not match its recorded sha256 {expected}; "
                "the cache was modified — delete the entry and fetch again."
            )
        return data

    def read_all_verified(self) -> dict[str, bytes]:
        return {rel: self.read_verified(rel) for rel in sorted(self.files)}

    def canonical_bytes(self) -> bytes:
        """Repo, commit and file hashes in canonical JSON: the identity of the resolved code.

        In-repo signatures cannot cover the commit that contains them; they sign
        :func:`safeloader.verify.signatures.signed_fields` instead (repo, subfolder, entry, files).
        """
        body: dict[str, Any] = {"repo": self.repo, "commit": self.commit, "files": dict(sorted(self.files.items()))}
        if self.subfolder:
            body["subfolder"] = self.subfolder
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "source": self.source,
            "source_id": self.source_id,
            "repo": self.repo,
            "repo_type": self.repo_type,
            "requested_revision": self.requested_revision,
            "commit": self.commit,
            "entry": self.entry,
            "files": dict(sorted(self.files.items())),
            "fetched_at": self.fetched_at,
            "notes": dict(self.notes),
            "subfolder": self.subfolder,
            "signature_sha256": self.signature_sha256,
            "endpoint": self.endpoint,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], blob_root: Path) -> Manifest:
        try:
            if data["manifest_version"] != MANIFEST_VERSION:
                raise IntegrityError(
                    f"manifest version {data['manifest_version']} is not supported; fetch the pipeline again."
                )
            files = data["files"]
            notes = data.get("notes", {})
            signature = data.get("signature_sha256")
            endpoint = data.get("endpoint")
            well_formed = (
                isinstance(files, dict)
                and all(isinstance(k, str) and _is_sha256(v) and _is_plain_relpath(k) for k, v in files.items())
                and isinstance(notes, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in notes.items())
                and (signature is None or _is_sha256(signature))
                and (endpoint is None or isinstance(endpoint, str))
                and all(isinstance(data[key], str) for key in ("source", "source_id", "repo", "entry", "fetched_at"))
                and data["entry"] in files
            )
            if not well_formed:
                raise IntegrityError("cached manifest is malformed; delete the cache entry and fetch again.")
            return cls(
                source=data["source"],
                source_id=data["source_id"],
                repo=data["repo"],
                repo_type=data["repo_type"],
                requested_revision=data["requested_revision"],
                commit=data["commit"],
                entry=data["entry"],
                files=files,
                fetched_at=data["fetched_at"],
                blob_root=blob_root,
                notes=data.get("notes", {}),
                subfolder=data.get("subfolder", ""),
                signature_sha256=data.get("signature_sha256"),
                endpoint=endpoint,
            )
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"manifest is malformed ({exc!r}); delete the cache entry and fetch again.") from exc
