"""The source id each file of a resolved pipeline really has, for ``[sources]`` allow/deny.

A pipeline's relative imports can reach files published by someone else: in the diffusers community
mirror every ``<name>.py`` of a release folder is its own community pipeline, so ``nice_pipe.py`` doing
``from .evil_pipe import X`` runs ``community:evil_pipe``. Identities per file:

- community mirror: ``community:<module path>`` (``evil_pipe.py`` → ``community:evil_pipe``,
  ``pkg/__init__.py`` → ``community:pkg``, ``pkg/x.py`` → ``community:pkg/x``);
- a Hub repo or model repo: the repo id, for every file (one publisher, one repo);
- a local directory: ``local:<directory>`` for every file; a local ``.py`` file given by path:
  ``local:<absolute path of each file>`` (its siblings are separate files the user did not name).
"""

from __future__ import annotations

from pathlib import Path

from safeloader.resolve.manifest import Manifest


def _module_path(relpath: str) -> str:
    module = relpath.removesuffix(".py")
    return module.removesuffix("/__init__") if module != "__init__" else module


def file_source_id(source: str, source_id: str, repo: str, relpath: str) -> str:
    """The source id of ``relpath`` in a pipeline of kind ``source`` whose entry has ``source_id``."""
    if source == "community":
        return f"community:{_module_path(relpath)}"
    if source == "local_file":
        return f"local:{Path(repo) / relpath}"
    return source_id


def file_source_ids(manifest: Manifest) -> dict[str, str]:
    """Every file of ``manifest`` with its own source id."""
    return {
        relpath: file_source_id(manifest.source, manifest.source_id, manifest.repo, relpath)
        for relpath in sorted(manifest.files)
    }
