"""Find every piece of foreign code a diffusers load would run, and resolve each through the gate.

diffusers runs code that is not its own in three ways, and each is covered here:
``custom_pipeline`` (local dir, ``.py`` path, Hub repo id, community name, or ``<name>.py`` in the
model repo), a ``model_index.json`` whose ``_class_name`` is ``["module", "Class"]`` with ``module.py``
in the repo, and custom components (``"unet": ["my_unet", "MyUNet"]`` with ``unet/my_unet.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeloader.auto_map import code_entries
from safeloader.errors import IntegrityError, RemoteCodeNotTrusted
from safeloader.model_source import ModelSource, component_folders
from safeloader.policy import Policy
from safeloader.resolve.manifest import Manifest

logger = logging.getLogger("safeloader")


@dataclass(frozen=True)
class ForeignCode:
    """Verified bytes of every module the worker may import, keyed by their path in the registry."""

    manifests: tuple[Manifest, ...] = ()
    #: Registry path of the ``custom_pipeline`` module, when one was given.
    pipeline_entry: str | None = None
    code: Mapping[str, bytes] = field(default_factory=dict)
    hashes: Mapping[str, str] = field(default_factory=dict)
    #: Human-readable origin of each piece, for the refusal message and reports.
    origins: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.code


def model_repo_entries(model: ModelSource, custom_pipeline: str | None) -> tuple[list[str], str | None]:
    """Code files inside the model itself, and which of them is the custom pipeline (if any)."""
    entries: list[str] = []
    pipeline_entry = None
    files = set(model.files)
    if custom_pipeline is not None and f"{custom_pipeline}.py" in files:
        pipeline_entry = f"{custom_pipeline}.py"
        entries.append(pipeline_entry)
    class_name = model.model_index.get("_class_name")
    # diffusers uses the ``_class_name`` module whenever it exists, even next to a ``custom_pipeline``
    # (``_resolve_custom_pipeline_and_cls``), so it is foreign code of this load either way.
    if (
        isinstance(class_name, list)
        and class_name
        and isinstance(class_name[0], str)
        and f"{class_name[0]}.py" in files
    ):
        entries.append(f"{class_name[0]}.py")
    for folder in component_folders(model.model_index):
        module = model.model_index[folder][0] if model.model_index[folder] else None
        if isinstance(module, str) and f"{folder}/{module}.py" in files:
            entries.append(f"{folder}/{module}.py")
        # A component loaded by an Auto class (["transformers", "AutoModel"]) imports its folder's auto_map code.
        entries.extend(entry for entry in code_entries(model, folder) if entry not in entries)
    return entries, pipeline_entry


def _check_model_pin(model: ModelSource, policy: Policy) -> None:
    """Code inside the model repo is pinned only when the caller asked for the model's exact commit."""
    from safeloader.resolve.resolver import unpinned_warning

    if model.commit is None:
        return
    pinned = model.requested_revision == model.commit
    warning = unpinned_warning(
        policy, f"code in model repo {model.repo_id}", model.requested_revision, model.commit, pinned=pinned
    )
    if warning is not None:
        logger.warning("unpinned load: %s", warning)


def _merge(manifests: list[Manifest]) -> tuple[dict[str, bytes], dict[str, str]]:
    code: dict[str, bytes] = {}
    hashes: dict[str, str] = {}
    for manifest in manifests:
        for relpath, data in manifest.read_all_verified().items():
            digest = manifest.files[relpath]
            if relpath in hashes and hashes[relpath] != digest:
                raise IntegrityError(
                    f"two different files claim the module path {relpath} ({manifest.source_id}); "
                    "rename one of them so each module path is unique."
                )
            code[relpath] = data
            hashes[relpath] = digest
    return code, hashes


def resolve_repo_code(
    model: ModelSource,
    entries: list[str],
    *,
    policy: Policy,
    token: str | bool | None,
    local_files_only: bool,
    lockfile: str | os.PathLike[str] | None = None,
) -> Manifest:
    """Resolve and verify code files inside the model repo (and their relative imports) at the model's commit."""
    from safeloader.resolve import resolve_local_files, resolve_repo_files
    from safeloader.verify import verify_manifest

    if model.repo_id is None:
        manifest = resolve_local_files(model.directory, entries, policy=policy)
    else:
        _check_model_pin(model, policy)
        # Fetched at the commit the model itself was resolved to: code and weights are one snapshot.
        manifest = resolve_repo_files(
            model.repo_id,
            entries,
            revision=model.commit,
            policy=policy,
            token=token,
            local_files_only=local_files_only,
        )
    if lockfile is not None:
        verify_manifest(manifest, policy, lockfile=Path(lockfile))
    return manifest


def foreign_code_of(manifests: list[Manifest], pipeline_entry: str | None, origins: list[str]) -> ForeignCode:
    code, hashes = _merge(manifests)
    return ForeignCode(
        manifests=tuple(manifests), pipeline_entry=pipeline_entry, code=code, hashes=hashes, origins=tuple(origins)
    )


def collect_foreign_code(
    model: ModelSource,
    *,
    custom_pipeline: str | os.PathLike[str] | None,
    custom_revision: str | None,
    trust_remote_code: bool,
    policy: Policy,
    token: str | bool | None,
    local_files_only: bool,
    lockfile: str | os.PathLike[str] | None = None,
) -> ForeignCode:
    """Resolve and verify all foreign code of this load; refuse it without ``trust_remote_code``."""
    from safeloader.resolve import resolve_pipeline

    spec = os.fspath(custom_pipeline) if custom_pipeline is not None else None
    entries, in_repo_pipeline = model_repo_entries(model, spec)
    origins = []
    if spec is not None and in_repo_pipeline is None:
        origins.append(f"custom_pipeline {spec!r}")
    origins.extend(f"{entry} in {model.repo_id or model.directory}" for entry in entries)
    if origins and not trust_remote_code:
        raise RemoteCodeNotTrusted(
            f"loading this pipeline would run code that is not part of diffusers ({'; '.join(origins)}); "
            "read it with `safeloader fetch`/`safeloader audit`, then pass trust_remote_code=True to run it sandboxed."
        )
    manifests: list[Manifest] = []
    pipeline_entry: str | None = in_repo_pipeline
    if entries:
        manifests.append(
            resolve_repo_code(
                model, entries, policy=policy, token=token, local_files_only=local_files_only, lockfile=lockfile
            )
        )
    if spec is not None and in_repo_pipeline is None:
        pipeline_manifest = resolve_pipeline(
            spec,
            revision=custom_revision,
            policy=policy,
            token=token,
            model_repo=model.repo_id,
            model_revision=model.commit,
            local_files_only=local_files_only,
            lockfile=None if lockfile is None else Path(lockfile),
        )
        manifests.append(pipeline_manifest)
        pipeline_entry = pipeline_manifest.entry
    return foreign_code_of(manifests, pipeline_entry, origins)


def describe(foreign: ForeignCode) -> dict[str, Any]:
    return {
        "pipeline_entry": foreign.pipeline_entry,
        "files": dict(sorted(foreign.hashes.items())),
        "sources": [m.source_id for m in foreign.manifests],
    }
