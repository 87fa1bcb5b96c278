"""Route every way diffusers runs foreign code to the verified package, and nowhere else.

diffusers loads custom pipelines, ``model_index.json`` classes naming a ``.py`` and custom components through
``get_class_from_dynamic_module``; it is replaced here, together with every module-level alias of it, by a
lookup in the verified package. Anything not verified is a clear error instead of a download or a file read.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

from safeloader._compat import diffusers_internals
from safeloader.worker.code_loader import CodeRefused, VerifiedPackage


def defined_pipeline_class(module: Any) -> type:
    """diffusers' rule: the module must define exactly one ``DiffusionPipeline`` subclass."""
    from diffusers import DiffusionPipeline

    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, DiffusionPipeline)
        and obj is not DiffusionPipeline
        and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = [cls.__name__ for cls in found]
        raise CodeRefused(
            f"{module.__file__} must define exactly one DiffusionPipeline subclass, found {len(found)} {names}"
        )
    return found[0]


class VerifiedClassLoader:
    def __init__(self, package: VerifiedPackage, model_dir: Path) -> None:
        self.package = package
        self.model_dir = model_dir

    def candidates(self, location: object, module_file: str, subfolder: str | None) -> list[str]:
        module_file = module_file.replace(os.sep, "/")
        found: list[str] = []
        if isinstance(location, str | os.PathLike):
            try:
                relative = Path(os.path.abspath(location)).relative_to(os.path.abspath(self.model_dir))
            except ValueError:
                relative = None
            if relative is not None and relative.parts:
                found.append("/".join([*relative.parts, module_file]))
        if subfolder:
            found.append(f"{subfolder.strip('/')}/{module_file}")
        found.append(module_file)
        return found

    def __call__(
        self,
        pretrained_model_name_or_path: Any,
        module_file: str,
        subfolder: str | None = None,
        class_name: str | None = None,
        **_ignored: Any,
    ) -> type:
        for relpath in self.candidates(pretrained_model_name_or_path, module_file, subfolder):
            if self.package.has(relpath):
                module = self.package.import_relpath(relpath)
                if class_name is None:
                    return defined_pipeline_class(module)
                found = getattr(module, class_name, None)
                if not inspect.isclass(found):
                    raise CodeRefused(f"verified file {relpath} defines no class {class_name}")
                return found
        raise CodeRefused(
            f"diffusers asked for code {module_file!r} (from {pretrained_model_name_or_path!s}) that is not among "
            "the verified pipeline files"
        )


def route_dynamic_modules(package: VerifiedPackage, model_dir: Path) -> VerifiedClassLoader:
    """Replace ``get_class_from_dynamic_module`` and all its aliases in loaded diffusers modules."""
    dynamic_modules_utils = diffusers_internals.dynamic_modules_utils()

    current = dynamic_modules_utils.get_class_from_dynamic_module
    original = getattr(current, "safeloader_original", current)
    loader = VerifiedClassLoader(package, model_dir)
    diffusers_internals.loader_holders()  # imported, so that each alias they hold exists to be replaced

    def verified_get_class_from_dynamic_module(*args: Any, **kwargs: Any) -> type:
        return loader(*args, **kwargs)

    verified_get_class_from_dynamic_module.safeloader_original = original  # type: ignore[attr-defined]
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("diffusers") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is original or value is current:
                setattr(module, attr, verified_get_class_from_dynamic_module)
    return loader
