"""The model side of a load: where the weights come from, and which weight files are acceptable.

The caller downloads the model (with its token, which never reaches the worker) at one resolved
commit; the worker only ever reads the resulting directory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safeloader.errors import (
    EntryFileNotFoundError,
    InvalidSpecError,
    PickleWeightsRefused,
    ResolveError,
)
from safeloader.localfiles import check_plain
from safeloader.policy import Policy
from safeloader.userpath import expand_user

logger = logging.getLogger("safeloader")

PICKLE_WEIGHT_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
SAFE_WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class ModelSource:
    """A model directory on the caller's disk, and where it came from."""

    directory: Path
    #: ``org/name`` for a Hub repo, ``None`` for a local directory.
    repo_id: str | None
    #: The 40-hex commit the files were downloaded at (Hub only).
    commit: str | None
    #: What the caller asked for (a branch, tag or commit; ``None`` for the default branch).
    requested_revision: str | None
    files: tuple[str, ...]
    model_index: dict[str, Any]

    @property
    def is_local(self) -> bool:
        return self.repo_id is None


def _list_files(root: Path) -> tuple[str, ...]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    return tuple(sorted(found))


def _read_model_index(directory: Path, label: str) -> dict[str, Any]:
    path = directory / "model_index.json"
    if path.exists():
        check_plain(path.resolve(), shown_as=path)  # the caller reads it: never a hard link, FIFO or device
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EntryFileNotFoundError(
            f"{label} has no model_index.json, so it is not a diffusers pipeline; check the model id or path."
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResolveError(f"model_index.json of {label} is unreadable ({exc}); check the model files.") from exc
    if not isinstance(data, dict) or "_class_name" not in data:
        raise ResolveError(f"model_index.json of {label} has no _class_name; check the model files.")
    return data


def component_folders(model_index: dict[str, Any]) -> list[str]:
    return [key for key, value in model_index.items() if isinstance(value, list) and not key.startswith("_")]


def check_weights(files: tuple[str, ...], model_index: dict[str, Any], policy: Policy, label: str) -> None:
    """Refuse pickle weights a component would have to load, unless ``[weights] allow_pickle``."""
    if policy.weights.allow_pickle:
        return
    refused: list[str] = []
    for folder in component_folders(model_index):
        in_folder = [f for f in files if f.startswith(f"{folder}/")]
        has_safe = any(f.endswith(SAFE_WEIGHT_SUFFIXES) for f in in_folder)
        pickles = [f for f in in_folder if f.endswith(PICKLE_WEIGHT_SUFFIXES)]
        if pickles and not has_safe:
            refused.extend(pickles)
    root_pickles = [f for f in files if "/" not in f and f.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if root_pickles and not any("/" not in f and f.endswith(SAFE_WEIGHT_SUFFIXES) for f in files):
        refused.extend(root_pickles)
    if refused:
        raise PickleWeightsRefused(
            f"{label} ships pickle weights ({', '.join(sorted(refused))}) that can run code when loaded; "
            "convert them to safetensors, or set [weights] allow_pickle = true to load them inside the sandbox."
        )


def looks_like_repo_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "~"))


def resolve_model(
    pretrained_model_name_or_path: str | os.PathLike[str],
    *,
    policy: Policy,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    pipeline: bool = True,
) -> ModelSource:
    """Locate or download the model, at one commit, and refuse weights the policy forbids.

    ``pipeline=False`` accepts any repository (a transformers model, one component of a pipeline): no
    ``model_index.json`` is required, and pickle weights are checked folder by folder.
    """
    spec = os.fspath(pretrained_model_name_or_path)
    local = expand_user(spec)
    if local.is_dir():
        directory = local.resolve()
        files = _list_files(directory)
        index = _read_model_index(directory, str(directory)) if pipeline else _optional_index(directory)
        _check(files, index, policy, str(directory), pipeline)
        return ModelSource(
            directory=directory, repo_id=None, commit=None, requested_revision=None, files=files, model_index=index
        )
    if not looks_like_repo_id(spec):
        raise InvalidSpecError(
            f"{spec!r} is neither an existing directory nor a Hub repo id of the form 'org/name'; check the value."
        )
    return _download_hub_model(
        spec,
        policy=policy,
        revision=revision,
        token=token,
        cache_dir=None if cache_dir is None else Path(cache_dir),
        local_files_only=local_files_only,
        pipeline=pipeline,
    )


def _optional_index(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def check_folder_weights(files: tuple[str, ...], policy: Policy, label: str) -> None:
    """Any repository: refuse a folder whose only weights are pickles, unless ``[weights] allow_pickle``."""
    if policy.weights.allow_pickle:
        return
    folders: dict[str, list[str]] = {}
    for path in files:
        folders.setdefault(path.rpartition("/")[0], []).append(path)
    refused = [
        f
        for in_folder in folders.values()
        if not any(f.endswith(SAFE_WEIGHT_SUFFIXES) for f in in_folder)
        for f in in_folder
        if f.endswith(PICKLE_WEIGHT_SUFFIXES)
    ]
    if refused:
        raise PickleWeightsRefused(
            f"{label} ships pickle weights ({', '.join(sorted(refused))}) that can run code when loaded; "
            "convert them to safetensors, or set [weights] allow_pickle = true to load them inside the sandbox."
        )


def _check(files: tuple[str, ...], index: dict[str, Any], policy: Policy, label: str, pipeline: bool) -> None:
    if pipeline:
        check_weights(files, index, policy, label)
    else:
        check_folder_weights(files, policy, label)


def _download_hub_model(
    repo_id: str,
    *,
    policy: Policy,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    pipeline: bool = True,
) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from safeloader.resolve import list_files_checked, resolve_commit
    from safeloader.resolve.hub import fetch_file, offline_mode, translate_hub_errors

    cache = None if cache_dir is None else Path(cache_dir)
    if local_files_only or offline_mode():
        with translate_hub_errors(repo_id, revision):
            try:
                folder = Path(
                    snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True, token=token)
                )
            except LocalEntryNotFoundError as exc:
                raise ResolveError(
                    f"model {repo_id} is not in the local Hub cache and downloads are disabled; "
                    "run once online or drop local_files_only / HF_HUB_OFFLINE."
                ) from exc
        commit = folder.name if len(folder.name) == 40 else None
        files = _list_files(folder)
    else:
        # Resolve the branch or tag once; every file is then fetched at that exact commit, cut off past
        # the size the tree listing gives and checked against the hash it gives; the listing itself must agree
        # with what any other endpoint (a mirror) said about this commit before.
        commit = resolve_commit(repo_id, revision, token=token)
        remote = list_files_checked(repo_id, commit, repo_type="model", token=token)
        files = tuple(sorted(remote))
        # The file that locates the snapshot folder: model_index.json for a pipeline, else any non-pickle file.
        plain = [f for f in files if not f.endswith(PICKLE_WEIGHT_SUFFIXES)]
        first = "model_index.json" if pipeline or "model_index.json" in remote else plain[0] if plain else None
        if first is None or first not in remote:
            raise EntryFileNotFoundError(
                f"{repo_id}@{commit} has no model_index.json, so it is not a diffusers pipeline; check the model id."
            )
        first_file = fetch_file(repo_id, remote[first], commit, repo_type="model", token=token, cache_dir=cache)
        folder = first_file.parents[len(Path(first).parts) - 1]
        if pipeline:
            check_weights(files, _read_model_index(folder, repo_id), policy, repo_id)
        else:
            check_folder_weights(files, policy, repo_id)
        for path in files:
            if path == first or (not policy.weights.allow_pickle and path.endswith(PICKLE_WEIGHT_SUFFIXES)):
                continue
            fetch_file(repo_id, remote[path], commit, repo_type="model", token=token, cache_dir=cache)
    index = _read_model_index(folder, repo_id) if pipeline else _optional_index(folder)
    _check(files, index, policy, repo_id, pipeline)
    logger.debug("model %s resolved to %s at %s", repo_id, commit, folder)
    return ModelSource(
        directory=folder,
        repo_id=repo_id,
        commit=commit,
        requested_revision=revision,
        files=files,
        model_index=index,
    )
