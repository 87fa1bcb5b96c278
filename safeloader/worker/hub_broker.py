"""Hub downloads inside the worker go to the caller: ``hf_hub_download`` and ``snapshot_download`` replaced.

The worker has no network. Pipeline code (or diffusers and transformers on its behalf) that downloads
another repo calls these replacements, which ask the caller (``broker`` messages, answered inside the
call that is running) and write the files it sends into the worker's own Hub cache in its private
``TMPDIR`` (``$HF_HUB_CACHE``, set by :func:`safeloader.worker.serve.run_worker`), in the layout
huggingface_hub itself uses (``snapshots/<commit>/…``, ``refs/<revision>``, ``.no_exist/<commit>/…``),
so that the libraries' cache lookups find them. What the caller refuses (a repo
the policy denies, an unpinned revision under ``require_pinned_revision``, pickle or code files) raises
:class:`BrokeredDownloadRefused` with the caller's message.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from safeloader.ipc import protocol

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class BrokeredDownloadRefused(Exception):
    """The caller refused a download the pipeline asked for (policy, pins or file format)."""


class HubBroker:
    def __init__(
        self,
        send: Callable[[dict[str, Any]], None],
        receive: Callable[[], dict[str, Any]],
        dispatch: Callable[[dict[str, Any]], None],
    ) -> None:
        self.send = send
        self.receive = receive
        self.dispatch = dispatch
        self.commits: dict[tuple[str, str, str | None], str] = {}

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a broker request and serve nested requests until its answer comes."""
        self.send({"op": protocol.BROKER, **message})
        while True:
            request = self.receive()
            if request["op"] == protocol.BROKER_RESULT:
                return request
            self.dispatch(request)

    # cache layout -------------------------------------------------------------------------------------
    @staticmethod
    def repo_dir(repo_id: str, repo_type: str, cache_dir: Any) -> Path:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        return Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)

    def _remember(self, repo_dir: Path, key: tuple[str, str, str | None], commit: object) -> str:
        if not isinstance(commit, str) or not _COMMIT_RE.fullmatch(commit):
            raise BrokeredDownloadRefused("the caller answered without a commit")
        self.commits[key] = commit
        revision = key[2]
        if revision is not None and revision != commit and "/" not in revision and revision not in (".", ".."):
            (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
            (repo_dir / "refs" / revision).write_text(commit)
        elif revision is None:
            (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
            (repo_dir / "refs" / "main").write_text(commit)
        return commit

    @staticmethod
    def _copy_to(local_dir: Any, relpath: str, source: Path) -> str:
        target = Path(local_dir).joinpath(*PurePosixPath(relpath).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        return str(target)

    # the replacements ---------------------------------------------------------------------------------
    def download(
        self,
        repo_id: str,
        filename: str,
        *,
        subfolder: str | None = None,
        repo_type: str | None = None,
        revision: str | None = None,
        cache_dir: Any = None,
        local_dir: Any = None,
        **_ignored: Any,
    ) -> str:
        """``hf_hub_download`` through the caller."""
        from huggingface_hub.errors import EntryNotFoundError

        repo_type = repo_type or "model"
        relpath = f"{subfolder.strip('/')}/{filename}" if subfolder else str(filename)
        repo_dir = self.repo_dir(repo_id, repo_type, cache_dir)
        key = (repo_type, str(repo_id), revision)
        commit = revision if isinstance(revision, str) and _COMMIT_RE.fullmatch(revision) else self.commits.get(key)
        if commit is not None:
            cached = repo_dir / "snapshots" / commit / relpath
            if cached.is_file():
                return self._copy_to(local_dir, relpath, cached) if local_dir else str(cached)
        reply = self.ask(
            {"kind": "file", "repo_id": str(repo_id), "repo_type": repo_type, "revision": revision, "path": relpath}
        )
        status = reply.get("status")
        if status == "refused":
            raise BrokeredDownloadRefused(str(reply.get("message", "the caller refused the download"))[:4000])
        if status == "missing":
            if isinstance(reply.get("commit"), str):
                commit = self._remember(repo_dir, key, reply["commit"])
                marker = repo_dir / ".no_exist" / commit / relpath
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            raise EntryNotFoundError(f"{relpath} does not exist in {repo_id} (answered by the caller's Hub broker)")
        data = reply.get("data")
        if status != "ok" or not isinstance(data, np.ndarray | bytes):
            raise BrokeredDownloadRefused("the caller's answer to a download was malformed")
        commit = self._remember(repo_dir, key, reply.get("commit"))
        target = repo_dir / "snapshots" / commit / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".incomplete")
        with open(partial, "wb") as handle:
            handle.write(data.data.cast("B") if isinstance(data, np.ndarray) else data)
        partial.replace(target)
        return self._copy_to(local_dir, relpath, target) if local_dir else str(target)

    def snapshot(
        self,
        repo_id: str,
        *,
        repo_type: str | None = None,
        revision: str | None = None,
        cache_dir: Any = None,
        local_dir: Any = None,
        allow_patterns: list[str] | str | None = None,
        ignore_patterns: list[str] | str | None = None,
        **_ignored: Any,
    ) -> str:
        """``snapshot_download`` through the caller: its listing, filtered here, then one request per file."""
        from huggingface_hub.utils import filter_repo_objects

        repo_type = repo_type or "model"
        repo_dir = self.repo_dir(repo_id, repo_type, cache_dir)
        reply = self.ask({"kind": "list", "repo_id": str(repo_id), "repo_type": repo_type, "revision": revision})
        if reply.get("status") != "ok":
            raise BrokeredDownloadRefused(str(reply.get("message", "the caller refused the download"))[:4000])
        commit = self._remember(repo_dir, (repo_type, str(repo_id), revision), reply.get("commit"))
        listed = [entry[0] for entry in reply.get("files") or [] if isinstance(entry, list) and entry]
        refused_reply = reply.get("refused")
        refused: dict[str, Any] = refused_reply if isinstance(refused_reply, dict) else {}
        named = [allow_patterns] if isinstance(allow_patterns, str) else list(allow_patterns or [])
        for name in named:
            if name in refused:
                raise BrokeredDownloadRefused(str(refused[name])[:4000])
        wanted = list(filter_repo_objects(listed, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        for relpath in wanted:
            self.download(
                repo_id, relpath, repo_type=repo_type, revision=commit, cache_dir=cache_dir, local_dir=local_dir
            )
        folder = repo_dir / "snapshots" / commit
        folder.mkdir(parents=True, exist_ok=True)
        return str(local_dir) if local_dir else str(folder)


def install_hub_broker(broker: HubBroker) -> None:
    """Route huggingface_hub's download functions, wherever they were imported, through ``broker``."""
    import huggingface_hub
    import huggingface_hub._snapshot_download
    import huggingface_hub.file_download

    originals = {
        "hf_hub_download": (huggingface_hub.file_download.hf_hub_download, broker.download),
        "snapshot_download": (huggingface_hub._snapshot_download.snapshot_download, broker.snapshot),
    }
    for module in (huggingface_hub, huggingface_hub.file_download, huggingface_hub._snapshot_download):
        for name, (_original, replacement) in originals.items():
            if hasattr(module, name) or module is huggingface_hub:
                setattr(module, name, replacement)
    for module in list(sys.modules.values()):
        # The module's own namespace, not getattr: a lazy module's __getattr__ would import on a miss.
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, (original, replacement) in originals.items():
            if namespace.get(name) is original:
                setattr(module, name, replacement)
