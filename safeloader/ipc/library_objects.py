"""diffusers and transformers objects that cross as data: configs both ways, and the caller's library objects.

* A diffusers ``FrozenDict`` (``pipe.unet.config``) crosses as a map and is rebuilt as a ``FrozenDict`` from that
  data only; keys become attributes only when they are public identifiers or diffusers' own private config keys,
  so the peer can never set a protocol attribute (``__array_interface__``, ``_repr_html_``) on it.
* A scheduler, attention processor or model the *caller* holds (``pipe.scheduler = DDIMScheduler(...)``,
  ``set_attn_processor(AttnProcessor2_0())``, ``from_pretrained(..., unet=my_unet)``) crosses as its class name,
  its config or constructor arguments and, for models, its tensors; the worker rebuilds it, looking the class up
  by name in diffusers' or transformers' own namespace and checking its base class. Nothing is imported by a
  name the caller sent. The caller never rebuilds library objects from worker data: the worker's objects stay
  there, behind handles.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from safeloader.ipc import torch_import

__all__ = [
    "LibraryObjectRefused",
    "frozen_dict",
    "is_frozen_dict",
    "library_payload",
    "rebuild_library_object",
]

#: Private keys diffusers itself puts in configs; they stay readable as attributes, as in-process.
CONFIG_PRIVATE_ATTRIBUTES = frozenset(
    {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "_ignore_files", "_commit_hash"}
)
SCHEDULER = "scheduler"
PROCESSOR = "processor"
MODEL = "model"
_ATTENTION_PROCESSOR_MODULE = "diffusers.models.attention_processor"


class LibraryObjectRefused(Exception):
    """A library object cannot cross (caller side) or be rebuilt (worker side); the message says why."""


def is_frozen_dict(value: object) -> bool:
    return any(
        klass.__name__ == "FrozenDict" and klass.__module__ == "diffusers.configuration_utils"
        for klass in type(value).__mro__
    )


def _attribute_key(key: str) -> bool:
    return key.isidentifier() and (not key.startswith("_") or key in CONFIG_PRIVATE_ATTRIBUTES)


def frozen_dict(fields: Mapping[str, Any]) -> Any:
    """diffusers' own ``FrozenDict`` holding ``fields``; keys that must not become attributes are items only."""
    from diffusers.configuration_utils import FrozenDict

    config = FrozenDict({key: value for key, value in fields.items() if _attribute_key(key)})
    for key, value in fields.items():
        if not _attribute_key(key):
            OrderedDict.__setitem__(config, key, value)  # FrozenDict.__init__ would also make it an attribute
    return config


# caller side -------------------------------------------------------------------------------------------
def _module_of(value: object) -> str:
    return str(getattr(type(value), "__module__", ""))


def _public_in(namespace: Any, klass: type) -> bool:
    """``klass`` is reachable by its own name in the library's namespace (so the worker can find it there)."""
    name = klass.__name__
    return name.isidentifier() and not name.startswith("_") and getattr(namespace, name, None) is klass


def _is_module(value: object) -> bool:
    torch = torch_import.loaded()
    return torch is not None and isinstance(value, torch.nn.Module)


def _processor_arguments(value: object) -> dict[str, Any]:
    """A processor's constructor arguments, read back from the attributes of the same name."""
    arguments: dict[str, Any] = {}
    for name, parameter in inspect.signature(type(value).__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if hasattr(value, name):
            arguments[name] = getattr(value, name)
        elif parameter.default is parameter.empty:
            raise LibraryObjectRefused(
                f"{type(value).__name__} keeps no attribute for its argument {name!r}, so it cannot be rebuilt"
            )
    return arguments


def library_payload(value: object) -> list[Any] | None:
    """The data that rebuilds ``value`` in the worker, or ``None`` when it is not an allow-listed library object."""
    module = _module_of(value)
    if module.startswith("diffusers."):
        diffusers = sys.modules.get("diffusers")
        if diffusers is None:
            return None
        klass = type(value)
        if isinstance(value, diffusers.SchedulerMixin) and _public_in(diffusers, klass):
            return [SCHEDULER, klass.__name__, _config_data(value.config)]
        if module == _ATTENTION_PROCESSOR_MODULE and not _is_module(value):
            processors = sys.modules[_ATTENTION_PROCESSOR_MODULE]
            if _public_in(processors, klass) and "Processor" in klass.__name__:
                return [PROCESSOR, klass.__name__, _processor_arguments(value)]
        if isinstance(value, diffusers.ModelMixin) and _public_in(diffusers, klass):
            config = _config_data(value.config)
            return [MODEL, "diffusers", klass.__name__, config, _state(value), value.training]
        return None
    if module.startswith("transformers."):
        transformers = sys.modules.get("transformers")
        if transformers is None:
            return None
        klass = type(value)
        if isinstance(value, transformers.PreTrainedModel) and _public_in(transformers, klass):
            # As JSON, as transformers saves it (``id2label`` has int keys, which only cross as strings).
            config = json.loads(value.config.to_json_string(use_diff=False))
            return [MODEL, "transformers", klass.__name__, config, _state(value), value.training]
    return None


def _config_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as plain data (paths as strings, as diffusers saves them)."""
    return {str(key): value.as_posix() if isinstance(value, PurePath) else value for key, value in config.items()}


def _state(model: Any) -> dict[str, Any]:
    return {str(name): tensor for name, tensor in model.state_dict().items()}


# worker side -------------------------------------------------------------------------------------------
def _lookup(namespace: Any, name: object, base: type, what: str) -> Any:
    candidate = getattr(namespace, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(candidate, type) and issubclass(candidate, base) and not str(name).startswith("_")):
        raise LibraryObjectRefused(f"{str(name)[:100]!r} is not a {what} of the library; only those are rebuilt")
    return candidate


def rebuild_library_object(payload: object) -> Any:
    """Build the caller's library object in the worker from its data (classes from the allow list only)."""
    if not isinstance(payload, list) or not payload or not isinstance(payload[0], str):
        raise LibraryObjectRefused("a library object is malformed")
    kind = payload[0]
    if kind == SCHEDULER and len(payload) == 3 and isinstance(payload[2], Mapping):
        import diffusers

        klass = _lookup(diffusers, payload[1], diffusers.SchedulerMixin, "scheduler class")
        return klass.from_config(dict(payload[2]))
    if kind == PROCESSOR and len(payload) == 3 and isinstance(payload[2], Mapping):
        import torch
        from diffusers.models import attention_processor

        klass = _lookup(attention_processor, payload[1], object, "attention processor class")
        if klass.__module__ != attention_processor.__name__ or issubclass(klass, torch.nn.Module):
            raise LibraryObjectRefused(f"{klass.__name__} is not a weightless attention processor of diffusers")
        return klass(**dict(payload[2]))
    if kind == MODEL and len(payload) == 6 and isinstance(payload[3], Mapping) and isinstance(payload[4], Mapping):
        model = _build_model(payload[1], payload[2], dict(payload[3]))
        model.load_state_dict(dict(payload[4]), strict=True, assign=True)
        if payload[1] == "transformers":
            model.tie_weights()
        model.train(bool(payload[5]))
        return model
    raise LibraryObjectRefused(f"a library object of kind {kind[:40]!r} is malformed or not supported")


def _build_model(library: object, name: object, config: dict[str, Any]) -> Any:
    if library == "diffusers":
        import diffusers

        klass = _lookup(diffusers, name, diffusers.ModelMixin, "model class")
        return klass.from_config(config)
    if library == "transformers":
        import transformers

        klass = _lookup(transformers, name, transformers.PreTrainedModel, "model class")
        return klass(klass.config_class.from_dict(config))
    raise LibraryObjectRefused(f"models of {str(library)[:40]!r} are not rebuilt; only diffusers and transformers")
