"""Patch mode: route diffusers' own entry points through safeloader, so existing code gains the sandbox.

``install()`` replaces ``diffusers.DiffusionPipeline.from_pretrained`` with safeloader's loader and
makes ``SomePipeline(**pipe.components)`` with sandboxed components build the pipeline in their worker, and
makes diffusers' in-process dynamic-module loader (the one function every foreign-code path of
diffusers goes through: custom pipelines, ``_class_name`` modules, custom components, ``from_pipe``,
``download`` and ``AutoModel`` with ``trust_remote_code``) refuse, so nothing foreign can run in the
caller while safeloader is installed. ``uninstall()`` restores diffusers (only a pass-through
``DiffusionPipeline.__new__`` stays, see :func:`install`). Both are idempotent.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any

from safeloader.errors import RemoteCodeNotTrusted
from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")

_lock = threading.Lock()
#: (object, attribute name, original value) for everything install() replaced.
_saved: list[tuple[Any, str, Any]] = []
_policy: Policy | None = None

# Modules that import the dynamic loader under their own name (checked against diffusers 0.42).
_DYNAMIC_LOADER_HOLDERS = (
    "diffusers.utils.dynamic_modules_utils",
    "diffusers.utils",
    "diffusers.pipelines.pipeline_loading_utils",
    "diffusers.modular_pipelines.modular_pipeline",
    "diffusers.models.auto_model",
)
_DYNAMIC_LOADER_NAMES = ("get_class_from_dynamic_module", "get_cached_module_file")


def installed() -> bool:
    return bool(_saved)


def _refuse_in_process(*args: Any, **kwargs: Any) -> Any:
    target = args[0] if args else kwargs.get("pretrained_model_name_or_path", "<unknown>")
    raise RemoteCodeNotTrusted(
        f"diffusers tried to import foreign code from {target} in this process while safeloader is installed; "
        "load it through DiffusionPipeline.from_pretrained (routed to the sandbox) or call safeloader.uninstall()."
    )


def original_from_pretrained(cls: type) -> Any:
    """``cls.from_pretrained`` as diffusers defines it, whether or not safeloader is installed."""
    for owner, name, original in _saved:
        if name == "from_pretrained" and isinstance(owner, type) and issubclass(cls, owner):
            return original.__get__(None, cls)
    return cls.from_pretrained  # type: ignore[attr-defined]


def _is_diffusers_class(cls: type) -> bool:
    return cls.__module__ == "diffusers" or cls.__module__.startswith("diffusers.")


def _routed_from_pretrained(cls: type, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    from safeloader.dropin import load

    if not _is_diffusers_class(cls):
        # The caller's own subclass is the caller's own (trusted) code and cannot move into the worker;
        # it loads in-process, and diffusers' dynamic-module loader stays closed to foreign code.
        logger.info("%s is defined by the caller: loading it in-process; foreign code stays refused", cls.__name__)
        return original_from_pretrained(cls)(pretrained_model_name_or_path, **kwargs)
    if cls.__name__ != "DiffusionPipeline":
        # A concrete diffusers class was asked for: keep diffusers' semantics by naming it to the worker.
        kwargs["_pipeline_class_name"] = cls.__name__
    policy = kwargs.pop("policy", None) or _policy
    return load(pretrained_model_name_or_path, policy=policy, **kwargs)


def _routed_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``SomePipeline(**pipe.components)``: with sandboxed components, the pipeline is built in their worker."""
    from safeloader.ipc.session import RemoteReference

    if not installed() or not any(isinstance(value, RemoteReference) for value in (*args, *kwargs.values())):
        return object.__new__(cls)
    from safeloader.dropin import _session_of_remote_components
    from safeloader.errors import InvalidSpecError
    from safeloader.proxy import build_remote_pipeline

    if not _is_diffusers_class(cls) or getattr(importlib.import_module("diffusers"), cls.__name__, None) is not cls:
        raise InvalidSpecError(
            f"{cls.__name__} is not a pipeline class of diffusers, so it cannot be built in the sandboxed worker "
            "that holds these components; build a diffusers pipeline class, or load the components in-process."
        )
    import inspect

    bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    components = {name: value for name, value in list(bound.arguments.items())[1:]}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            components.update(components.pop(name, {}))
    session = _session_of_remote_components(components)
    return build_remote_pipeline(session, cls.__name__, components)


_routed_new_entry = staticmethod(_routed_new)


def install(policy: str | os.PathLike[str] | Policy | None = None) -> None:
    """Route ``diffusers.DiffusionPipeline.from_pretrained`` through safeloader under ``policy``."""
    global _policy
    import diffusers

    with _lock:
        _policy = load_policy(policy)
        if _saved:
            logger.info("safeloader.install(): already installed; policy is now %r", _policy.name)
            return
        pipeline_cls = diffusers.DiffusionPipeline
        _saved.append((pipeline_cls, "from_pretrained", pipeline_cls.__dict__["from_pretrained"]))
        pipeline_cls.from_pretrained = classmethod(_routed_from_pretrained)  # type: ignore[assignment,method-assign]
        # Constructing a diffusers pipeline from sandboxed components builds it in their worker (returning a
        # RemotePipeline skips __init__); with anything else, construction is diffusers' own. CPython cannot
        # take a __new__ back off a class (deleting it leaves object.__new__ refusing the constructor's
        # arguments), so this one stays after uninstall() and then only ever calls object.__new__.
        if pipeline_cls.__dict__.get("__new__") is not _routed_new_entry:
            pipeline_cls.__new__ = _routed_new_entry  # type: ignore[method-assign]
        for module_name in _DYNAMIC_LOADER_HOLDERS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for name in _DYNAMIC_LOADER_NAMES:
                if hasattr(module, name):
                    _saved.append((module, name, getattr(module, name)))
                    setattr(module, name, _refuse_in_process)
        logger.info("safeloader installed: diffusers pipelines load sandboxed under policy %r", _policy.name)


def uninstall() -> None:
    """Restore everything :func:`install` replaced; a no-op when not installed."""
    global _policy
    with _lock:
        while _saved:
            owner, name, original = _saved.pop()
            setattr(owner, name, original)
        _policy = None
