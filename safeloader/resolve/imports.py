"""Find the files a module's relative imports will load, and refuse paths that leave the pipeline root.

Only ``ImportFrom`` nodes with ``level >= 1`` matter (absolute imports name installed packages, which the
audit judges). They are collected anywhere in the tree, including inside functions and ``try`` blocks,
because any of them may run. ``from .pkg import name`` needs ``pkg.py`` or ``pkg/__init__.py``;
``from . import name`` also needs ``name.py`` or ``name/__init__.py`` when such a file exists, since
``name`` may be a submodule.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Callable, Collection

from safeloader.errors import AuditError, EntryFileNotFoundError, PathTraversalError


def check_relpath(relpath: str, *, what: str = "file name") -> str:
    """Return ``relpath`` if it is a clean POSIX path inside the root; raise :class:`PathTraversalError`."""
    parts = relpath.split("/")
    if (
        not relpath
        or relpath.startswith("/")
        or "\\" in relpath
        or "\0" in relpath
        or any(part in ("", ".", "..") for part in parts)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")
    ):
        raise PathTraversalError(
            f"{what} {relpath!r} is not a plain relative path inside the pipeline root; refusing to fetch it — "
            "use only files below the repository root."
        )
    return relpath


def _module_candidates(package_dir: str, dotted: str) -> tuple[str, str]:
    base = posixpath.join(package_dir, *dotted.split(".")) if package_dir else "/".join(dotted.split("."))
    return f"{base}.py", f"{base}/__init__.py"


def relative_import_targets(relpath: str, source: bytes) -> list[tuple[int, str | None, tuple[str, ...]]]:
    """Parse ``source`` and list its relative imports as ``(level, module, names)``."""
    try:
        tree = ast.parse(source, filename=relpath)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise AuditError(
            f"{relpath} is not valid Python or nests too deeply to parse ({type(exc).__name__}); "
            "it cannot be loaded — fix or remove the file."
        ) from exc
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            found.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    return found


def imported_files(relpath: str, source: bytes, exists: Callable[[str], bool]) -> list[str]:
    """Files (relative to the root) that the relative imports in ``relpath`` will load.

    ``exists(path)`` says whether a root-relative path is a file at the resolved revision.
    """
    needed: list[str] = []
    package_dir = posixpath.dirname(relpath)
    for level, module, names in relative_import_targets(relpath, source):
        parts = package_dir.split("/") if package_dir else []
        if level - 1 > len(parts):
            raise PathTraversalError(
                f"{relpath} imports {'.' * level}{module or ''}, which leaves the pipeline root; "
                "refusing it — only import modules that ship inside the repository."
            )
        anchor = "/".join(parts[: len(parts) - (level - 1)])
        if module:
            # Every package on the way is imported too (its __init__.py runs), then the module itself.
            pieces = module.split(".")
            for depth in range(1, len(pieces)):
                init = posixpath.join(anchor, *pieces[:depth], "__init__.py")
                if exists(init):
                    needed.append(init)
            as_file, as_package = _module_candidates(anchor, module)
            if exists(as_file):
                needed.append(as_file)
            elif exists(as_package):
                needed.append(as_package)
            else:
                raise EntryFileNotFoundError(
                    f"{relpath} imports {'.' * level}{module}, but neither {as_file} nor {as_package} exists "
                    "at the resolved revision; add the file to the repository or fix the import."
                )
            target_package = as_package.rsplit("/", 1)[0] if exists(as_package) and not exists(as_file) else None
        else:
            init = posixpath.join(anchor, "__init__.py") if anchor else "__init__.py"
            if exists(init):
                needed.append(init)
            target_package = anchor
        if target_package is None:
            continue
        for name in names:
            if name == "*":
                continue
            as_file, as_package = _module_candidates(target_package, name)
            if exists(as_file):
                needed.append(as_file)
            elif exists(as_package):
                needed.append(as_package)
            elif not module and not exists(posixpath.join(anchor, "__init__.py") if anchor else "__init__.py"):
                raise EntryFileNotFoundError(
                    f"{relpath} imports {name} from {'.' * level}, but {as_file} does not exist at the resolved "
                    "revision; add the file to the repository or fix the import."
                )
    return [check_relpath(path, what="imported module") for path in dict.fromkeys(needed)]


def collect_closure(
    entry: str, read: Callable[[str], bytes], exists: Callable[[str], bool], *, limit: int = 256
) -> dict[str, bytes]:
    """Follow relative imports from ``entry``; return every file reached, root-relative path → bytes."""
    check_relpath(entry, what="entry file")
    files: dict[str, bytes] = {}
    pending = [entry]
    while pending:
        path = pending.pop()
        if path in files:
            continue
        if len(files) >= limit:
            raise EntryFileNotFoundError(
                f"{entry} pulls in more than {limit} modules through relative imports; "
                "refusing to fetch that many — split the pipeline or vendor fewer files."
            )
        data = read(path)
        files[path] = data
        if path.endswith(".py"):
            pending.extend(p for p in imported_files(path, data, exists) if p not in files)
    return files


def known_files(paths: Collection[str]) -> Callable[[str], bool]:
    """An ``exists`` callback over a fixed set of root-relative paths."""
    frozen = frozenset(paths)
    return frozen.__contains__
