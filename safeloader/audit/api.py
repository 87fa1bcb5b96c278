"""Audit entry points: bytes, a resolved manifest, or a local path → an :class:`AuditReport`.

Each file is parsed once; the rules, the import graph (its relative imports) and the RestrictedPython verdict
all read that one tree, which is then dropped. Per-file results can come from an :class:`AuditCache`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import gc
import hashlib
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from safeloader.audit.analyzer import FileAnalysis, FileAnalyzer, RawHit, RelativeImport
from safeloader.audit.graph import OutsideRoot, check_sizes, collect_local, read_in_root, relative_candidates
from safeloader.audit.model import AuditReport, Finding, ImportRecord, RestrictedOutcome, decide_verdict
from safeloader.audit.rules import RULES
from safeloader.audit.rules.trojan_source import hidden_characters_in
from safeloader.errors import AuditError
from safeloader.policy.schema import Policy

if TYPE_CHECKING:
    from safeloader.audit.cache import AuditCache
    from safeloader.resolve.manifest import Manifest

_LINE_IN_ERROR = re.compile(r"Line (\d+)")


def _parse(data: bytes, relpath: str, label: str) -> ast.Module:
    try:
        with warnings.catch_warnings():
            # Warnings about the untrusted code (invalid escapes, "str is not callable") are not ours to print.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return ast.parse(data, filename=relpath)
    except SyntaxError as exc:
        raise AuditError(
            f"{label}: {relpath} line {exc.lineno} is not valid Python ({exc.msg}); fix the file or remove it."
        ) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise AuditError(
            f"{label}: {relpath} cannot be parsed ({type(exc).__name__}: {str(exc)[:120]}); "
            "it is too deeply nested or not Python source — fix or remove it."
        ) from exc


@dataclass(frozen=True)
class FileResult:
    """What one file's audit found before the policy's severities apply (what the cache stores)."""

    sha256: str
    analysis: FileAnalysis
    restricted: RestrictedOutcome | None


def audit_file(data: bytes, relpath: str, label: str, policy: Policy, cache: AuditCache | None = None) -> FileResult:
    """Parse ``data`` once and run every pass over that tree: the rules, the relative imports the import graph
    follows, and the RestrictedPython verdict (unless the policy turns it off)."""
    sha256 = hashlib.sha256(data).hexdigest()
    if cache is not None:
        cached = cache.load(relpath, sha256)
        if cached is not None:
            return FileResult(sha256, *cached)
    tree = _parse(data, relpath, label)
    analyzer = FileAnalyzer(allow_imports=policy.audit.allow_imports, deny_imports=policy.audit.deny_imports)
    screen = None
    if policy.audit.restricted_python != "off":
        from safeloader.audit.restricted_check import RestrictedScreen

        screen = RestrictedScreen(data)
    try:
        analysis = analyzer.analyze(tree, relpath, screen)
    except RecursionError as exc:
        raise AuditError(f"{label}: {relpath} is nested too deeply to audit; simplify the expression.") from exc
    # Trojan Source characters hide in comments and strings too, so they are found in the text, not the tree.
    hidden = tuple(RawHit("SL960", detail, line, column) for line, column, detail in hidden_characters_in(data))
    if hidden:
        analysis = dataclasses.replace(analysis, hits=(*analysis.hits, *hidden))
    restricted = None
    if screen is not None:
        from safeloader.audit.restricted_check import restricted_outcome

        restricted = restricted_outcome(tree, data, relpath, screen)
    if cache is not None:
        cache.store(relpath, sha256, analysis, restricted)
    return FileResult(sha256, analysis, restricted)


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """ASTs are acyclic, so the cycle collector has nothing to find while trees are built and walked, yet
    with ~100k fresh nodes per file it runs over and over (measured: 2-5x the cost of parsing itself). It is
    restored, and runs as usual, afterwards."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _relative_hits(
    relpath: str, relative_imports: tuple[RelativeImport, ...], files: Mapping[str, bytes], package: str | None
) -> list[RawHit]:
    """SL104/SL105 for relative imports, unless the files belong to an installed ``package`` (diffusers' own
    pipelines import ``...utils``), where what is not audited here is that package's own module."""
    hits = []
    for spec in relative_imports:
        shown = "." * spec.level + spec.module
        try:
            groups = relative_candidates(relpath, spec)
        except OutsideRoot:
            if package is None:
                hits.append(RawHit("SL104", shown, spec.line, spec.column))
            continue
        missing = any(not any(option in files for option in options) for options in groups)
        if missing and package is None:
            hits.append(RawHit("SL105", shown, spec.line, spec.column))
    return hits


def _to_finding(hit: RawHit, relpath: str, lines: list[str], policy: Policy) -> Finding | None:
    rule = RULES[hit.rule_id]
    override = policy.audit.rule_override(hit.rule_id)
    if override == "off":
        return None
    source_line = lines[hit.line - 1].strip()[:240] if 0 < hit.line <= len(lines) else ""
    return Finding(
        rule_id=rule.id,
        severity=override or rule.severity,  # type: ignore[arg-type]
        cwe=rule.cwe,
        file=relpath,
        line=hit.line,
        column=hit.column + 1,
        message=rule.format(hit.detail),
        source_line=source_line,
    )


def audit_sources(
    files: Mapping[str, bytes],
    policy: Policy,
    *,
    entry: str,
    label: str,
    base: str = "",
    package: str | None = None,
    cache: AuditCache | None = None,
) -> AuditReport:
    """Audit every file of a pipeline (relative path → bytes) under ``policy``.

    ``package``: set only for code that is part of an installed package (the diffusers corpus); relative
    imports that leave the audited files then name that package's modules instead of being findings.
    ``cache``: reuse and record per-file results (:mod:`safeloader.audit.cache`).
    """
    check_sizes(files, label)
    if entry not in files:
        raise AuditError(f"{label}: entry file {entry} is not among the audited files; pass the files it runs.")
    with _cycle_collector_paused():
        results = {relpath: audit_file(files[relpath], relpath, label, policy, cache) for relpath in sorted(files)}
    return _report(files, results, policy, entry=entry, label=label, base=base, package=package)


def _report(
    files: Mapping[str, bytes],
    results: Mapping[str, FileResult],
    policy: Policy,
    *,
    entry: str,
    label: str,
    base: str,
    package: str | None,
) -> AuditReport:
    findings: list[Finding] = []
    imports: list[ImportRecord] = []
    hashes: dict[str, str] = {}
    restricted: dict[str, RestrictedOutcome] = {}
    rp_mode = policy.audit.restricted_python
    for relpath in sorted(files):
        result = results[relpath]
        hashes[relpath] = result.sha256
        hits = [*result.analysis.hits, *_relative_hits(relpath, result.analysis.relative_imports, files, package)]
        outcome = result.restricted
        if rp_mode != "off" and outcome is not None:
            restricted[relpath] = outcome
            if rp_mode == "enforce" and not outcome.compiled:
                first = outcome.errors[0] if outcome.errors else "refused"
                match = _LINE_IN_ERROR.search(first)
                hits.append(RawHit("SL499", first[:200], int(match.group(1)) if match else 1, 0))
        imports.extend(result.analysis.imports)
        if hits:
            lines = files[relpath].decode("utf-8", "replace").splitlines()
            for hit in sorted(hits, key=lambda h: (h.line, h.column, h.rule_id)):
                finding = _to_finding(hit, relpath, lines, policy)
                if finding is not None:
                    findings.append(finding)
    mode = policy.audit.mode
    notes = []
    if mode == "off":
        notes.append(f'AUDIT DISABLED by policy {policy.name!r} ([audit] mode = "off"): findings do not block.')
    elif mode == "warn":
        notes.append(f"audit in warn mode under policy {policy.name!r}: findings are reported but never block.")
    found = tuple(findings)
    return AuditReport(
        label=label,
        entry=entry,
        policy_name=policy.name,
        mode=mode,
        fail_on=policy.audit.fail_on,
        verdict=decide_verdict(found, mode=mode, fail_on=policy.audit.fail_on),
        findings=found,
        imports=tuple(imports),
        file_hashes=MappingProxyType(hashes),
        restricted_python=MappingProxyType(restricted),
        restricted_python_mode=rp_mode,
        notes=tuple(notes),
        base=base,
    )


def audit_manifest(manifest: Manifest, policy: Policy, cache: AuditCache | None = None) -> AuditReport:
    """Audit a resolved pipeline, reading each file through ``read_verified`` (what is audited was verified)."""
    files = manifest.read_all_verified()
    label = f"{manifest.source_id}@{manifest.commit}" if manifest.commit else manifest.source_id
    base = manifest.repo if manifest.source in ("local_dir", "local_file") else ""
    report = audit_sources(files, policy, entry=manifest.entry, label=label, base=base, cache=cache)
    # What verification let through with a warning (a malformed signature, an unpinned revision) belongs in the report.
    warnings = tuple(
        f"{key.replace('_', ' ')}: {manifest.notes[key]}"
        for key in ("signature_warning", "unpinned_warning")
        if key in manifest.notes
    )
    return dataclasses.replace(report, notes=(*report.notes, *warnings)) if warnings else report


def audit_path(path: Path, policy: Policy, cache: AuditCache | None = None, *, jobs: int = 1) -> AuditReport:
    """Audit a local ``.py`` file or directory: the entry (``pipeline.py``, else every top-level ``.py``) plus
    everything it imports relatively. Each file is audited as it is read, and the import graph follows the
    relative imports that audit found (no second parse).

    ``jobs > 1`` audits the entries of a large directory on that many forked processes
    (:mod:`safeloader.audit.parallel`); only for single-threaded callers such as the CLI."""
    path = Path(path)
    if path.is_file():
        root, entries, base = path.resolve().parent, [path.name], str(path.parent)
    elif path.is_dir():
        root, base = path.resolve(), str(path)
        entries = (
            ["pipeline.py"]
            if (path / "pipeline.py").is_file()
            else sorted(p.name for p in path.iterdir() if p.suffix == ".py" and p.is_file())
        )
        if not entries:
            raise AuditError(f"{path} holds no .py file; point the audit at a pipeline file or directory.")
    else:
        raise AuditError(f"{path} does not exist; give the path of a pipeline file or directory.")
    label = str(path)
    results: dict[str, FileResult] = {}

    def relative_imports_of(relpath: str, data: bytes) -> tuple[RelativeImport, ...]:
        result = results.get(relpath)
        if result is None or result.sha256 != hashlib.sha256(data).hexdigest():
            result = audit_file(data, relpath, label, policy, cache)  # not audited yet, or changed since
            results[relpath] = result
        return result.analysis.relative_imports

    with _cycle_collector_paused():
        if jobs > 1 and len(entries) > 1:
            from safeloader.audit.parallel import audit_in_parallel

            items = [(entry, read_in_root(root, entry)) for entry in entries]
            check_sizes(dict(items), label)
            results.update(audit_in_parallel(items, label, policy, cache, jobs))
        files = collect_local(root, entries, relative_imports_of)
    check_sizes(files, label)
    return _report(
        files, results, policy, entry=entries[0], label=label, base="" if base == "." else base, package=None
    )
