"""The audit's result as immutable values: findings, imports, the RestrictedPython outcome, the verdict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from safeloader.policy.schema import Severity, severity_rank

Verdict = Literal["allow", "warn", "deny"]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Severity
    cwe: int
    #: Path relative to the audited root, POSIX separators.
    file: str
    line: int
    #: 1-based, as editors and SARIF count.
    column: int
    message: str
    #: The offending source line, stripped of surrounding blanks (empty when unavailable).
    source_line: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity,
            "cwe": f"CWE-{self.cwe}",
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "source_line": self.source_line,
        }


@dataclass(frozen=True)
class ImportRecord:
    """One module the code imports and how: ``static``, ``relative``, ``__import__``, ``importlib``,
    ``string-built`` (a name assembled at run time and resolved by constant folding)."""

    module: str
    how: str
    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "how": self.how, "file": self.file, "line": self.line}


@dataclass(frozen=True)
class RestrictedOutcome:
    """Whether a file compiles under the RestrictedPython guard layer, and if not, why."""

    compiled: bool
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "errors": list(self.errors)}


@dataclass(frozen=True)
class AuditReport:
    """What the audit decided about one pipeline under one policy.

    Verdict: with ``mode = "enforce"`` any finding at or above ``fail_on`` gives ``deny``; with
    ``mode = "warn"`` it gives ``warn``; findings below ``fail_on`` are listed but leave the verdict at
    ``allow``; ``mode = "off"`` always gives ``allow`` and says so in ``notes``.
    """

    label: str
    entry: str
    policy_name: str
    mode: str
    fail_on: Severity
    verdict: Verdict
    findings: tuple[Finding, ...]
    imports: tuple[ImportRecord, ...]
    file_hashes: Mapping[str, str]
    restricted_python: Mapping[str, RestrictedOutcome]
    restricted_python_mode: str = "off"
    notes: tuple[str, ...] = ()
    #: Display prefix for finding paths (the local directory as the user named it; empty for Hub sources).
    base: str = ""
    extra: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def blocking(self) -> tuple[Finding, ...]:
        """Findings at or above ``fail_on`` (what makes the CLI exit with 1)."""
        threshold = severity_rank(self.fail_on)
        return tuple(f for f in self.findings if severity_rank(f.severity) >= threshold)

    def display_path(self, relpath: str) -> str:
        return f"{self.base.rstrip('/')}/{relpath}" if self.base else relpath

    def counts(self) -> dict[str, int]:
        counts = {severity: 0 for severity in ("critical", "high", "medium", "low", "info")}
        for finding in self.findings:
            counts[finding.severity] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``safeloader audit --format json`` for this one pipeline."""
        return {
            "schema_version": SCHEMA_VERSION,
            "label": self.label,
            "entry": self.entry,
            "verdict": self.verdict,
            "policy": self.policy_name,
            "mode": self.mode,
            "fail_on": self.fail_on,
            "summary": {"files": len(self.file_hashes), "findings": len(self.findings), **self.counts()},
            "findings": [dict(f.to_dict(), file=self.display_path(f.file)) for f in self.findings],
            "imports": [i.to_dict() for i in self.imports],
            "file_hashes": dict(sorted(self.file_hashes.items())),
            "restricted_python": {
                "mode": self.restricted_python_mode,
                "files": {path: outcome.to_dict() for path, outcome in sorted(self.restricted_python.items())},
            },
            "notes": list(self.notes),
        }

    def format_text(self) -> str:
        from safeloader.audit.formats.text import format_reports

        return format_reports([self])


def decide_verdict(findings: tuple[Finding, ...], *, mode: str, fail_on: Severity) -> Verdict:
    if mode == "off":
        return "allow"
    threshold = severity_rank(fail_on)
    if any(severity_rank(f.severity) >= threshold for f in findings):
        return "deny" if mode == "enforce" else "warn"
    return "allow"
