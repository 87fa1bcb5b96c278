"""Worker side of ``load_model`` and ``model_call``: models, tokenizers, configs and transformers pipelines.

The verified package (the ``auto_map`` code the caller resolved, verified and audited) is installed, diffusers'
and transformers' dynamic-module loaders are routed to it, and the object is built with the library's own
``from_pretrained`` (or ``transformers.pipeline``) on the worker's read-only view of the repository. The
object stays here behind a handle; calls answer data, with library output classes turned into plain fields.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safeloader.ipc import protocol
from safeloader.worker.audit_hook import install_recorder
from safeloader.worker.code_loader import VerifiedPackage
from safeloader.worker.dynamic_modules import route_dynamic_modules
from safeloader.worker.transformers_modules import route_transformers_modules

if TYPE_CHECKING:
    from safeloader.worker.serve import Worker

#: Keyword arguments that would fetch or choose code other than the verified files.
REFUSED_KWARGS = frozenset(
    {"trust_remote_code", "token", "cache_dir", "proxies", "force_download", "local_files_only", "code_revision"}
)
_AUTO_CLASS = re.compile(r"^Auto[A-Za-z0-9]*$")
OUTPUT_MARK = protocol.OUTPUT_MARK


class LoadRefused(Exception):
    """The request names a library, class or argument the worker does not load from."""


def _loader(library: object, kind: object) -> Any:
    if library == "diffusers" and kind in ("AutoModel", "ModularPipelineBlocks", "ModularPipeline"):
        import diffusers

        return getattr(diffusers, str(kind)).from_pretrained
    if library == "transformers" and kind == "pipeline":
        import transformers

        return transformers.pipeline
    if library == "transformers" and isinstance(kind, str) and _AUTO_CLASS.match(kind):
        import transformers

        auto_class = getattr(transformers, kind, None)
        if auto_class is not None and hasattr(auto_class, "from_pretrained"):
            return auto_class.from_pretrained
    raise LoadRefused(f"{library}.{kind} is not a loader the worker offers")


def object_info(target: object) -> dict[str, Any]:
    """Type, config (as data), dtype and device of a model, tokenizer, config or pipeline."""
    config = target if type(target).__name__.endswith("Config") else getattr(target, "config", None)
    info: dict[str, Any] = {"type": type(target).__name__[:100]}
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        info["config"] = _plain(to_dict())
    elif isinstance(config, Mapping):
        info["config"] = _plain(dict(config))
    for attribute in ("device", "dtype"):
        try:
            value = getattr(target, attribute, None)
        except Exception:  # a model without parameters has no device
            value = None
        info[attribute] = value if value is None or type(value).__module__ == "torch" else str(value)
    return info


def _plain(value: Any, depth: int = 0) -> Any:
    """Configuration values as data the codec always carries (anything exotic as its text)."""
    if value is None or isinstance(value, bool | int | float | str) or depth > 16:
        return value if depth <= 16 else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v, depth + 1) for v in value]
    return value if type(value).__module__ == "torch" and type(value).__name__ == "dtype" else str(value)


def load_model(worker: Worker, request: dict[str, Any]) -> dict[str, Any]:
    loader = _loader(request.get("library"), request.get("kind"))
    kwargs = dict(request.get("kwargs") or {})
    refused = sorted(REFUSED_KWARGS & set(kwargs))
    if refused:
        raise LoadRefused(f"arguments {refused} are decided by safeloader, not passed through")
    model_dir = Path(str(request["model_dir"]))
    code = request.get("code") or {}
    hashes = request.get("hashes") or {}
    if not isinstance(code, dict) or not isinstance(hashes, dict):
        raise LoadRefused("the code and hash tables must be maps")
    package = VerifiedPackage(
        code,
        hashes,
        label=str(request.get("package", "model")),
        restricted_python=str(request.get("restricted_python", "off")),
    )
    route_dynamic_modules(package, model_dir)
    route_transformers_modules(package, model_dir)
    if worker.recorder is None:
        worker.recorder = install_recorder(
            [str(model_dir), package.virtual_root], [tempfile.gettempdir()], code_root=package.virtual_root
        )
    subfolder = request.get("subfolder")
    if subfolder is not None and (not isinstance(subfolder, str) or ".." in subfolder.split("/")):
        raise LoadRefused("subfolder must be a relative folder of the repository")
    if request.get("kind") == "pipeline":
        location = model_dir / subfolder if subfolder else model_dir
        task = request.get("task")
        built = loader(task, model=str(location), trust_remote_code=bool(code), **kwargs)
    else:
        if subfolder:
            kwargs["subfolder"] = subfolder
        built = loader(str(model_dir), trust_remote_code=bool(code), **kwargs)
    return {"handle": worker.register(built), **object_info(built)}


def to_data(value: Any, depth: int = 0) -> Any:
    """Library output containers as plain fields; everything else as the codec sends it (or as a handle)."""
    if depth > 32:
        return value
    data = getattr(value, "data", None)
    is_encoding = type(value).__name__ in ("BatchEncoding", "BatchFeature") and isinstance(data, Mapping)
    if is_encoding or _is_model_output(value):
        fields: Mapping[Any, Any] = data if is_encoding and data is not None else value
        return {
            OUTPUT_MARK: type(value).__name__[:100],
            "fields": {str(k): to_data(v, depth + 1) for k, v in fields.items()},
        }
    if isinstance(value, list):
        return [to_data(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(to_data(item, depth + 1) for item in value)
    if type(value) is dict:
        return {key: to_data(item, depth + 1) for key, item in value.items()}
    return value


def _is_model_output(value: object) -> bool:
    return any(
        klass.__name__ == "ModelOutput" and klass.__module__.startswith("transformers.")
        for klass in type(value).__mro__
    )


def model_call(worker: Worker, request: dict[str, Any]) -> Any:
    target = worker.target(request.get("target"))
    method = request.get("method")
    if method is not None:
        if not protocol.is_public_name(method):
            raise LoadRefused(f"method {method!r} is not public; only public names cross the boundary")
        function = getattr(target, str(method))
    else:
        function = target
    if not callable(function):
        raise LoadRefused(f"{type(target).__name__}.{method} is not callable")
    result = function(*(request.get("args") or []), **(request.get("kwargs") or {}))
    if method == "to" and result is target:
        return object_info(target)
    return to_data(result)


HANDLERS = {protocol.LOAD_MODEL: load_model, protocol.MODEL_CALL: model_call}
