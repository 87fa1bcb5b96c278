"""Every diffusers internal safeloader relies on, named in one place and checked against the versions it knows.

safeloader reaches past diffusers' public API in one place only: the dynamic-module loader
(``diffusers.utils.dynamic_modules_utils.get_class_from_dynamic_module`` and the module-level aliases other
diffusers modules import under their own names — ``pipeline_loading_utils``, ``pipeline_utils``,
``auto_model``, ``modular_pipeline``). The caller replaces them with a refusal while ``safeloader.install()``
is active; the worker replaces them with a lookup in the verified package. If a diffusers release moved them,
the replacement would silently miss and foreign code could load unchecked — so an unknown layout is a clear
:class:`~safeloader.errors.UnsupportedDiffusersError`, never a guess.

Versions older than :data:`OLDEST_SUPPORTED` are refused outright. Newer versions than the newest tested are
accepted when the loader is where safeloader expects it (``safeloader doctor`` marks them "newer than
tested"); when it is not, the error names what moved.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from safeloader._compat.versions import TESTED, installed_version, release
from safeloader.errors import UnsupportedDiffusersError

#: The oldest diffusers whose loader layout safeloader knows (and ``make test-compat`` runs against).
OLDEST_SUPPORTED = next(tested.oldest for tested in TESTED if tested.distribution == "diffusers")
NEWEST_TESTED = next(tested.newest for tested in TESTED if tested.distribution == "diffusers")

#: Where the dynamic-module loader is defined.
DYNAMIC_LOADER_MODULE = "diffusers.utils.dynamic_modules_utils"
#: The loader's functions that read or import foreign code.
DYNAMIC_LOADER_NAMES = ("get_class_from_dynamic_module", "get_cached_module_file")
#: Modules that import the loader under their own name (checked against diffusers 0.35.2 … 0.42.1).
DYNAMIC_LOADER_HOLDERS = (
    DYNAMIC_LOADER_MODULE,
    "diffusers.utils",
    "diffusers.pipelines.pipeline_loading_utils",
    "diffusers.pipelines.pipeline_utils",
    "diffusers.models.auto_model",
    "diffusers.modular_pipelines.modular_pipeline",
)


def check_diffusers_version(version: str | None = None) -> str:
    """The installed diffusers version, or :class:`UnsupportedDiffusersError` when it is too old or absent.

    Without ``version`` it is read from package metadata, which imports nothing (the caller's drop-in checks
    before it starts the worker); where diffusers is imported anyway its ``__version__`` is passed.
    """
    found = installed_version("diffusers") if version is None else version
    if found is None:
        raise UnsupportedDiffusersError(
            f"diffusers is not installed; install a supported release: pip install 'diffusers>={OLDEST_SUPPORTED}'."
        )
    if release(found) < release(OLDEST_SUPPORTED):
        raise UnsupportedDiffusersError(
            f"diffusers {found} is older than safeloader supports ({OLDEST_SUPPORTED} … {NEWEST_TESTED} tested); "
            f"upgrade it: pip install 'diffusers>={OLDEST_SUPPORTED}'."
        )
    return found


def import_diffusers_unchecked() -> ModuleType:
    try:
        return importlib.import_module("diffusers")
    except ImportError as exc:
        raise UnsupportedDiffusersError(
            f"diffusers cannot be imported ({exc}); install a supported release: "
            f"pip install 'diffusers>={OLDEST_SUPPORTED}'."
        ) from exc


def import_diffusers() -> ModuleType:
    """``import diffusers`` after :func:`check_diffusers_version`."""
    module = import_diffusers_unchecked()
    check_diffusers_version(str(getattr(module, "__version__", "")))
    return module


def dynamic_modules_utils() -> ModuleType:
    """diffusers' dynamic-module loader module, checked to hold the functions safeloader replaces."""
    version = check_diffusers_version(str(getattr(import_diffusers_unchecked(), "__version__", "")))
    try:
        module = importlib.import_module(DYNAMIC_LOADER_MODULE)
    except ImportError as exc:
        raise _moved(version, f"module {DYNAMIC_LOADER_MODULE} ({exc})") from exc
    missing = [name for name in DYNAMIC_LOADER_NAMES if not callable(getattr(module, name, None))]
    if missing:
        raise _moved(version, f"{DYNAMIC_LOADER_MODULE}.{missing[0]}")
    return module


def loader_holders() -> list[ModuleType]:
    """The loaded modules of :data:`DYNAMIC_LOADER_HOLDERS` (those a diffusers release lacks are skipped:
    a module that does not exist cannot hold an alias)."""
    dynamic_modules_utils()
    modules = []
    for name in DYNAMIC_LOADER_HOLDERS:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return modules


def _moved(version: str, what: str) -> UnsupportedDiffusersError:
    return UnsupportedDiffusersError(
        f"diffusers {version} has no {what}, which safeloader replaces to keep foreign code out of this process "
        f"(tested with {OLDEST_SUPPORTED} … {NEWEST_TESTED}); install a tested release, e.g. "
        f"pip install 'diffusers=={NEWEST_TESTED}', or upgrade safeloader."
    )
