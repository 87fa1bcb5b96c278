"""Turn a ``custom_pipeline`` value into a verified :class:`Manifest` of cached, hashed files.

Every branch or tag is resolved to one commit SHA once; the file list, each file and the signature are
then fetched at that SHA only, so moving a branch between check and use cannot swap the code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from safeloader.errors import (
    DownloadError,
    EntryFileNotFoundError,
    IntegrityError,
    InvalidSpecError,
    PathTraversalError,
    SourceDenied,
    UnpinnedRevisionError,
)
from safeloader.localfiles import check_plain
from safeloader.policy import Policy, source_allowed
from safeloader.resolve.cache import Cache, entry_key
from safeloader.resolve.hub import (
    RemoteFile,
    download_file,
    is_commit,
    list_files,
    normalized_endpoint,
    offline_mode,
    private_workdir,
    resolve_commit,
)
from safeloader.resolve.identity import file_source_id
from safeloader.resolve.imports import check_relpath, collect_closure
from safeloader.resolve.manifest import Manifest
from safeloader.resolve.spec import (
    LocalTarget,
    RemoteTarget,
    community_target,
    hub_target,
    local_target,
    model_repo_target,
)
from safeloader.userpath import expand_user

if TYPE_CHECKING:
    from safeloader.verify.verifier import VerificationResult

logger = logging.getLogger("safeloader")
SIGNATURE_FILE = "safeloader.sig"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_source(policy: Policy, source_id: str) -> None:
    if not source_allowed(policy, source_id):
        raise SourceDenied(
            f"policy {policy.name!r} does not allow source {source_id!r}; "
            "add it to [sources] allow (and remove it from deny) or choose another pipeline."
        )


def check_file_source(policy: Policy, entry_source_id: str, file_source: str, relpath: str) -> None:
    """Refuse a file of the import closure whose own source id the policy does not allow."""
    if file_source != entry_source_id and not source_allowed(policy, file_source):
        raise SourceDenied(
            f"policy {policy.name!r} does not allow source {file_source!r}, which {entry_source_id} imports "
            f"({relpath}); remove that import from the pipeline or allow {file_source!r} in [sources]."
        )


def list_files_checked(
    repo_id: str, commit: str, *, repo_type: str, token: str | bool | None, cache: Cache | None = None
) -> dict[str, RemoteFile]:
    """The endpoint's file list for ``repo_id@commit``, refused if it contradicts another endpoint's.

    Every answer is recorded in the cache (see :meth:`Cache.check_listing`): a mirror that serves other files
    under a real commit id is caught when it, or the real Hub after it, answers for that commit.
    """
    listing = list_files(repo_id, commit, repo_type=repo_type, token=token)
    (cache or Cache()).check_listing(
        repo=repo_id,
        repo_type=repo_type,
        commit=commit,
        endpoint=normalized_endpoint(),
        files={path: (remote.git_oid, remote.lfs_sha256) for path, remote in listing.items()},
    )
    return listing


# --- local pipelines --------------------------------------------------------------------------


def _resolve_local(target: LocalTarget, policy: Policy, cache: Cache, extra_entries: Sequence[str] = ()) -> Manifest:
    _check_source(policy, target.source_id)
    root = target.root

    def inside(relpath: str) -> Path:
        path = root / relpath
        real = path.resolve()
        if not real.is_relative_to(root):
            raise PathTraversalError(
                f"{relpath} in {root} resolves to {real}, outside the pipeline directory; "
                "refusing it — replace the symlink with the file itself."
            )
        if os.path.lexists(real):
            check_plain(real, shown_as=path)  # no hard link, device, FIFO or socket is ever read
        return real

    def exists(relpath: str) -> bool:
        return inside(relpath).is_file()

    def read_bytes(relpath: str) -> bytes:
        try:
            return inside(relpath).read_bytes()
        except OSError as exc:
            raise EntryFileNotFoundError(f"cannot read {root / relpath} ({exc.strerror}); check the file.") from exc

    def read(relpath: str) -> bytes:
        own_id = file_source_id(target.kind, target.source_id, str(root), relpath)
        check_file_source(policy, target.source_id, own_id, relpath)
        return read_bytes(relpath)

    files = collect_closure(target.entry, read, exists)
    for entry in extra_entries:
        files.update(collect_closure(entry, read, exists))
    digests = {rel: cache.store_blob(data) for rel, data in files.items()}
    signature = cache.store_blob(read_bytes(SIGNATURE_FILE)) if exists(SIGNATURE_FILE) else None
    return Manifest(
        source=target.kind,
        source_id=target.source_id,
        repo=str(root),
        repo_type=None,
        requested_revision=None,
        commit=None,
        entry=target.entry,
        files=digests,
        fetched_at=_now(),
        blob_root=cache.blob_root,
        subfolder="",
        signature_sha256=signature,
    )


# --- remote pipelines -------------------------------------------------------------------------


def _unpinned_message(source_id: str, revision: str | None, commit: str) -> str:
    return (
        f"{source_id} was requested at {revision or 'the default branch'!r}, which points at commit {commit} now; "
        f"pass revision={commit!r} to pin it."
    )


def unpinned_warning(policy: Policy, source_id: str, revision: str | None, commit: str, *, pinned: bool) -> str | None:
    """The pin rule for everything fetched from the Hub (pipeline code, model-repo code, assets, brokered files).

    ``None`` when the request named its commit; under ``require_pinned_revision`` an unpinned request is an
    :class:`UnpinnedRevisionError`; otherwise the warning to log and report, with the commit ready to paste.
    """
    if pinned:
        return None
    message = _unpinned_message(source_id, revision, commit)
    if policy.sources.require_pinned_revision:
        raise UnpinnedRevisionError(f"policy {policy.name!r} requires a pinned commit: {message}")
    return message


def _commit_for(
    kind: str, repo: str, repo_type: str, revision: str | None, *, token: str | bool | None, offline: bool, cache: Cache
) -> str:
    if is_commit(revision):
        assert revision is not None
        if not offline:
            return resolve_commit(repo, revision, repo_type=repo_type, token=token)
        return revision
    ref_key = entry_key("ref", normalized_endpoint(), kind, repo_type, repo, revision or "main")
    if offline:
        cached = cache.load_ref(ref_key)
        if cached is None:
            raise DownloadError(
                f"{repo}@{revision or 'main'} has never been resolved here and the Hub may not be contacted; "
                "fetch it once online or pass the 40-hex commit of a cached fetch."
            )
        return cached
    commit = resolve_commit(repo, revision, repo_type=repo_type, token=token)
    cache.save_ref(ref_key, commit)
    return commit


def _fetch_remote(
    *,
    kind: str,
    repo: str,
    repo_type: str,
    subfolder: str,
    entries: Sequence[str],
    commit: str,
    source_id: str,
    requested: str | None,
    token: str | bool | None,
    offline: bool,
    cache: Cache,
    policy: Policy,
) -> Manifest:
    """Return the cached manifest for ``repo@commit`` from this endpoint or download it once (under the entry lock)."""
    for entry in entries:
        check_relpath(entry, what="entry file")
    endpoint = normalized_endpoint()
    key = entry_key(endpoint, kind, repo_type, repo, subfolder, commit, *entries)
    with cache.lock(key):
        cached = cache.load_manifest(kind, key)
        if cached is not None:
            described = (cached.endpoint, cached.repo, cached.commit, cached.subfolder, cached.entry)
            if described != (endpoint, repo, commit, subfolder, entries[0]):
                raise IntegrityError(
                    f"cached manifest for {source_id}@{commit} from {endpoint} describes "
                    f"{cached.repo}@{cached.commit} from {cached.endpoint} instead; "
                    "the cache was modified — delete it and fetch again."
                )
            return cached
        if offline:
            raise DownloadError(
                f"{source_id} at commit {commit} is not in the safeloader cache and the Hub may not be contacted; "
                "fetch it once online (`safeloader fetch`) or unset HF_HUB_OFFLINE."
            )
        listing = list_files_checked(repo, commit, repo_type=repo_type, token=token, cache=cache)
        prefix = f"{subfolder}/" if subfolder else ""
        for remote_path in listing:
            if remote_path.startswith(prefix):
                check_relpath(remote_path, what="file name in the repository")

        with private_workdir() as workdir:

            def exists(relpath: str) -> bool:
                return prefix + relpath in listing

            def read(relpath: str) -> bytes:
                # A file of another publisher (a community sibling) is refused before it is even downloaded.
                check_file_source(policy, source_id, file_source_id(kind, source_id, repo, relpath), relpath)
                remote = listing.get(prefix + relpath)
                if remote is None:
                    raise EntryFileNotFoundError(
                        f"{prefix + relpath} does not exist in {repo} at commit {commit}; "
                        "check the pipeline name, the file name and the revision."
                    )
                return download_file(repo, remote, commit, repo_type=repo_type, token=token, workdir=workdir)

            files: dict[str, bytes] = {}
            for entry in entries:
                files.update(collect_closure(entry, read, exists))
            signature_bytes = (
                download_file(
                    repo, listing[prefix + SIGNATURE_FILE], commit, repo_type=repo_type, token=token, workdir=workdir
                )
                if exists(SIGNATURE_FILE)
                else None
            )
        # Bytes enter the blob store only after every download succeeded and matched the Hub's ids.
        digests = {rel: cache.store_blob(data) for rel, data in files.items()}
        signature = cache.store_blob(signature_bytes) if signature_bytes is not None else None
        manifest = Manifest(
            source=kind,  # type: ignore[arg-type]
            source_id=source_id,
            repo=repo,
            repo_type=repo_type,
            requested_revision=requested,
            commit=commit,
            entry=entries[0],
            files=digests,
            fetched_at=_now(),
            blob_root=cache.blob_root,
            subfolder=subfolder,
            signature_sha256=signature,
            endpoint=endpoint,
        )
        manifest.read_all_verified()
        cache.save_manifest(manifest, key)
        return manifest


def _resolve_remote(
    target: RemoteTarget,
    entries: Sequence[str],
    policy: Policy,
    *,
    token: str | bool | None,
    offline: bool,
    cache: Cache,
) -> Manifest:
    _check_source(policy, target.source_id)
    commit = _commit_for(
        target.kind, target.repo, target.repo_type, target.revision, token=token, offline=offline, cache=cache
    )
    warning = unpinned_warning(policy, target.source_id, target.revision, commit, pinned=is_commit(target.revision))
    manifest = _fetch_remote(
        kind=target.kind,
        repo=target.repo,
        repo_type=target.repo_type,
        subfolder=target.subfolder,
        entries=entries,
        commit=commit,
        source_id=target.source_id,
        requested=target.revision,
        token=token,
        offline=offline,
        cache=cache,
        policy=policy,
    )
    notes = dict(manifest.notes)
    notes.pop("unpinned_warning", None)
    if warning is not None:
        notes["unpinned_warning"] = warning
        logger.warning("%s", warning)
    # A cached manifest may have been written for another request of the same commit.
    return dataclasses.replace(manifest, requested_revision=target.revision, source_id=target.source_id, notes=notes)


# --- public API -------------------------------------------------------------------------------


def _with_verification_notes(manifest: Manifest, result: VerificationResult) -> dict[str, str]:
    notes = dict(manifest.notes)
    if result.signature_key is not None:
        notes["signature_key"] = result.signature_key
    if result.signature_warning is not None:
        notes["signature_warning"] = result.signature_warning
    return notes


def _model_repo_has(
    model_repo: str, model_revision: str | None, name: str, *, token: str | bool | None, offline: bool, cache: Cache
) -> str | None:
    """The model repo commit if ``<name>.py`` is a file of ``model_repo`` there, else ``None``."""
    if not name or "/" in name or name.endswith(".py"):
        return None
    commit = _commit_for("model_repo", model_repo, "model", model_revision, token=token, offline=offline, cache=cache)
    if offline:
        key = entry_key(normalized_endpoint(), "model_repo", "model", model_repo, "", commit, f"{name}.py")
        return commit if cache.manifest_path("model_repo", key).is_file() else None
    listing = list_files_checked(model_repo, commit, repo_type="model", token=token, cache=cache)
    return commit if f"{name}.py" in listing else None


def resolve_pipeline(
    spec: str | os.PathLike[str],
    *,
    revision: str | None = None,
    policy: Policy,
    token: str | bool | None = None,
    model_repo: str | None = None,
    model_revision: str | None = None,
    local_files_only: bool = False,
    lockfile: Path | None = None,
) -> Manifest:
    """Resolve ``custom_pipeline=spec`` (and ``custom_revision=revision``) to a verified manifest.

    ``spec`` takes every form diffusers 0.42 accepts (see :mod:`safeloader.resolve.spec`). With a
    ``lockfile``, the pipeline must be listed in it; a missing revision means the locked commit, and any
    difference from the locked commit or hashes raises :class:`~safeloader.errors.LockDriftError`. With
    ``local_files_only`` or ``HF_HUB_OFFLINE=1``, only the safeloader cache is used.
    """
    from safeloader.verify import verify_manifest
    from safeloader.verify.lockfile import find_locked, read_lockfile

    spec_str = os.fspath(spec)
    offline = local_files_only or offline_mode()
    cache = Cache()
    locked = find_locked(read_lockfile(lockfile), spec_str, lockfile) if lockfile is not None else None

    manifest: Manifest
    local = local_target(spec_str) if spec_str.endswith(".py") else None
    model_commit = None
    if local is None and model_repo is not None:
        model_commit = _model_repo_has(model_repo, model_revision, spec_str, token=token, offline=offline, cache=cache)
    if local is None and model_commit is None:
        local = local_target(spec_str)

    if local is not None:
        manifest = _resolve_local(local, policy, cache)
    else:
        if model_commit is not None:
            assert model_repo is not None
            target = model_repo_target(model_repo, model_revision, spec_str)
        elif "/" not in spec_str:
            target = community_target(spec_str, revision)
        else:
            target = hub_target(spec_str, revision)
        if locked is not None and target.revision is None and locked.commit is not None:
            target = dataclasses.replace(target, revision=locked.commit)
        manifest = _resolve_remote(target, [target.entry], policy, token=token, offline=offline, cache=cache)

    result = verify_manifest(manifest, policy, lockfile=lockfile, spec=spec_str)
    notes = _with_verification_notes(manifest, result)
    if result.lockfile_matched:
        notes["lockfile"] = str(lockfile)
    return dataclasses.replace(manifest, notes=notes)


def resolve_repo_files(
    repo_id: str,
    entries: Sequence[str],
    *,
    revision: str | None,
    policy: Policy,
    repo_type: str = "model",
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Manifest:
    """Fetch code files that live inside a model repo (custom components), plus their relative imports.

    All of ``entries`` and their imports come from one resolved commit; ``entries[0]`` is the manifest's
    entry. The source kind is ``model_repo`` and the source id is ``repo_id``.
    """
    from safeloader.verify import verify_manifest

    if not entries:
        raise EntryFileNotFoundError(
            f"no code file of {repo_id} was named; pass at least one path such as 'unet/x.py'."
        )
    for entry in entries:
        check_relpath(entry, what="code file")
        if not entry.endswith(".py"):
            raise InvalidSpecError(f"{entry!r} is not a Python file; name the .py file that defines the class.")
    target = dataclasses.replace(model_repo_target(repo_id, revision, "x"), repo_type=repo_type, entry=entries[0])
    manifest = _resolve_remote(
        target, list(entries), policy, token=token, offline=local_files_only or offline_mode(), cache=Cache()
    )
    result = verify_manifest(manifest, policy)
    return dataclasses.replace(manifest, notes=_with_verification_notes(manifest, result))


def resolve_local_files(directory: str | os.PathLike[str], entries: Sequence[str], *, policy: Policy) -> Manifest:
    """Like :func:`resolve_repo_files` for a local model directory: hash and cache ``entries`` and imports.

    The source kind is ``local_dir`` and the source id ``local:<absolute directory>``; ``entries[0]`` is the
    manifest's entry.
    """
    from safeloader.verify import verify_manifest

    root = expand_user(directory).resolve()
    if not entries:
        raise EntryFileNotFoundError(f"no code file of {root} was named; pass a path such as 'unet/x.py'.")
    for entry in entries:
        check_relpath(entry, what="code file")
    manifest = _resolve_local(LocalTarget("local_dir", root, entries[0]), policy, Cache(), entries[1:])
    result = verify_manifest(manifest, policy)
    return dataclasses.replace(manifest, notes=_with_verification_notes(manifest, result))
