"""The shape of a rule and of the tables each rule family contributes to the single-pass analyzer."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from safeloader.policy.schema import Severity


class Resolver(Protocol):
    """What special checks may ask the analyzer about an expression in the file being audited."""

    def qualname(self, node: ast.expr) -> str | None:
        """``os.path.join`` for ``p.join`` after ``import os.path as p``; ``None`` when unknown."""

    def fold(self, node: ast.expr) -> str | None:
        """The string an expression evaluates to when it is built only from constants, else ``None``."""


#: A hit: (rule id, detail) — the analyzer adds location, severity and message.
Hit = tuple[str, str]
#: Called for every call of a given qualified name.
CallCheck = Callable[[ast.Call, Resolver], list[Hit]]
#: Called for every string literal that is code (docstrings excluded) and for constant-folded strings.
StringCheck = Callable[[str], list[Hit]]


@dataclass(frozen=True)
class Rule:
    """One stable check: its id never changes meaning once released."""

    id: str
    name: str
    severity: Severity
    cwe: int
    #: One sentence; ``{detail}`` is replaced by what was found (a module, a call, a literal).
    message: str
    family: str

    def format(self, detail: str) -> str:
        return self.message.format(detail=detail)


@dataclass(frozen=True)
class Family:
    """What one rule family hands the analyzer: its rules and the names that trigger them.

    ``modules``: imported module (or any submodule of it) → rule id.
    ``references``: fully qualified name referenced anywhere (called or not) → rule id.
    ``reference_prefixes``: every attribute below this qualified prefix → rule id.
    ``attributes``: bare attribute name on any object → rule id.
    """

    name: str
    rules: tuple[Rule, ...]
    modules: dict[str, str] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)
    reference_prefixes: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    call_checks: dict[str, CallCheck] = field(default_factory=dict)
    string_checks: tuple[StringCheck, ...] = ()
