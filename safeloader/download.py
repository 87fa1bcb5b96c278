"""``DiffusionPipeline.download`` under ``install()``: fetch, pin, verify and audit a repository, import nothing.

diffusers' own ``download`` imports the pipeline class (a ``custom_pipeline``, a ``_class_name`` module) to
decide which folders to fetch, which runs repository code in the caller. This one downloads the repository at
one commit with the caller's token, then puts every piece of code a later load would run through the gate
(``trust_remote_code``, ``[sources]``, pins, lockfile, signatures, audit) — and returns the folder.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")


def download(
    pretrained_model_name: str | os.PathLike[str],
    *,
    custom_pipeline: str | os.PathLike[str] | None = None,
    custom_revision: str | None = None,
    trust_remote_code: bool = False,
    policy: str | os.PathLike[str] | Policy | None = None,
    lockfile: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    **ignored: Any,
) -> str:
    """Download (or locate) the pipeline and gate its code; returns the local folder, as diffusers does."""
    from safeloader.dropin import audit_foreign_code
    from safeloader.foreign_code import collect_foreign_code
    from safeloader.model_source import resolve_model

    resolved_policy = load_policy(policy)
    if ignored:
        logger.info("download: %s are diffusers' download options safeloader does not use", sorted(ignored))
    model = resolve_model(
        pretrained_model_name,
        policy=resolved_policy,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
    )
    foreign = collect_foreign_code(
        model,
        custom_pipeline=custom_pipeline,
        custom_revision=custom_revision,
        trust_remote_code=trust_remote_code,
        policy=resolved_policy,
        token=token,
        local_files_only=local_files_only,
        lockfile=lockfile,
    )
    audit_foreign_code(foreign, resolved_policy)
    return str(model.directory)
