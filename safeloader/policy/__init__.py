"""Organization policies: what may be loaded, how it is audited, how it is confined."""

from safeloader.policy.loader import BUILTIN_NAMES, load_policy, policy_from_mapping, source_allowed, with_overrides
from safeloader.policy.schema import (
    SANDBOX_LAYERS,
    SEVERITIES,
    AuditPolicy,
    Policy,
    SandboxPolicy,
    Severity,
    SourcesPolicy,
    WeightsPolicy,
    severity_rank,
)

__all__ = [
    "BUILTIN_NAMES",
    "SANDBOX_LAYERS",
    "SEVERITIES",
    "AuditPolicy",
    "Policy",
    "SandboxPolicy",
    "Severity",
    "SourcesPolicy",
    "WeightsPolicy",
    "load_policy",
    "policy_from_mapping",
    "severity_rank",
    "source_allowed",
    "with_overrides",
]
