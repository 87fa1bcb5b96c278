"""Resolve ``custom_pipeline`` values to pinned, hashed, cached files (see :mod:`safeloader.resolve.resolver`)."""

from safeloader.resolve.cache import Cache, cache_root, private_subdir, secure_cache_root
from safeloader.resolve.hub import hub_endpoint, normalized_endpoint, resolve_commit
from safeloader.resolve.manifest import Manifest
from safeloader.resolve.resolver import list_files_checked, resolve_local_files, resolve_pipeline, resolve_repo_files

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
