"""The rule registry: every rule of every family, by stable id (what SARIF and the docs enumerate)."""

from __future__ import annotations

from types import MappingProxyType

from safeloader.audit.rules import (
    credentials,
    deserialization,
    dynamic,
    imports,
    introspection,
    native,
    network,
    obfuscation,
    process,
    tampering,
    trojan_source,
)
from safeloader.audit.rules.base import Family, Rule

#: Families in rule-id order.
FAMILIES: tuple[Family, ...] = (
    imports.FAMILY_TABLE,
    process.FAMILY_TABLE,
    network.FAMILY_TABLE,
    dynamic.FAMILY_TABLE,
    deserialization.FAMILY_TABLE,
    native.FAMILY_TABLE,
    introspection.FAMILY_TABLE,
    credentials.FAMILY_TABLE,
    tampering.FAMILY_TABLE,
    obfuscation.FAMILY_TABLE,
    trojan_source.FAMILY_TABLE,
)

RULES: MappingProxyType[str, Rule] = MappingProxyType({rule.id: rule for family in FAMILIES for rule in family.rules})

__all__ = ["FAMILIES", "RULES", "Family", "Rule"]
