"""SARIF 2.1.0 as GitHub code scanning reads it: stable rule ids, security-severity, partialFingerprints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

from safeloader.audit.model import AuditReport, Finding
from safeloader.audit.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/safeloader/safeloader/blob/main/policies/README.md"
#: GitHub maps security-severity >= 9.0 to critical, >= 7.0 high, >= 4.0 medium, else low.
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "1.0"}
_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}


def _rule_descriptors() -> list[dict[str, Any]]:
    return [
        {
            "id": rule.id,
            "name": rule.name,
            "shortDescription": {"text": rule.message.format(detail="…")},
            "fullDescription": {"text": f"{rule.family}: {rule.message.format(detail='…')} (CWE-{rule.cwe})."},
            "helpUri": f"{INFORMATION_URI}#{rule.id.lower()}",
            "defaultConfiguration": {"level": _LEVEL[rule.severity]},
            "properties": {
                "security-severity": SECURITY_SEVERITY[rule.severity],
                "tags": ["security", f"external/cwe/cwe-{rule.cwe}"],
                "precision": "high",
            },
        }
        for rule in RULES.values()
    ]


def _fingerprint(finding: Finding, uri: str) -> str:
    # Stable across line shifts: the rule, the file and the offending line's text, not its number.
    digest = hashlib.sha256(f"{finding.rule_id}\0{uri}\0{finding.source_line}".encode()).hexdigest()
    return f"{digest[:32]}:1"


def artifact_uri(path: str) -> str:
    """Code scanning wants paths relative to the checkout: relative to the working directory when the file
    lies under it, else an absolute ``file://`` URI."""
    location = PurePath(path)
    if not location.is_absolute():
        return location.as_posix()
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return Path(path).as_uri()


def _result(report: AuditReport, finding: Finding, rule_index: dict[str, int]) -> dict[str, Any]:
    uri = artifact_uri(report.display_path(finding.file))
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index[finding.rule_id],
        "level": _LEVEL[finding.severity],
        "message": {"text": f"{finding.message} (severity {finding.severity}, CWE-{finding.cwe})."},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": uri},
                    "region": {"startLine": max(finding.line, 1), "startColumn": max(finding.column, 1)},
                }
            }
        ],
        "partialFingerprints": {"primaryLocationLineHash": _fingerprint(finding, uri)},
        "properties": {"security-severity": SECURITY_SEVERITY[finding.severity], "pipeline": report.label},
    }


def sarif_document(reports: Sequence[AuditReport]) -> dict[str, Any]:
    rules = _rule_descriptors()
    rule_index = {rule["id"]: i for i, rule in enumerate(rules)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "safeloader",
                        "informationUri": INFORMATION_URI,
                        "semanticVersion": "0.1.0",
                        "rules": rules,
                    }
                },
                "results": [_result(r, f, rule_index) for r in reports for f in r.findings],
                "columnKind": "unicodeCodePoints",
            }
        ],
    }


def format_sarif(reports: Sequence[AuditReport]) -> str:
    return json.dumps(sarif_document(reports), indent=2) + "\n"
