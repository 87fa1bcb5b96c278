"""Which files a pipeline runs: its entry plus everything reachable through relative imports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from safeloader.audit.analyzer import RelativeImport
from safeloader.errors import AuditError, PathTraversalError

MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 16 * 1024 * 1024
MAX_FILES = 512


class OutsideRoot(Exception):
    """A relative import climbs above the audited root (reported as SL104, never followed)."""


def relative_candidates(importer: str, spec: RelativeImport) -> list[tuple[str, ...]]:
    """For each imported thing, the files that could provide it (``mod.py`` or ``mod/__init__.py``).

    ``from . import a, b`` yields one candidate group per name (a name may also be an attribute of the
    package's ``__init__.py``); ``from .m import x`` yields one group for ``m``.
    """
    package = list(PurePosixPath(importer).parts[:-1])
    climb = spec.level - 1
    if climb > len(package):
        raise OutsideRoot(importer)
    base = package[: len(package) - climb]
    targets = [base + spec.module.split(".")] if spec.module else [[*base, name] for name in spec.names]
    groups: list[tuple[str, ...]] = []
    for parts in targets:
        stem = "/".join(parts)
        init = f"{stem}/__init__.py" if stem else "__init__.py"
        package_init = "/".join([*base, "__init__.py"])
        options: tuple[str, ...] = (f"{stem}.py", init) if spec.module else (f"{stem}.py", init, package_init)
        groups.append(options)
    return groups


def read_in_root(root: Path, relpath: str) -> bytes:
    """The bytes of ``root/relpath``, refusing links out of ``root`` and oversized files."""
    path = root / relpath
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise PathTraversalError(
            f"{path} resolves to {resolved}, outside {root}; audit the real location instead of a link."
        )
    try:
        size = resolved.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AuditError(
                f"{path} is {size} bytes, over the audit limit of {MAX_FILE_BYTES}; it is not pipeline "
                "code — remove it from the pipeline."
            )
        return resolved.read_bytes()
    except OSError as exc:
        raise AuditError(f"cannot read {path} ({exc.strerror}); check that it exists and is readable.") from exc


def collect_local(
    root: Path, entries: list[str], relative_imports_of: Callable[[str, bytes], tuple[RelativeImport, ...]]
) -> dict[str, bytes]:
    """Read the entries and, transitively, every file they import relatively, staying inside ``root``.

    ``relative_imports_of(relpath, data)`` audits a file as it is read and returns its relative imports: the
    graph never parses a file itself (the audit's one parse per file serves both)."""
    root = root.resolve()
    files: dict[str, bytes] = {}
    pending = list(entries)
    total = 0
    while pending:
        relpath = pending.pop()
        if relpath in files:
            continue
        data = read_in_root(root, relpath)
        total += len(data)
        if total > MAX_TOTAL_BYTES or len(files) >= MAX_FILES:
            raise AuditError(
                f"{root} holds more code than the audit accepts ({MAX_FILES} files, {MAX_TOTAL_BYTES} "
                "bytes); audit a smaller pipeline directory."
            )
        files[relpath] = data
        for spec in relative_imports_of(relpath, data):
            try:
                groups = relative_candidates(relpath, spec)
            except OutsideRoot:
                continue
            for options in groups:
                found = next((o for o in options if (root / o).is_file()), None)
                if found is not None and found not in files:
                    pending.append(found)
    return files


def check_sizes(files: Mapping[str, bytes], label: str) -> None:
    if len(files) > MAX_FILES:
        raise AuditError(f"{label} has {len(files)} files, over the audit limit of {MAX_FILES}; audit fewer files.")
    total = 0
    for relpath, data in files.items():
        if len(data) > MAX_FILE_BYTES:
            raise AuditError(
                f"{label}: {relpath} is {len(data)} bytes, over the audit limit of {MAX_FILE_BYTES}; "
                "it is not pipeline code — remove it."
            )
        total += len(data)
    if total > MAX_TOTAL_BYTES:
        raise AuditError(
            f"{label} holds {total} bytes of code, over the audit limit of {MAX_TOTAL_BYTES}; audit a smaller pipeline."
        )
