"""Patch mode: route diffusers' own entry points through safeloader, so existing code gains the sandbox.

``install()`` replaces diffusers' ``DiffusionPipeline.from_pretrained``, ``from_pipe`` and ``download``,
``AutoModel.from_pretrained`` and the modular ``from_pretrained``s with safeloader's loaders, makes
``SomePipeline(**pipe.components)`` with sandboxed components build the pipeline in their worker, and closes
every in-process loader of repository code (:mod:`safeloader.closed_loaders`: diffusers' and transformers'
dynamic-module loaders, transformers' ``trust_remote_code`` prompt, ``from_single_file``'s library import,
and diffusers' and transformers' unpickling of checkpoints unless ``[weights] allow_pickle``).
Whatever path reaches one of them — known or not — is refused with an error naming the call and the safeloader
route to use, so nothing foreign runs in the caller while safeloader is installed. ``uninstall()`` restores
diffusers and transformers (only a pass-through ``DiffusionPipeline.__new__`` stays, see :func:`install`).
Both are idempotent."""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safeloader import closed_loaders
from safeloader._compat.diffusers_internals import dynamic_modules_utils
from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")

_lock = threading.Lock()
_policy: Policy | None = None
_report: InstallReport | None = None


@dataclass
class InstallReport:
    """What :func:`install` routed to the sandbox and what it closed in this process."""

    policy: str
    routed: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def format_text(self) -> str:
        lines = [f"safeloader installed under policy {self.policy!r}"]
        lines += [f"  routed to the sandbox: {item}" for item in self.routed]
        lines += [f"  refused in this process: {item}" for item in self.closed]
        return "\n".join(lines)


def installed() -> bool:
    return bool(closed_loaders.saved)


def report() -> InstallReport | None:
    """The report of the active :func:`install`, or ``None`` when safeloader is not installed."""
    return _report


def original_from_pretrained(cls: type) -> Any:
    """``cls.from_pretrained`` as diffusers defines it, whether or not safeloader is installed."""
    return _original_classmethod(cls, "from_pretrained")


def _original_classmethod(cls: type, name: str) -> Any:
    for owner, saved_name, original in closed_loaders.saved:
        if saved_name == name and isinstance(owner, type) and issubclass(cls, owner):
            return original.__get__(None, cls)
    return getattr(cls, name)


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


def _routed_download(cls: type, pretrained_model_name: str | os.PathLike[str], **kwargs: Any) -> Any:
    """diffusers' ``download``: the repository is fetched, pinned, verified and audited; nothing is imported."""
    from safeloader.download import download

    return download(pretrained_model_name, policy=kwargs.pop("policy", None) or _policy, **kwargs)


def _routed_from_pipe(cls: type, pipeline: Any, **kwargs: Any) -> Any:
    """diffusers' ``from_pipe``: a sandboxed source pipeline builds the new one in its worker, after the gate."""
    from safeloader.proxy import RemotePipeline
    from safeloader.remote_pipelines import from_pipe

    if isinstance(pipeline, RemotePipeline):
        if cls.__name__ != "DiffusionPipeline" and _is_diffusers_class(cls):
            kwargs["_pipeline_class_name"] = cls.__name__
        return from_pipe(pipeline, policy=kwargs.pop("policy", None) or _policy, **kwargs)
    # An in-process source pipeline: diffusers' own from_pipe; a custom_pipeline meets the closed loader.
    return _original_classmethod(cls, "from_pipe")(pipeline, **kwargs)


def _routed_auto_model(cls: type, pretrained_model_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """diffusers' ``AutoModel``: with ``trust_remote_code=True`` sandboxed; without it diffusers' own load.

    Without trust, whatever would import repository code reaches a closed loader and is refused (transformers'
    prompt included) before anything runs; library classes load in-process as diffusers loads them.
    """
    from safeloader.automodel import AutoModel

    policy = kwargs.pop("policy", None) or _policy
    worker = kwargs.pop("worker", None)
    if not kwargs.get("trust_remote_code"):
        return _original_classmethod(cls, "from_pretrained")(pretrained_model_or_path, **kwargs)
    return AutoModel.from_pretrained(pretrained_model_or_path, policy=policy, worker=worker, **kwargs)


def _routed_modular(kind: str) -> Callable[..., Any]:
    """diffusers' modular ``from_pretrained``: custom blocks (``trust_remote_code=True``) are built in the worker."""

    def from_pretrained(cls: type, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        from safeloader import modular

        trusted = kwargs.get("trust_remote_code", args[0] if args else False)
        if not trusted or not _is_diffusers_class(cls):
            return _original_classmethod(cls, "from_pretrained")(pretrained_model_name_or_path, *args, **kwargs)
        kwargs["trust_remote_code"] = True
        loader = getattr(modular, kind)
        return loader.from_pretrained(
            pretrained_model_name_or_path, policy=kwargs.pop("policy", None) or _policy, **kwargs
        )

    return from_pretrained


def _route_classmethod(cls: type, name: str, function: Callable[..., Any], report: InstallReport) -> None:
    closed_loaders.saved.append((cls, name, cls.__dict__[name]))
    setattr(cls, name, classmethod(function))
    report.routed.append(f"{cls.__module__.split('.')[0]}.{cls.__name__}.{name}")


def install(policy: str | os.PathLike[str] | Policy | None = None) -> InstallReport:
    """Route diffusers' loaders through safeloader under ``policy`` and close every in-process code loader."""
    global _policy, _report
    import diffusers

    dynamic_modules_utils()  # refuses a diffusers whose loader moved: its aliases would go unreplaced here

    with _lock:
        _policy = load_policy(policy)
        if closed_loaders.saved:
            assert _report is not None
            _report.policy = _policy.name
            logger.info("safeloader.install(): already installed; policy is now %r", _policy.name)
            return _report
        report = InstallReport(policy=_policy.name)
        try:
            pipeline_cls = diffusers.DiffusionPipeline
            _route_classmethod(pipeline_cls, "from_pretrained", _routed_from_pretrained, report)
            _route_classmethod(pipeline_cls, "from_pipe", _routed_from_pipe, report)
            _route_classmethod(pipeline_cls, "download", _routed_download, report)
            _route_classmethod(diffusers.AutoModel, "from_pretrained", _routed_auto_model, report)
            for kind in ("ModularPipelineBlocks", "ModularPipeline"):
                _route_classmethod(getattr(diffusers, kind), "from_pretrained", _routed_modular(kind), report)
            # Constructing a diffusers pipeline from sandboxed components builds it in their worker (returning a
            # RemotePipeline skips __init__); with anything else, construction is diffusers' own. CPython cannot
            # take a __new__ back off a class (deleting it leaves object.__new__ refusing the constructor's
            # arguments), so this one stays after uninstall() and then only ever calls object.__new__.
            if pipeline_cls.__dict__.get("__new__") is not _routed_new_entry:
                pipeline_cls.__new__ = _routed_new_entry  # type: ignore[method-assign]
            report.routed.append("diffusers pipeline constructors given sandboxed components")
            closed_loaders.close_diffusers(report.closed, _allow_pickle)
            closed_loaders.close_transformers(report.closed, _allow_pickle)
        except BaseException:
            _restore()
            raise
        _report = report
        logger.info("%s", report.format_text())
        return report


def _allow_pickle() -> bool:
    """The installed policy's ``[weights] allow_pickle``, read at each in-process checkpoint load."""
    return _policy is not None and _policy.weights.allow_pickle


def _restore() -> None:
    global _policy, _report
    closed_loaders.restore()
    _policy = None
    _report = None


def uninstall() -> None:
    """Restore everything :func:`install` replaced; a no-op when not installed."""
    with _lock:
        _restore()
