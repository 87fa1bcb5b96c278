"""The JSON document: one top-level verdict and findings list covering every audited pipeline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from safeloader.audit.model import SCHEMA_VERSION, AuditReport

_VERDICT_ORDER = ("allow", "warn", "deny")


def overall_verdict(reports: Sequence[AuditReport]) -> str:
    return max((r.verdict for r in reports), key=_VERDICT_ORDER.index, default="allow")


def reports_document(reports: Sequence[AuditReport]) -> dict[str, Any]:
    per_report = [r.to_dict() for r in reports]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "safeloader",
        "verdict": overall_verdict(reports),
        "findings": [finding for doc in per_report for finding in doc["findings"]],
        "reports": per_report,
    }


def format_json(reports: Sequence[AuditReport]) -> str:
    return json.dumps(reports_document(reports), indent=2, sort_keys=False) + "\n"
