"""Report writers: ``text`` for a terminal, ``json`` for machines, ``sarif`` for code-scanning services."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from safeloader.audit.formats.json import format_json
from safeloader.audit.formats.sarif import format_sarif
from safeloader.audit.formats.text import format_reports
from safeloader.audit.model import AuditReport

FORMATS: dict[str, Callable[[Sequence[AuditReport]], str]] = {
    "text": format_reports,
    "json": format_json,
    "sarif": format_sarif,
}

__all__ = ["FORMATS", "format_json", "format_reports", "format_sarif"]
