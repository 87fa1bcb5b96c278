"""Classify a ``custom_pipeline`` value the way diffusers 0.42 does.

diffusers' order (``_get_custom_pipeline_class`` + ``get_cached_module_file``): a value ending in ``.py`` is
a file path; with a model repo whose files include ``<value>.py``, that file; a directory holding
``pipeline.py``; a value without ``/`` is a community pipeline name; anything else is a Hub repo id
whose ``pipeline.py`` is loaded at ``custom_revision``. Community names read
``{folder}/{name}.py`` from the dataset ``diffusers/community-pipelines-mirror``, where the folder is
``v{diffusers version}`` by default, ``v{custom_revision}`` for a release number and ``main`` for
``main``. safeloader adds one form: a 40-hex ``custom_revision`` pins the mirror's commit (folder as
default), since the folder names are branches of nothing and cannot be pinned otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safeloader.errors import EntryFileNotFoundError, InvalidSpecError, RevisionNotFoundError
from safeloader.resolve.hub import is_commit
from safeloader.userpath import expand_user

COMMUNITY_MIRROR_ID = "diffusers/community-pipelines-mirror"
PIPELINE_FILE = "pipeline.py"
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMUNITY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class LocalTarget:
    kind: Literal["local_dir", "local_file"]
    root: Path
    entry: str

    @property
    def source_id(self) -> str:
        return f"local:{self.root / self.entry if self.kind == 'local_file' else self.root}"


@dataclass(frozen=True)
class RemoteTarget:
    kind: Literal["hub", "community", "model_repo"]
    repo: str
    repo_type: str
    #: The revision passed to the Hub (branch, tag or commit).
    revision: str | None
    subfolder: str
    entry: str
    source_id: str


def default_community_folder() -> str:
    import diffusers

    version = diffusers.__version__
    # A development build has no release folder in the mirror: diffusers falls back to `main` then.
    return "main" if re.search(r"dev|rc|a\d|b\d", version) else "v" + ".".join(version.split(".")[:3])


def community_target(name: str, revision: str | None) -> RemoteTarget:
    """Where diffusers would read community pipeline ``name`` for ``custom_revision=revision``."""
    if not _COMMUNITY_NAME_RE.fullmatch(name) or name.endswith(".py"):
        raise InvalidSpecError(
            f"{name!r} is not a valid community pipeline name; use a name like 'lpw_stable_diffusion'."
        )
    mirror_revision: str | None = None
    if revision is None:
        folder = default_community_folder()
    elif revision == "main":
        folder = "main"
    elif _RELEASE_RE.fullmatch(revision.removeprefix("v")):
        folder = "v" + revision.removeprefix("v")
    elif is_commit(revision):
        folder, mirror_revision = default_community_folder(), revision
    else:
        raise RevisionNotFoundError(
            f"custom_revision {revision!r} is not valid for community pipeline {name}; "
            "use a diffusers release like '0.42.1', 'main', or a 40-hex commit of the mirror."
        )
    return RemoteTarget(
        kind="community",
        repo=COMMUNITY_MIRROR_ID,
        repo_type="dataset",
        revision=mirror_revision,
        subfolder=folder,
        entry=f"{name}.py",
        source_id=f"community:{name}",
    )


def local_target(spec: str) -> LocalTarget | None:
    """A local file or directory target, or ``None`` when ``spec`` is not a local path."""
    path = expand_user(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise EntryFileNotFoundError(
                f"custom pipeline file {spec} does not exist; check the path (it ends in .py, so it is read as a file)."
            )
        resolved = path.resolve()
        return LocalTarget("local_file", resolved.parent, resolved.name)
    if (path / PIPELINE_FILE).is_file():
        return LocalTarget("local_dir", path.resolve(), PIPELINE_FILE)
    if path.is_dir() and (spec.startswith((".", "/", "~")) or spec.rstrip("/").count("/") > 1):
        raise EntryFileNotFoundError(
            f"directory {spec} has no {PIPELINE_FILE}; point custom_pipeline at a directory containing one, "
            "or at the .py file itself."
        )
    return None


def hub_target(spec: str, revision: str | None) -> RemoteTarget:
    if not _REPO_ID_RE.fullmatch(spec) or ".." in spec:
        raise InvalidSpecError(
            f"custom_pipeline {spec!r} is not an existing local path, a Hub repo id (org/name) or a community "
            "name; fix the value."
        )
    return RemoteTarget(
        kind="hub",
        repo=spec,
        repo_type="model",
        revision=revision,
        subfolder="",
        entry=PIPELINE_FILE,
        source_id=spec,
    )


def model_repo_target(model_repo: str, model_revision: str | None, name: str) -> RemoteTarget:
    if not _REPO_ID_RE.fullmatch(model_repo):
        raise InvalidSpecError(f"model repo {model_repo!r} is not a Hub repo id; use the form org/name.")
    return RemoteTarget(
        kind="model_repo",
        repo=model_repo,
        repo_type="model",
        revision=model_revision,
        subfolder="",
        entry=f"{name}.py",
        source_id=model_repo,
    )
