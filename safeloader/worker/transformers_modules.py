"""In the worker, transformers' dynamic-module loader imports only the verified package's files.

transformers imports ``auto_map`` classes through ``get_class_from_dynamic_module`` (copying files into its
modules cache first); here that function and its aliases look the module up in the verified package instead,
the file-based helpers refuse, and ``resolve_trust_remote_code`` never prompts: the caller decided, through the
gate, that exactly these files may run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from safeloader.worker.code_loader import CodeRefused, VerifiedPackage
from safeloader.worker.dynamic_modules import VerifiedClassLoader


def _refuse_file_loader(*args: Any, **kwargs: Any) -> Any:
    raise CodeRefused("transformers tried to load code from a file; only the verified package may be imported")


def route_transformers_modules(package: VerifiedPackage, model_dir: Path) -> None:
    """Replace transformers' loaders in every loaded transformers module (no-op without transformers)."""
    try:
        from transformers import dynamic_module_utils
    except ImportError:
        return
    loader = VerifiedClassLoader(package, model_dir)

    def get_class_from_dynamic_module(
        class_reference: str, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any
    ) -> type:
        module, _, class_name = str(class_reference).rpartition(".")
        if "--" in module or not module:
            raise CodeRefused(f"{class_reference!r} refers to code outside the verified repository")
        module_file = module.replace(".", "/") + ".py"
        return loader(pretrained_model_name_or_path, module_file, kwargs.get("subfolder"), class_name)

    def resolve_trust_remote_code(
        trust_remote_code: bool | None, model_name: str, has_local_code: bool, has_remote_code: bool, *a: Any, **k: Any
    ) -> bool | None:
        # Only verified files can be imported here; the caller's gate already decided to trust them.
        return True if has_remote_code else trust_remote_code

    replacements = {
        "get_class_from_dynamic_module": get_class_from_dynamic_module,
        "resolve_trust_remote_code": resolve_trust_remote_code,
        "get_class_in_module": _refuse_file_loader,
        "get_cached_module_file": _refuse_file_loader,
    }
    originals: dict[Any, Any] = {}
    for name, replacement in replacements.items():
        current = getattr(dynamic_module_utils, name)
        originals[getattr(current, "safeloader_original", current)] = replacement
        originals[current] = replacement
        replacement.safeloader_original = getattr(current, "safeloader_original", current)  # type: ignore[attr-defined]
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "transformers" or module_name.startswith("transformers.")):
            continue
        for attribute, value in list(vars(module).items()):
            try:
                new_value = originals.get(value) if callable(value) else None
            except TypeError:  # an unhashable callable is none of transformers' functions
                continue
            if new_value is not None:
                setattr(module, attribute, new_value)
