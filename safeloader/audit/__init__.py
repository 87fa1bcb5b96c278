"""Static audit of untrusted pipeline code under an organization's policy, and the RestrictedPython layer.

``audit_sources`` / ``audit_manifest`` / ``audit_path`` → :class:`AuditReport`; the rules live in
:mod:`safeloader.audit.rules` (``RULES``), the guard layer in :mod:`safeloader.audit.restricted`.
"""

from safeloader.audit.api import audit_manifest, audit_path, audit_sources
from safeloader.audit.model import AuditReport, Finding, ImportRecord, RestrictedOutcome
from safeloader.audit.rules import RULES, Rule

__all__ = [
    "RULES",
    "AuditReport",
    "Finding",
    "ImportRecord",
    "RestrictedOutcome",
    "Rule",
    "audit_manifest",
    "audit_path",
    "audit_sources",
]
