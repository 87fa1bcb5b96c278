"""Terminal output: a summary line per pipeline, then findings grouped by file with the offending line."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from safeloader.audit.model import AuditReport
from safeloader.display import printable

_MARK = {"critical": "CRIT", "high": "HIGH", "medium": "MED ", "low": "LOW ", "info": "INFO"}


def _format_one(report: AuditReport) -> list[str]:
    counts = report.counts()
    summary = ", ".join(f"{n} {sev}" for sev, n in counts.items() if n) or "no findings"
    lines = [
        f"{printable(report.label)}: {report.verdict.upper()} under policy {report.policy_name!r} "
        f"(mode {report.mode}, fail_on {report.fail_on}) — {len(report.file_hashes)} file(s), {summary}",
    ]
    lines.extend(f"  note: {printable(note)}" for note in report.notes)
    refused = [path for path, outcome in sorted(report.restricted_python.items()) if not outcome.compiled]
    if refused:
        lines.append(f"  RestrictedPython ({report.restricted_python_mode}): refused {printable(', '.join(refused))}")
    for path, findings in groupby(sorted(report.findings, key=lambda f: (f.file, f.line)), key=lambda f: f.file):
        lines.append("")
        lines.append(f"  {printable(report.display_path(path))}")
        for finding in findings:
            lines.append(
                f"    {finding.line}:{finding.column} {_MARK[finding.severity]} {finding.rule_id} "
                f"{printable(finding.message)} [CWE-{finding.cwe}]"
            )
            if finding.source_line:
                lines.append("        | " + printable(finding.source_line, keep="\t"))
    return lines


def format_reports(reports: Sequence[AuditReport]) -> str:
    blocks = ["\n".join(_format_one(report)) for report in reports]
    return "\n\n".join(blocks) + "\n"
