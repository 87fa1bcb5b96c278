"""Install the verified pipeline files as modules of a synthetic package, straight from the bytes received.

Every file is re-hashed against the expected sha256 before anything is compiled, nothing is read from disk,
and relative imports between verified files (``from .helpers import x``) resolve through a meta-path finder
that only knows this package's files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import itertools
import linecache
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_package_numbers = itertools.count(1)


class CodeRefused(Exception):
    """The code sent for loading does not match its hashes or is not a set of importable files."""


def _module_parts(relpath: str) -> list[str]:
    parts = relpath.split("/")
    if not relpath.endswith(".py") or any(part in ("", ".", "..") for part in parts) or relpath.startswith("/"):
        raise CodeRefused(f"{relpath!r} is not a relative path to a .py file inside the pipeline")
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return [part if _PART.match(part) else re.sub(r"\W", "_", part) for part in parts]


def _verify(code: Mapping[str, bytes], code_hashes: Mapping[str, str]) -> None:
    if set(code) != set(code_hashes):
        missing = sorted(set(code) ^ set(code_hashes))
        raise CodeRefused(f"the code and its hash table do not list the same files ({missing[:5]})")
    for relpath, data in code.items():
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != code_hashes[relpath]:
            raise CodeRefused(f"{relpath} does not match its verified sha256 {code_hashes[relpath]}")


class VerifiedPackage(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The verified files as one importable package, e.g. ``safeloader_remote_3``."""

    def __init__(
        self, code: Mapping[str, bytes], code_hashes: Mapping[str, str], *, label: str, restricted_python: str = "off"
    ) -> None:
        _verify(code, code_hashes)
        if restricted_python not in ("off", "report", "enforce"):
            raise CodeRefused(f"restricted_python mode {restricted_python!r} is unknown")
        safe_label = re.sub(r"\W", "_", label)[:40] or "remote"
        self.name = f"safeloader_{safe_label}_{next(_package_numbers)}"
        self.restricted = restricted_python == "enforce"
        self.virtual_root = f"/safeloader-verified/{self.name}"
        #: module name → (relpath, source bytes, is package)
        self.modules: dict[str, tuple[str | None, bytes, bool]] = {self.name: (None, b"", True)}
        self.by_relpath: dict[str, str] = {}
        for relpath, data in sorted(code.items()):
            if not relpath.endswith(".py"):
                continue
            parts = _module_parts(relpath)
            for depth in range(1, len(parts)):
                self.modules.setdefault(".".join([self.name, *parts[:depth]]), (None, b"", True))
            module_name = ".".join([self.name, *parts])
            is_package = relpath.endswith("__init__.py")
            self.modules[module_name] = (relpath, data, is_package)
            self.by_relpath[relpath] = module_name
        sys.meta_path.insert(0, self)

    # importlib protocol ------------------------------------------------------------------------------
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        entry = self.modules.get(fullname)
        if entry is None:
            return None
        relpath, _data, is_package = entry
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)
        spec.origin = f"{self.virtual_root}/{relpath}" if relpath else None
        spec.has_location = False
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        relpath, data, _is_package = self.modules[module.__name__]
        if relpath is None:
            return
        filename = f"{self.virtual_root}/{relpath}"
        module.__file__ = filename
        source = data.decode("utf-8")
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        if self.restricted:
            from safeloader.audit import restricted

            compiled = restricted.compile_restricted_module(source, filename)
            namespace: dict[str, Any] = restricted.restricted_module_globals(module.__name__, filename)
            for key in ("__name__", "__package__", "__spec__", "__loader__", "__file__", "__path__"):
                if key in module.__dict__:
                    namespace[key] = module.__dict__[key]
            module.__dict__.update(namespace)
        else:
            compiled = compile(data, filename, "exec", dont_inherit=True)
        exec(compiled, module.__dict__)  # the verified, re-hashed bytes, and only those

    # lookups ------------------------------------------------------------------------------------------
    def import_relpath(self, relpath: str) -> types.ModuleType:
        module_name = self.by_relpath.get(relpath)
        if module_name is None:
            raise CodeRefused(f"{relpath} is not one of the verified pipeline files")
        return importlib.import_module(module_name)

    def has(self, relpath: str) -> bool:
        return relpath in self.by_relpath
