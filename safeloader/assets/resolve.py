"""Caller-side resolution of an asset argument into exactly the files the worker's method will read.

A local path is read by the caller (the worker cannot: the file may be 0600, and nothing else of the host
may become readable); a Hub repo id is resolved to one commit, checked against ``[sources]`` and the pins,
and downloaded with the caller's token into the caller's Hub cache by the same client as model weights,
every file checked against the hash the Hub lists for it. Every selected file's bytes are then checked by
:mod:`.formats`; those bytes, and only those, are what the worker receives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from safeloader.assets import formats
from safeloader.assets.registry import Role
from safeloader.errors import (
    EntryFileNotFoundError,
    InvalidSpecError,
    PathTraversalError,
    ResolveError,
    SourceDenied,
)
from safeloader.policy import Policy, source_allowed
from safeloader.userpath import expand_user

logger = logging.getLogger("safeloader")

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HUB_URL_RE = re.compile(r"^(?P<repo>[^/]+/[^/]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<path>.+)$")
#: Files in one asset; a folder or repo with more is not an asset, it is a model.
MAX_ASSET_FILES = 1000


@dataclass
class HubAccess:
    """How the caller reaches the Hub for assets and brokered downloads: its token never crosses."""

    token: str | bool | None = None
    cache_dir: Path | None = None
    local_files_only: bool = False


@dataclass(frozen=True)
class Selection:
    """What a method reads inside a folder or repo."""

    role: Role
    weight_name: str | None = None
    subfolder: str | None = None
    extra_folder: str | None = None


@dataclass
class ResolvedAsset:
    """Verified bytes by relative path, and the relative path the worker's argument must name ("" = the root)."""

    label: str
    files: dict[str, bytes]
    target: str


def check_relpath(relpath: str, *, what: str) -> str:
    """``relpath`` as a clean relative POSIX path, or :class:`PathTraversalError`."""
    path = PurePosixPath(relpath)
    if (
        not relpath
        or "\\" in relpath
        or "\0" in relpath
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in relpath.split("/"))
    ):
        raise PathTraversalError(f"{what} {relpath!r} is not a plain relative path inside its folder; fix the name.")
    return path.as_posix()


def check_source(policy: Policy, source_id: str) -> None:
    if not source_allowed(policy, source_id):
        raise SourceDenied(
            f"policy {policy.name!r} does not allow source {source_id!r}; "
            "add it to [sources] allow (and remove it from deny) or choose another source."
        )


def is_repo_id(value: str) -> bool:
    return _REPO_ID_RE.fullmatch(value) is not None and ".." not in value


def _parent(relpath: str) -> str:
    parent = PurePosixPath(relpath).parent.as_posix()
    return "" if parent == "." else parent


def select(listing: Iterable[str], selection: Selection, policy: Policy, label: str) -> list[str]:
    """The files of a folder or repo that ``selection`` reads; explicitly named ones must exist and be allowed."""
    files = set(listing)
    subfolder = (selection.subfolder or "").strip("/")
    if subfolder:
        check_relpath(subfolder, what="subfolder")
    if selection.role == "config":
        chosen = sorted(f for f in files if formats.is_config(f))
        if not chosen:
            raise EntryFileNotFoundError(f"{label} holds no configuration files; check the config folder or repo.")
        return chosen
    if selection.weight_name is not None:
        name = check_relpath(selection.weight_name, what="weight_name")
        # diffusers looks for the name at the root first, then inside the subfolder.
        chosen = [path for path in dict.fromkeys([name, f"{subfolder}/{name}" if subfolder else name]) if path in files]
        if not chosen:
            where = f" (or {subfolder}/{name})" if subfolder else ""
            raise EntryFileNotFoundError(f"{label} has no file {name}{where}; check weight_name and subfolder.")
        for path in chosen:
            reason = formats.refusal(path, policy)
            if reason is not None:
                formats.check(path, b"", policy)  # raises the typed refusal
    else:
        folders = {"", subfolder}
        chosen = []
        for path in sorted(files):
            if _parent(path) in folders and (formats.is_weights(path) or formats.is_config(path)):
                if formats.refusal(path, policy) is None:
                    chosen.append(path)
                else:
                    logger.info("not handing %s of %s to the sandbox: %s", path, label, formats.refusal(path, policy))
        if not any(formats.is_weights(path) for path in chosen):
            refused = [p for p in sorted(files) if _parent(p) in folders and formats.is_pickle(p)]
            if refused:
                formats.check(refused[0], b"", policy)
            raise EntryFileNotFoundError(
                f"{label} holds no safetensors weights{' in ' + subfolder if subfolder else ''}; "
                "pass weight_name, or check the path or repo."
            )
    if selection.extra_folder:
        extra = selection.extra_folder.strip("/")
        folder = check_relpath(
            extra if "/" in extra or not subfolder else f"{subfolder}/{extra}", what="image encoder folder"
        )
        chosen += [
            path
            for path in sorted(files)
            if _parent(path) == folder
            and (formats.is_weights(path) or formats.is_config(path))
            and formats.refusal(path, policy) is None
            and path not in chosen
        ]
    if len(chosen) > MAX_ASSET_FILES:
        raise ResolveError(f"{label} would hand {len(chosen)} files to the sandbox; name the file with weight_name.")
    return chosen


def _local_listing(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            found.append(Path(dirpath, name).relative_to(root).as_posix())
            if len(found) > 100 * MAX_ASSET_FILES:
                raise ResolveError(f"{root} holds too many files to be an asset; point at the asset's own folder.")
    return found


def _read_inside(root: Path, relpath: str) -> bytes:
    real = (root / relpath).resolve()
    if not real.is_relative_to(root):
        raise PathTraversalError(
            f"{relpath} in {root} resolves to {real}, outside the folder; replace the symlink with the file itself."
        )
    try:
        return real.read_bytes()
    except OSError as exc:
        raise EntryFileNotFoundError(f"cannot read {real} ({exc.strerror}); check the file.") from exc


def _checked(files: Mapping[str, bytes], policy: Policy) -> dict[str, bytes]:
    for relpath, data in files.items():
        formats.check(relpath, data, policy)
    return dict(files)


def resolve_local(path: Path, selection: Selection, policy: Policy) -> ResolvedAsset:
    """A local file (handed over alone) or folder (the files ``selection`` reads)."""
    real = expand_user(path).resolve()
    check_source(policy, f"local:{real}")
    if real.is_file():
        if selection.role == "config":
            raise InvalidSpecError(f"{path} is a file; pass the folder (or repo) holding the configuration.")
        data = _read_inside(real.parent, real.name)
        return ResolvedAsset(str(real), _checked({real.name: data}, policy), real.name)
    listing = _local_listing(real)
    chosen = select(listing, selection, policy, str(real))
    return ResolvedAsset(str(real), _checked({rel: _read_inside(real, rel) for rel in chosen}, policy), "")


def hub_revision_allowed(policy: Policy, repo_id: str, revision: str | None, commit: str) -> None:
    """Apply ``require_pinned_revision`` to a Hub asset, or warn about the unpinned revision."""
    from safeloader.resolve.hub import is_commit
    from safeloader.resolve.resolver import unpinned_warning

    warning = unpinned_warning(policy, repo_id, revision, commit, pinned=is_commit(revision))
    if warning is not None:
        logger.warning("%s", warning)


def resolve_hub(
    repo_id: str, revision: str | None, selection: Selection, policy: Policy, access: HubAccess
) -> ResolvedAsset:
    """The files ``selection`` reads in ``repo_id`` at one commit, downloaded and checked by the caller."""
    from huggingface_hub import snapshot_download

    from safeloader.resolve.hub import fetch_file, list_files, offline_mode, resolve_commit, translate_hub_errors

    check_source(policy, repo_id)
    label = f"{repo_id}@{revision or 'main'}"
    if access.local_files_only or offline_mode():
        with translate_hub_errors(repo_id, revision):
            folder = Path(
                snapshot_download(
                    repo_id, revision=revision, cache_dir=access.cache_dir, local_files_only=True, token=access.token
                )
            )
        chosen = select(_local_listing(folder), selection, policy, label)
        return ResolvedAsset(label, _checked({rel: _read_inside(folder, rel) for rel in chosen}, policy), "")
    commit = resolve_commit(repo_id, revision, token=access.token)
    hub_revision_allowed(policy, repo_id, revision, commit)
    listing = list_files(repo_id, commit, repo_type="model", token=access.token)
    chosen = select(listing, selection, policy, f"{repo_id}@{commit}")
    files = {
        rel: fetch_file(
            repo_id, listing[rel], commit, repo_type="model", token=access.token, cache_dir=access.cache_dir
        ).read_bytes()
        for rel in chosen
    }
    return ResolvedAsset(f"{repo_id}@{commit}", _checked(files, policy), "")


def _hub_url(value: str) -> tuple[str, str, str] | None:
    """``(repo, revision, path)`` of a Hub file URL (``…/org/name/blob/rev/path``), else ``None``."""
    from safeloader.resolve.hub import hub_endpoint

    for prefix in {hub_endpoint() + "/", "https://huggingface.co/", "hf://"}:
        if value.startswith(prefix):
            match = _HUB_URL_RE.fullmatch(value[len(prefix) :])
            if match:
                return match["repo"], match["revision"], match["path"]
    return None


def resolve_argument(
    value: str | os.PathLike[str],
    selection: Selection,
    policy: Policy,
    access: HubAccess,
    *,
    revision: str | None,
) -> ResolvedAsset:
    """Resolve one path, repo id or Hub file URL the caller passed to an asset-taking method."""
    spec = os.fspath(value)
    local = expand_user(spec)
    if local.exists():
        return resolve_local(local, selection, policy)
    url = _hub_url(spec) if selection.role == "single_file" else None
    if url is not None:
        repo_id, url_revision, relpath = url
        if not is_repo_id(repo_id):
            raise InvalidSpecError(f"{spec!r} does not name a Hub repo of the form org/name; check the URL.")
        single = dataclasses.replace(selection, role="weights", weight_name=check_relpath(relpath, what="file"))
        resolved = resolve_hub(repo_id, url_revision, single, policy, access)
        resolved.target = single.weight_name or ""
        return resolved
    if is_repo_id(spec):
        if selection.role == "single_file" and selection.weight_name is None:
            raise InvalidSpecError(
                f"{spec!r} is a repo, not a single file; pass the file's path or Hub URL "
                "(https://huggingface.co/org/name/blob/<revision>/<file>)."
            )
        return resolve_hub(spec, revision, selection, policy, access)
    raise InvalidSpecError(
        f"{spec!r} is neither an existing file or folder nor a Hub repo id of the form org/name; check the value."
    )


def describe(value: Any) -> str:
    return repr(os.fspath(value)) if isinstance(value, str | os.PathLike) else type(value).__name__
