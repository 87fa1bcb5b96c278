"""The caller's answer to a worker's Hub download: policy first, then files, never network access.

Pipeline code that calls ``from_pretrained("org/other")`` or ``hf_hub_download`` runs in a worker with no
network; :mod:`safeloader.worker.hub_broker` turns those calls into ``broker`` requests. The caller checks
the repo against ``[sources]`` and the pins, resolves the revision once per session, downloads with its own
token into its own Hub cache (every file checked against the hash the Hub lists), checks the format
(:mod:`.formats`) and answers with the bytes. Only Hub repo ids are served: a worker can never make the
caller read a local path. A refusal is an answer (the worker raises it); a malformed request is a
protocol violation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from safeloader.assets import formats
from safeloader.assets.resolve import HubAccess, check_relpath, check_source, hub_revision_allowed, is_repo_id
from safeloader.errors import EntryFileNotFoundError, SafeLoaderError
from safeloader.policy.schema import Policy

logger = logging.getLogger("safeloader")

#: Files a brokered listing may name.
MAX_LISTED_FILES = 20_000


class _Missing(Exception):
    def __init__(self, commit: str) -> None:
        super().__init__(commit)
        self.commit = commit


class Broker:
    """Per-session state: the caller's Hub access, and revisions and listings resolved once per session."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.access = HubAccess()
        self._commits: dict[tuple[str, str, str | None], str] = {}
        self._listings: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._folders: dict[tuple[str, str, str | None], Path] = {}

    def access_with(self, token: object, cache_dir: object = None, local_files_only: object = None) -> HubAccess:
        """The session's Hub access; this call's own ``token``, ``cache_dir``, ``local_files_only`` take precedence."""
        access = self.access
        return HubAccess(
            token=token if isinstance(token, str | bool) else access.token,
            cache_dir=Path(cache_dir) if isinstance(cache_dir, str | os.PathLike) else access.cache_dir,
            local_files_only=local_files_only if isinstance(local_files_only, bool) else access.local_files_only,
        )

    # resolution ---------------------------------------------------------------------------------------
    def _offline(self) -> bool:
        from safeloader.resolve.hub import offline_mode

        return self.access.local_files_only or offline_mode()

    def _offline_folder(self, repo_id: str, repo_type: str, revision: str | None) -> Path:
        key = (repo_type, repo_id, revision)
        if key not in self._folders:
            from huggingface_hub import snapshot_download

            from safeloader.resolve.hub import translate_hub_errors

            with translate_hub_errors(repo_id, revision, repo_type=repo_type):
                self._folders[key] = Path(
                    snapshot_download(
                        repo_id,
                        repo_type=repo_type,
                        revision=revision,
                        cache_dir=self.access.cache_dir,
                        local_files_only=True,
                    )
                )
        return self._folders[key]

    def _commit(self, repo_id: str, repo_type: str, revision: str | None) -> str:
        from safeloader.resolve.hub import resolve_commit

        key = (repo_type, repo_id, revision)
        if key not in self._commits:
            commit = resolve_commit(repo_id, revision, repo_type=repo_type, token=self.access.token)
            hub_revision_allowed(self.policy, repo_id, revision, commit)
            self._commits[key] = commit
        return self._commits[key]

    def _listing(self, repo_id: str, repo_type: str, commit: str) -> dict[str, Any]:
        from safeloader.resolve.hub import list_files

        key = (repo_type, repo_id, commit)
        if key not in self._listings:
            self._listings[key] = list_files(repo_id, commit, repo_type=repo_type, token=self.access.token)
        return self._listings[key]

    def list_repo(self, repo_id: str, repo_type: str, revision: str | None) -> dict[str, Any]:
        if self._offline():
            folder = self._offline_folder(repo_id, repo_type, revision)
            commit = folder.name
            names = sorted(str(p.relative_to(folder).as_posix()) for p in folder.rglob("*") if p.is_file())
            sizes = {name: (folder / name).stat().st_size for name in names}
        else:
            commit = self._commit(repo_id, repo_type, revision)
            listing = self._listing(repo_id, repo_type, commit)
            sizes = {name: remote.size for name, remote in listing.items()}
        reasons = {name: formats.refusal(name, self.policy) for name in sizes}
        files = [[name, int(size)] for name, size in sorted(sizes.items()) if reasons[name] is None]
        refused = {name: reason for name, reason in reasons.items() if reason is not None}
        return {"status": "ok", "commit": commit, "files": files[:MAX_LISTED_FILES], "refused": refused}

    def fetch(self, repo_id: str, repo_type: str, revision: str | None, relpath: str) -> dict[str, Any]:
        from safeloader.resolve.hub import fetch_file

        if self._offline():
            folder = self._offline_folder(repo_id, repo_type, revision)
            commit = folder.name
            if not (folder / relpath).is_file():
                raise _Missing(commit)
            data = (folder / relpath).read_bytes()
        else:
            commit = self._commit(repo_id, repo_type, revision)
            remote = self._listing(repo_id, repo_type, commit).get(relpath)
            if remote is None:
                raise _Missing(commit)
            if formats.refusal(relpath, self.policy) is not None:
                formats.check(relpath, b"", self.policy)  # raises the typed refusal before any download
            data = fetch_file(
                repo_id, remote, commit, repo_type=repo_type, token=self.access.token, cache_dir=self.access.cache_dir
            ).read_bytes()
        formats.check(relpath, data, self.policy)
        return {"status": "ok", "commit": commit, "data": np.frombuffer(data, dtype=np.uint8)}

    # requests -----------------------------------------------------------------------------------------
    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply to one ``broker`` request; raises ``ValueError`` on a malformed one (a protocol violation)."""
        kind, repo_id, repo_type = message.get("kind"), message.get("repo_id"), message.get("repo_type") or "model"
        revision, relpath = message.get("revision"), message.get("path")
        if (
            kind not in ("list", "file")
            or not isinstance(repo_id, str)
            or repo_type not in ("model", "dataset")
            or not (revision is None or (isinstance(revision, str) and 0 < len(revision) <= 256))
            or (kind == "file" and not isinstance(relpath, str))
        ):
            raise ValueError("malformed broker request")
        if not is_repo_id(repo_id):
            return _refused(
                f"{repo_id[:200]!r} is not a Hub repo id of the form org/name; the sandbox downloads Hub repos only "
                "and never reads the caller's files — pass the files to the pipeline as data instead."
            )
        try:
            check_source(self.policy, repo_id)
            if kind == "list":
                return self.list_repo(repo_id, repo_type, revision)
            assert isinstance(relpath, str)
            return self.fetch(repo_id, repo_type, revision, check_relpath(relpath, what="file"))
        except _Missing as missing:
            return {"status": "missing", "commit": missing.commit, "message": f"{relpath} is not in {repo_id}"}
        except EntryFileNotFoundError as exc:
            return {"status": "missing", "commit": None, "message": str(exc)}
        except SafeLoaderError as exc:
            logger.warning("refused a download the sandboxed pipeline asked for: %s", exc)
            return _refused(str(exc), type(exc).__name__)


def _refused(message: str, type_name: str = "SourceDenied") -> dict[str, Any]:
    return {"status": "refused", "message": message, "type": type_name}


def broker_for(session: Any) -> Broker:
    """The session's broker, made on first use."""
    broker = getattr(session, "hub_broker", None)
    if not isinstance(broker, Broker):
        broker = Broker(session.policy)
        session.hub_broker = broker
    return broker
