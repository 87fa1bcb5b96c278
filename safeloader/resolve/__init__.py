"""Resolve ``custom_pipeline`` values to pinned, hashed, cached files (see :mod:`safeloader.resolve.resolver`).

The names below are loaded on first use, so that importing one submodule (the cache's integrity helpers, used
by the audit cache) does not import the Hub client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeloader.resolve.cache import Cache, private_subdir, secure_cache_root
    from safeloader.resolve.hub import hub_endpoint, normalized_endpoint, resolve_commit
    from safeloader.resolve.manifest import Manifest
    from safeloader.resolve.private_dir import cache_root
    from safeloader.resolve.resolver import (
        list_files_checked,
        resolve_local_files,
        resolve_pipeline,
        resolve_repo_files,
    )

_HOMES = {
    "Cache": "cache",
    "cache_root": "private_dir",
    "private_subdir": "cache",
    "secure_cache_root": "cache",
    "hub_endpoint": "hub",
    "normalized_endpoint": "hub",
    "resolve_commit": "hub",
    "Manifest": "manifest",
    "list_files_checked": "resolver",
    "resolve_local_files": "resolver",
    "resolve_pipeline": "resolver",
    "resolve_repo_files": "resolver",
}

__all__ = [
    "Cache",
    "Manifest",
    "cache_root",
    "hub_endpoint",
    "list_files_checked",
    "normalized_endpoint",
    "private_subdir",
    "resolve_commit",
    "resolve_local_files",
    "resolve_pipeline",
    "resolve_repo_files",
    "secure_cache_root",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'safeloader.resolve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"safeloader.resolve.{home}"), name)
