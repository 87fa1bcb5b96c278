"""Talk to the Hub through the real ``huggingface_hub`` client, one resolved commit at a time.

``huggingface_hub`` snapshots ``HF_ENDPOINT`` when it is imported, so every call here passes the endpoint
read from the environment at call time. Downloads go to a private temp dir (never the user's HF cache)
and their bytes are checked against the git blob id (or LFS sha256) the tree listing gave for the same
commit before anyone hashes them into the blob store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.errors import RevisionNotFoundError as HfRevisionNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import tqdm as hf_tqdm

try:  # huggingface_hub >= 2 speaks httpx2, 1.x httpx: catch the transport errors of whichever is installed
    from httpx2 import HTTPError as _HttpClientError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import HTTPError as _HttpClientError  # type: ignore[assignment,no-redef,unused-ignore]

from safeloader.errors import (
    DownloadError,
    EntryFileNotFoundError,
    IntegrityError,
    InvalidSpecError,
    RepoNotFoundError,
    ResolveError,
    RevisionNotFoundError,
)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}


def is_commit(revision: str | None) -> bool:
    return revision is not None and COMMIT_RE.fullmatch(revision) is not None


def hub_endpoint() -> str:
    """The Hub endpoint, read now (``$HF_ENDPOINT``, else huggingface_hub's default)."""
    return (os.environ.get("HF_ENDPOINT") or hf_constants._HF_DEFAULT_ENDPOINT).rstrip("/")


def normalized_endpoint(endpoint: str | None = None) -> str:
    """``endpoint`` (default: :func:`hub_endpoint`) in one canonical spelling, for cache keys and messages.

    Scheme and host are lower-cased, a default port (80 for http, 443 for https) and trailing slashes are
    dropped, so that ``HTTPS://Hub.Example/`` and ``https://hub.example:443`` name one endpoint.
    """
    raw = (endpoint if endpoint is not None else hub_endpoint()).strip()
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    # User and password in the URL are left out: they are not the endpoint's identity and must not reach the cache.
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) else f"{host}:{port}"
    return urllib.parse.urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def offline_mode() -> bool:
    """``$HF_HUB_OFFLINE`` read now (huggingface_hub's own constant is frozen at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _OFFLINE_VALUES


def _api() -> HfApi:
    return HfApi(endpoint=hub_endpoint())


@contextlib.contextmanager
def hub_errors(repo_id: str, repo_type: str, revision: str | None, what: str) -> Iterator[None]:
    """Translate huggingface_hub and network exceptions into safeloader errors."""
    kind = "dataset" if repo_type == "dataset" else "model"
    at = f"@{revision}" if revision else ""
    try:
        yield
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise RepoNotFoundError(
            f"{kind} repository {repo_id} was not found or is not accessible at {hub_endpoint()}; "
            "check the repo id, or pass a token that can read it."
        ) from exc
    except HfRevisionNotFoundError as exc:
        raise RevisionNotFoundError(
            f"revision {revision!r} does not exist in {kind} repository {repo_id}; "
            "use an existing branch, tag or 40-hex commit."
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise DownloadError(
            f"{what} from {repo_id}{at} is not in the safeloader cache and the Hub may not be contacted; "
            "fetch it once online (`safeloader fetch`) or unset HF_HUB_OFFLINE."
        ) from exc
    except HFValidationError as exc:
        raise InvalidSpecError(
            f"{repo_id!r} is not a valid Hub repo id or {revision!r} not a valid revision ({exc}); "
            "use the form org/name and an existing branch, tag or commit."
        ) from exc
    except EntryNotFoundError as exc:
        raise EntryFileNotFoundError(
            f"{what} was not found in {repo_id}{at}; check the file name and revision."
        ) from exc
    except (_HttpClientError, HfHubHTTPError, OSError) as exc:
        raise DownloadError(
            f"downloading {what} from {repo_id}{at} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "nothing was stored — check the network or HF_ENDPOINT and retry."
        ) from exc


def resolve_commit(
    repo_id: str, revision: str | None, *, repo_type: str = "model", token: str | bool | None = None
) -> str:
    """Resolve a branch, tag or commit of ``repo_id`` to the 40-hex commit it names right now."""
    rev = revision or "main"
    with hub_errors(repo_id, repo_type, rev, "repository information"):
        info = _api().repo_info(repo_id, repo_type=repo_type, revision=rev, token=token)
    sha = getattr(info, "sha", None)
    if not isinstance(sha, str) or not is_commit(sha):
        raise ResolveError(
            f"the Hub at {hub_endpoint()} returned no commit for {repo_id}@{rev}; check HF_ENDPOINT points at a Hub."
        )
    if is_commit(rev) and sha != rev:
        raise IntegrityError(
            f"the Hub answered commit {sha} when asked for {repo_id}@{rev}; refusing it — check HF_ENDPOINT."
        )
    return sha


def translate_hub_errors(
    repo_id: str, revision: str | None, *, repo_type: str = "model", what: str = "files"
) -> contextlib.AbstractContextManager[None]:
    """:func:`hub_errors` for callers that fetch other things than pipeline code (e.g. model snapshots)."""
    return hub_errors(repo_id, repo_type, revision, what)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    git_oid: str
    lfs_sha256: str | None


def list_files(repo_id: str, commit: str, *, repo_type: str, token: str | bool | None) -> dict[str, RemoteFile]:
    """Every file of ``repo_id`` at ``commit`` with the ids the Hub reports for it."""
    with hub_errors(repo_id, repo_type, commit, "the file list"):
        entries = list(
            _api().list_repo_tree(repo_id, revision=commit, repo_type=repo_type, recursive=True, token=token)
        )
    files: dict[str, RemoteFile] = {}
    for entry in entries:
        if isinstance(entry, RepoFile):
            lfs = entry.lfs
            files[entry.path] = RemoteFile(
                entry.path, int(entry.size), entry.blob_id, lfs.sha256 if lfs is not None else None
            )
    return files


def _size_capped_progress(repo_id: str, remote: RemoteFile, commit: str) -> type[hf_tqdm]:
    """A progress bar class that aborts a download once it exceeds the size the tree listing gave.

    ``hf_hub_download`` trusts the response's own length, so a server sending an endless body would fill the
    disk; its progress bar sees every chunk before it is written, which makes it the one place to stop it.
    """

    class SizeCappedProgress(hf_tqdm):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            initial = kwargs.get("initial", 0)
            self.bytes_on_disk = initial if isinstance(initial, int) else 0

        def update(self, n: float | None = 1) -> bool | None:
            self.bytes_on_disk += int(n or 0)
            if self.bytes_on_disk > remote.size:
                raise IntegrityError(
                    f"{remote.path} downloaded from {repo_id}@{commit} is longer than the {remote.size} bytes the Hub "
                    "lists for it; nothing was stored — retry, and report the mirror if it persists."
                )
            return super().update(n)

    return SizeCappedProgress


def _matches_listing(path: Path, remote: RemoteFile) -> bool:
    """Whether the file at ``path`` has the size and hash (LFS sha256, else git blob id) of ``remote``."""
    size = path.stat().st_size
    if size != remote.size:
        return False
    digest = hashlib.sha256() if remote.lfs_sha256 is not None else hashlib.sha1(usedforsecurity=False)
    if remote.lfs_sha256 is None:
        digest.update(b"blob %d\0" % size)
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == (remote.lfs_sha256 or remote.git_oid)


def fetch_file(
    repo_id: str,
    remote: RemoteFile,
    commit: str,
    *,
    repo_type: str,
    token: str | bool | None,
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Download one file at ``commit`` (into ``local_dir``, else the Hub cache) and check it against ``remote``.

    The body is cut off past the listed size, and the stored file must have the listed hash; a file that
    does not is deleted and an :class:`IntegrityError` raised, so nothing unverified is left to be used.
    The Hub cache is keyed by repo and commit only, not by endpoint: a file found there that this endpoint's
    listing contradicts (put there through a mirror, or altered) is deleted and downloaded once more.
    """
    for force_download in (False, True):
        with hub_errors(repo_id, repo_type, commit, remote.path):
            local = Path(
                hf_hub_download(
                    repo_id,
                    remote.path,
                    repo_type=repo_type,
                    revision=commit,
                    local_dir=local_dir,
                    cache_dir=cache_dir,
                    endpoint=hub_endpoint(),
                    token=token,
                    etag_timeout=30,
                    force_download=force_download,
                    tqdm_class=_size_capped_progress(repo_id, remote, commit),
                )
            )
        if _matches_listing(local, remote):
            return local
        # In the Hub cache the snapshot entry is a link to a blob: remove both, or the next run would reuse it.
        for stale in {local.resolve(), local}:
            with contextlib.suppress(OSError):
                stale.unlink()
        if local_dir is not None:
            break  # a fresh private folder: the bytes came from this endpoint just now
    raise IntegrityError(
        f"{remote.path} downloaded from {repo_id}@{commit} does not match the hash the Hub lists for it; "
        "nothing was stored — retry, and report the mirror if it persists."
    )


def download_file(
    repo_id: str, remote: RemoteFile, commit: str, *, repo_type: str, token: str | bool | None, workdir: Path
) -> bytes:
    """Download one file at ``commit`` into ``workdir`` and return its bytes, checked against ``remote``."""
    return fetch_file(repo_id, remote, commit, repo_type=repo_type, token=token, local_dir=workdir).read_bytes()


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A temp dir only this process uses for downloads; removed with everything in it afterwards."""
    with tempfile.TemporaryDirectory(prefix="safeloader-dl-") as tmp:
        yield Path(tmp)
