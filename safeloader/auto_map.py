"""Which code files of a repository transformers (or diffusers' ``AutoModel``) would import: its ``auto_map``.

A folder's ``config.json``, ``tokenizer_config.json`` and processor configs may map Auto classes to
``module.Class`` references; each such module is a ``.py`` file of that folder and is repository code.
A reference into another repository (``org/repo--module.Class``) is refused: it would bring in code
from a source the caller did not name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from safeloader.errors import EntryFileNotFoundError, InvalidSpecError, RemoteCodeNotTrusted
from safeloader.model_source import ModelSource

#: Files whose ``auto_map`` names code (transformers 5: configs, tokenizers, processors, feature extractors;
#: diffusers: model configs and modular blocks).
AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "modular_config.json",
)
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _references(auto_map: Any) -> Iterator[Any]:
    values = auto_map.values() if isinstance(auto_map, dict) else auto_map if isinstance(auto_map, list) else []
    for value in values:
        if isinstance(value, list | tuple):
            yield from value
        else:
            yield value


def _read_json(model: ModelSource, relpath: str) -> dict[str, Any]:
    try:
        data = json.loads((model.directory / relpath).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_prefix(subfolder: str | None) -> str:
    cleaned = (subfolder or "").strip("/")
    if cleaned and any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise InvalidSpecError(f"subfolder {subfolder!r} must be a relative folder inside the repository.")
    return f"{cleaned}/" if cleaned else ""


def code_entries(model: ModelSource, subfolder: str | None) -> list[str]:
    """The ``.py`` files (paths in the repository) that the ``auto_map`` of ``subfolder`` refers to."""
    prefix = folder_prefix(subfolder)
    label = model.repo_id or str(model.directory)
    entries: set[str] = set()
    for name in AUTO_MAP_FILES:
        auto_map = _read_json(model, prefix + name).get("auto_map")
        for reference in _references(auto_map):
            if reference is None:
                continue
            if not isinstance(reference, str) or "." not in reference:
                raise InvalidSpecError(f"{label}: {prefix}{name} has a malformed auto_map entry {reference!r}.")
            module, _, _class_name = reference.rpartition(".")
            if "--" in module:
                raise RemoteCodeNotTrusted(
                    f"{label}: {prefix}{name} maps a class to code in another repository ({reference!r}); "
                    "safeloader runs only code of the repository you named — load that repository instead."
                )
            if not _MODULE.match(module):
                raise InvalidSpecError(f"{label}: {prefix}{name} names module {module!r}, which is not a module name.")
            entry = prefix + module.replace(".", "/") + ".py"
            if entry not in model.files:
                raise EntryFileNotFoundError(f"{label}: {prefix}{name} refers to {entry}, which the repository lacks.")
            entries.add(entry)
    return sorted(entries)
