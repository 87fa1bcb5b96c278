"""Worker side of ``from_pipe``: a new pipeline built from one the worker holds, sharing its components.

The new pipeline's class is a diffusers pipeline class named by the caller, or the one pipeline class the
verified ``custom_pipeline`` file defines (the gate's bytes, re-hashed here); diffusers' own ``from_pipe`` then
reuses the source pipeline's modules, as it does in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from safeloader.ipc import protocol
from safeloader.worker.code_loader import VerifiedPackage
from safeloader.worker.dynamic_modules import defined_pipeline_class, route_dynamic_modules
from safeloader.worker.model_loaders import LoadRefused

if TYPE_CHECKING:
    from safeloader.worker.serve import Worker

_REFUSED_KWARGS = frozenset({"custom_pipeline", "custom_revision", "trust_remote_code", "token", "cache_dir"})


def from_pipe(worker: Worker, request: dict[str, Any]) -> dict[str, Any]:
    from safeloader.worker.serve import describe, diffusers_pipeline_class

    source = worker.target(request.get("source"))
    kwargs = dict(request.get("kwargs") or {})
    refused = sorted(_REFUSED_KWARGS & set(kwargs))
    if refused:
        raise LoadRefused(f"from_pipe arguments {refused} are decided by safeloader, not passed through")
    entry = request.get("entry")
    if entry is not None:
        code = request.get("code") or {}
        hashes = request.get("hashes") or {}
        if not isinstance(code, dict) or not isinstance(hashes, dict):
            raise LoadRefused("the code and hash tables must be maps")
        package = VerifiedPackage(
            code, hashes, label="from_pipe", restricted_python=str(request.get("restricted_python", "off"))
        )
        route_dynamic_modules(package, Path(str(request.get("model_dir", "/nonexistent"))))
        pipeline_class: Any = defined_pipeline_class(package.import_relpath(str(entry)))
    else:
        pipeline_class = diffusers_pipeline_class(request.get("pipeline_class"))
    pipeline = pipeline_class.from_pipe(source, **kwargs)
    return {"handle": worker.register(pipeline), **describe(pipeline)}


HANDLERS = {protocol.FROM_PIPE: from_pipe}
