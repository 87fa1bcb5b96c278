"""The in-process loaders of repository code that ``safeloader.install()`` closes, and how each refuses.

diffusers' and transformers' dynamic-module loaders (with every alias ``from x import y`` made of them),
transformers' ``resolve_trust_remote_code`` (its stdin prompt), ``from_single_file``'s import of a library named
by a config folder, and ``ModularPipeline.load_components`` turning a refusal into a warning. Each refusal is a
:class:`RemoteCodeNotTrusted` naming the call the user made and the safeloader route to use instead.

Unpickling runs code too: diffusers' ``load_state_dict`` (behind ``from_single_file``, a model's
``from_pretrained``, LoRA, textual-inversion and IP-Adapter loads on in-process objects) and transformers' (a
model's ``from_pretrained`` in-process) refuse a pickle checkpoint with :class:`PickleWeightsRefused` unless the
policy's ``[weights] allow_pickle`` says otherwise.
Everything replaced is recorded in :data:`saved` so that :func:`restore` puts it back exactly.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from safeloader._compat.diffusers_internals import DYNAMIC_LOADER_HOLDERS, DYNAMIC_LOADER_MODULE, DYNAMIC_LOADER_NAMES
from safeloader.errors import PickleWeightsRefused, RemoteCodeNotTrusted

#: (object, attribute name, original value) for everything replaced, in order.
saved: list[tuple[Any, str, Any]] = []
#: refusing stand-in → the original it replaced (aliases imported while installed are restored through it).
_refusers: dict[Any, Any] = {}

#: Functions that import repository code in-process, per library (diffusers' layout is checked by
#: :mod:`safeloader._compat.diffusers_internals`; transformers' against transformers 5).
_DIFFUSERS_LOADERS = (DYNAMIC_LOADER_MODULE, (*DYNAMIC_LOADER_NAMES, "get_class_in_module"))
_TRANSFORMERS_LOADERS = (
    "transformers.dynamic_module_utils",
    ("get_class_from_dynamic_module", "get_cached_module_file", "get_class_in_module"),
)
#: Modules known to hold aliases of those functions; imported so their alias exists to replace.
_DIFFUSERS_ALIAS_HOLDERS = tuple(holder for holder in DYNAMIC_LOADER_HOLDERS if holder != DYNAMIC_LOADER_MODULE)

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


def _diffusers_unpickles(path: str) -> bool:
    # The test diffusers' load_state_dict makes to choose safetensors, GGUF or torch.load.
    return os.path.basename(path).split(".")[-1] not in ("safetensors", "gguf")


def _transformers_unpickles(path: str) -> bool:
    # The test transformers' load_state_dict makes to choose safetensors or torch.load.
    return not path.endswith(".safetensors")


def _pickle_gated_load_state_dict(
    original: Callable[..., Any], allow_pickle: Callable[[], bool], unpickles: Callable[[str], bool]
) -> Callable[..., Any]:
    """A library's ``load_state_dict``, refusing a checkpoint it would unpickle unless ``allow_pickle()``."""

    def load_state_dict(checkpoint_file: Any, *args: Any, **kwargs: Any) -> Any:
        # An already loaded dict passes (diffusers accepts one).
        if not isinstance(checkpoint_file, dict) and not allow_pickle():
            path = os.fspath(checkpoint_file)
            name = os.path.basename(path)
            if unpickles(path):
                call, _route = calling_entry()
                error = PickleWeightsRefused(
                    f"{call} would unpickle the checkpoint {name!r} in this process while safeloader is installed, "
                    "and the policy's [weights] allow_pickle is false; convert it to safetensors, or set "
                    "[weights] allow_pickle = true."
                )
                collected = getattr(_swallowed, "refusals", None)
                if collected is not None:
                    collected.append(error)
                raise error
        return original(checkpoint_file, *args, **kwargs)

    return load_state_dict


def _gate_pickle_loads(
    module_name: str, unpickles: Callable[[str], bool], allow_pickle: Callable[[], bool], closed: list[str]
) -> None:
    """Replace ``module_name.load_state_dict`` and its aliases in the library with the pickle-gated one."""
    original = importlib.import_module(module_name).load_state_dict
    library = module_name.split(".")[0]
    gated = _pickle_gated_load_state_dict(original, allow_pickle, unpickles)
    count = _replace_everywhere(library, original, gated)
    closed.append(
        f"{library}' load_state_dict unpickling a checkpoint ({count} reference(s)), "
        "unless the policy's [weights] allow_pickle"
    )


def replace(owner: Any, name: str, replacement: Any) -> None:
    """Set ``owner.name`` to ``replacement``, remembering the original for :func:`restore`."""
    original = getattr(owner, name)
    saved.append((owner, name, original))
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
                replace(module, attribute, replacement)
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


def close_diffusers(closed: list[str], allow_pickle: Callable[[], bool]) -> None:
    """Close diffusers' in-process code loaders; ``allow_pickle()`` is asked at each checkpoint load."""
    for module_name in _DIFFUSERS_ALIAS_HOLDERS:
        try:
            importlib.import_module(module_name)
        except ImportError:
            continue
    count = _close_loaders(*_DIFFUSERS_LOADERS, _refuse_in_process)
    closed.append(f"diffusers' dynamic-module loader ({count} reference(s))")
    single_file = importlib.import_module("diffusers.loaders.single_file")
    original = single_file.load_single_file_sub_model
    replace(single_file, "load_single_file_sub_model", _checked_single_file_sub_model(original))
    closed.append("from_single_file importing a library named by model_index.json other than diffusers'")
    _gate_pickle_loads("diffusers.models.model_loading_utils", _diffusers_unpickles, allow_pickle, closed)
    modular = importlib.import_module("diffusers.modular_pipelines.modular_pipeline")
    replace(modular.ModularPipeline, "load_components", _loud_load_components(modular.ModularPipeline.load_components))


def close_transformers(closed: list[str], allow_pickle: Callable[[], bool]) -> None:
    """Close transformers' in-process code loaders; ``allow_pickle()`` is asked at each checkpoint load."""
    try:
        dynamic = importlib.import_module("transformers.dynamic_module_utils")
    except ImportError:
        closed.append("transformers: not installed, nothing to close")
        return
    count = _close_loaders(*_TRANSFORMERS_LOADERS, _refuse_transformers_dynamic)
    original = dynamic.resolve_trust_remote_code
    count += _replace_everywhere("transformers", original, _closed_trust_remote_code(original))
    # diffusers' own resolve_trust_remote_code never prompts; transformers' asks on stdin, and now refuses.
    closed.append(
        f"transformers' dynamic-module loader and its trust_remote_code prompt ({count} reference(s)); "
        "no prompt is ever shown"
    )
    _gate_pickle_loads("transformers.modeling_utils", _transformers_unpickles, allow_pickle, closed)


def restore() -> None:
    """Put back everything replaced, newest first, and the originals of aliases copied while closed."""
    while saved:
        owner, name, original = saved.pop()
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
