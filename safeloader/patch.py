"""Patch mode: route diffusers' own entry points through safeloader, so existing code gains the sandbox.

``install()`` replaces ``diffusers.DiffusionPipeline.from_pretrained`` (and, with their own routes,
``from_pipe``, ``download`` and ``diffusers.AutoModel.from_pretrained``) with safeloader's loaders, and
closes every in-process loader of repository code: diffusers' dynamic-module loader, transformers' dynamic-module
loader and its interactive ``trust_remote_code`` prompt, and the library names ``from_single_file`` imports
from a ``model_index.json``. Whatever path reaches one of them — known or not — is refused with an error
naming the call and the safeloader route to use, so nothing foreign runs in the caller while safeloader is
installed. ``uninstall()`` restores diffusers and transformers exactly. Both are idempotent.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safeloader.errors import RemoteCodeNotTrusted
from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")

_lock = threading.Lock()
#: (object, attribute name, original value) for everything install() replaced.
_saved: list[tuple[Any, str, Any]] = []
#: refusing stand-in → the original it replaced (aliases imported while installed are restored through it).
_refusers: dict[Any, Any] = {}
_policy: Policy | None = None
_report: InstallReport | None = None

#: Functions that import repository code in-process, per library (checked against diffusers 0.42, transformers 5).
_DIFFUSERS_LOADERS = (
    "diffusers.utils.dynamic_modules_utils",
    ("get_class_from_dynamic_module", "get_cached_module_file", "get_class_in_module"),
)
_TRANSFORMERS_LOADERS = (
    "transformers.dynamic_module_utils",
    ("get_class_from_dynamic_module", "get_cached_module_file", "get_class_in_module"),
)
#: Modules known to hold aliases of those functions; imported so their alias exists to replace.
_DIFFUSERS_ALIAS_HOLDERS = (
    "diffusers.utils",
    "diffusers.pipelines.pipeline_loading_utils",
    "diffusers.pipelines.pipeline_utils",
    "diffusers.modular_pipelines.modular_pipeline",
    "diffusers.models.auto_model",
)

#: Where each known entry point should go instead (the error names it).
_ROUTES = {
    ("diffusers", "AutoModel"): "safeloader.AutoModel.from_pretrained(..., trust_remote_code=True)",
    ("diffusers", "ModularPipeline"): "safeloader.ModularPipeline.from_pretrained(..., trust_remote_code=True)",
    ("diffusers", "ModularPipelineBlocks"): (
        "safeloader.ModularPipelineBlocks.from_pretrained(..., trust_remote_code=True)"
    ),
    ("diffusers", "DiffusionPipeline"): "safeloader.DiffusionPipeline.from_pretrained / from_pipe",
    ("transformers", "pipeline"): "safeloader.transformers.pipeline(..., trust_remote_code=True)",
}
_TRANSFORMERS_ROUTED = ("AutoModel", "AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "AutoProcessor")


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
    return bool(_saved)


def report() -> InstallReport | None:
    """The report of the active :func:`install`, or ``None`` when safeloader is not installed."""
    return _report


def _library_of(frame: Any) -> str | None:
    top = str(frame.f_globals.get("__name__", "")).split(".")[0]
    return top if top in ("diffusers", "transformers") else None


def calling_entry() -> tuple[str, str]:
    """The library call the user made that reached a refused loader, and the safeloader route for it."""
    frame: Any = sys._getframe(1)
    entry: tuple[str, str] | None = None
    seen_library = False
    while frame is not None:
        library = _library_of(frame)
        if library is not None:
            seen_library = True
            owner = frame.f_locals.get("cls", frame.f_locals.get("self"))
            owner_name = owner.__name__ if isinstance(owner, type) else type(owner).__name__ if owner else None
            entry = (library, f"{owner_name}.{frame.f_code.co_name}" if owner_name else frame.f_code.co_name)
        elif seen_library and not str(frame.f_globals.get("__name__", "")).startswith("safeloader."):
            break
        frame = frame.f_back
    if entry is None:
        return "a dynamic-module loader", "safeloader.DiffusionPipeline.from_pretrained or safeloader.transformers"
    library, call = entry
    owner = call.split(".")[0]
    route = _ROUTES.get((library, owner))
    if route is None and library == "transformers":
        name = owner if owner in _TRANSFORMERS_ROUTED else "AutoModel"
        route = (
            "safeloader.transformers.pipeline(..., trust_remote_code=True)"
            if call == "pipeline"
            else f"safeloader.transformers.{name}.from_pretrained(..., trust_remote_code=True)"
        )
    if route is None:
        route = _ROUTES[("diffusers", "DiffusionPipeline")]
    return f"{library}.{call}", route


#: Refusals raised inside a call that swallows exceptions (``load_components`` logs and goes on).
_swallowed = threading.local()


def _refusal(target: object) -> RemoteCodeNotTrusted:
    call, route = calling_entry()
    error = RemoteCodeNotTrusted(
        f"{call} tried to import repository code from {target} in this process while safeloader is installed; "
        f"load it sandboxed with {route} instead (or call safeloader.uninstall())."
    )
    collected = getattr(_swallowed, "refusals", None)
    if collected is not None:
        collected.append(error)
    return error


def _loud_load_components(original: Callable[..., Any]) -> Callable[..., Any]:
    """``ModularPipeline.load_components`` turns a component's failure into a warning; a refusal is raised."""

    def load_components(self: Any, *args: Any, **kwargs: Any) -> Any:
        outer = getattr(_swallowed, "refusals", None)
        _swallowed.refusals = []
        try:
            result = original(self, *args, **kwargs)
            refusals = list(_swallowed.refusals)
        finally:
            _swallowed.refusals = outer
        if refusals:
            raise refusals[0]
        return result

    return load_components


def _refuse_in_process(*args: Any, **kwargs: Any) -> Any:
    target = args[0] if args else kwargs.get("pretrained_model_name_or_path", "<unknown>")
    raise _refusal(target)


def _refuse_transformers_dynamic(*args: Any, **kwargs: Any) -> Any:
    # transformers' signatures: (class_reference, repo, ...) and (class_name, module_path); name the repo or file.
    target = args[1] if len(args) > 1 else kwargs.get("pretrained_model_name_or_path", kwargs.get("module_path"))
    raise _refusal(target if target is not None else "<unknown>")


def _closed_trust_remote_code(original: Callable[..., Any]) -> Callable[..., Any]:
    """transformers' ``resolve_trust_remote_code`` that never prompts and never allows repository code."""

    def resolve_trust_remote_code(
        trust_remote_code: bool | None,
        model_name: str,
        has_local_code: bool,
        has_remote_code: bool,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if not has_remote_code:
            return original(trust_remote_code, model_name, has_local_code, has_remote_code, *args, **kwargs)
        if not trust_remote_code and has_local_code:
            return False  # transformers' own class is used: no repository code runs
        raise _refusal(model_name)

    return resolve_trust_remote_code


def _checked_single_file_sub_model(original: Callable[..., Any]) -> Callable[..., Any]:
    """``from_single_file``'s component loader, refusing library names that are not diffusers' own."""

    def load_single_file_sub_model(library_name: str, *args: Any, **kwargs: Any) -> Any:
        from diffusers import pipelines
        from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

        if library_name not in LOADABLE_CLASSES and not hasattr(pipelines, library_name):
            call, _route = calling_entry()
            raise RemoteCodeNotTrusted(
                f"{call} was asked to import module {library_name!r} named by the config folder's model_index.json "
                "in this process while safeloader is installed; only diffusers and transformers components load "
                "from a single file — fix the config folder, or load the repository with "
                "safeloader.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)."
            )
        return original(library_name, *args, **kwargs)

    return load_single_file_sub_model


def _replace(owner: Any, name: str, replacement: Any) -> None:
    original = getattr(owner, name)
    _saved.append((owner, name, original))
    setattr(owner, name, replacement)


def _replace_everywhere(library: str, original: Any, replacement: Any) -> int:
    """Replace ``original`` in every loaded module of ``library`` (aliases made by ``from x import y``)."""
    _refusers[replacement] = original
    count = 0
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == library or module_name.startswith(f"{library}.")):
            continue
        for attribute, value in list(vars(module).items()):
            if value is original:
                _replace(module, attribute, replacement)
                count += 1
    return count


def _close_loaders(module_name: str, names: tuple[str, ...], refuser: Callable[..., Any]) -> int:
    module = importlib.import_module(module_name)
    library = module_name.split(".")[0]
    count = 0
    for name in names:
        original = getattr(module, name, None)
        if original is None:
            continue

        def refuse(*args: Any, _refuser: Callable[..., Any] = refuser, **kwargs: Any) -> Any:
            return _refuser(*args, **kwargs)

        refuse.__name__ = name
        count += _replace_everywhere(library, original, refuse)
    return count


def _close_diffusers(report: InstallReport) -> None:
    for module_name in _DIFFUSERS_ALIAS_HOLDERS:
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue
    count = _close_loaders(*_DIFFUSERS_LOADERS, _refuse_in_process)
    report.closed.append(f"diffusers' dynamic-module loader ({count} reference(s))")
    single_file = importlib.import_module("diffusers.loaders.single_file")
    original = single_file.load_single_file_sub_model
    _replace(single_file, "load_single_file_sub_model", _checked_single_file_sub_model(original))
    report.closed.append("from_single_file importing a library named by model_index.json other than diffusers'")
    modular = importlib.import_module("diffusers.modular_pipelines.modular_pipeline")
    _replace(modular.ModularPipeline, "load_components", _loud_load_components(modular.ModularPipeline.load_components))


def _close_transformers(report: InstallReport) -> None:
    try:
        dynamic = importlib.import_module("transformers.dynamic_module_utils")
    except ImportError:
        report.closed.append("transformers: not installed, nothing to close")
        return
    count = _close_loaders(*_TRANSFORMERS_LOADERS, _refuse_transformers_dynamic)
    original = dynamic.resolve_trust_remote_code
    count += _replace_everywhere("transformers", original, _closed_trust_remote_code(original))
    # diffusers' own resolve_trust_remote_code never prompts; transformers' asks on stdin, and now refuses.
    report.closed.append(
        f"transformers' dynamic-module loader and its trust_remote_code prompt ({count} reference(s)); "
        "no prompt is ever shown"
    )


def original_from_pretrained(cls: type) -> Any:
    """``cls.from_pretrained`` as diffusers defines it, whether or not safeloader is installed."""
    return _original_classmethod(cls, "from_pretrained")


def _original_classmethod(cls: type, name: str) -> Any:
    for owner, saved_name, original in _saved:
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
    _saved.append((cls, name, cls.__dict__[name]))
    setattr(cls, name, classmethod(function))
    report.routed.append(f"{cls.__module__.split('.')[0]}.{cls.__name__}.{name}")


def install(policy: str | os.PathLike[str] | Policy | None = None) -> InstallReport:
    """Route diffusers' loaders through safeloader under ``policy`` and close every in-process code loader."""
    global _policy, _report
    import diffusers

    with _lock:
        _policy = load_policy(policy)
        if _saved:
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
            _close_diffusers(report)
            _close_transformers(report)
        except BaseException:
            _restore()
            raise
        _report = report
        logger.info("%s", report.format_text())
        return report


def _restore() -> None:
    global _policy, _report
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)
    # Modules imported while installed copied a refusing stand-in with ``from x import y``: give them back theirs.
    if _refusers:
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith(("diffusers", "transformers")):
                continue
            for attribute, value in list(vars(module).items()):
                try:
                    original = _refusers.get(value)
                except TypeError:  # unhashable module attribute
                    continue
                if original is not None:
                    setattr(module, attribute, original)
    _refusers.clear()
    _policy = None
    _report = None


def uninstall() -> None:
    """Restore everything :func:`install` replaced; a no-op when not installed."""
    with _lock:
        _restore()
