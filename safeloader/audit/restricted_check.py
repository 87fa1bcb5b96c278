"""The RestrictedPython verdict of the audit, from the tree the audit already parsed.

Running :class:`~safeloader.audit.restricted.PipelineTransformer` (a pure-Python ``NodeTransformer`` that
rewrites every node) and compiling its output took ~60 % of an audit, and re-parsed every file. The audit
only needs the verdict and, for a refused file, the refusals. So a fast screen walks the shared tree once and
looks for everything that could make the transformer or the compiler refuse the file:

- every refusal the transformer records (names, attributes, import names, annotations, nodes it has no
  visitor for, ``except*``) — the screen uses the transformer's own predicates (``name_refusal``,
  ``attribute_refusal``, ``annotation_refusals``) and its own table of visitors, so the two cannot drift;
- every construct whose validity CPython decides only at compile time (``return``/``break`` placement,
  ``__future__`` imports, ``global``/``nonlocal``, ``yield``, ``await``, walrus, starred targets, duplicate
  arguments, deep block nesting), and files nested deeper than the transformer's recursion can go;
- source the transformer would decode differently (not UTF-8, a byte-order mark, a non-UTF-8 coding line).

The screen runs inside the analyzer's one walk over the tree (no second traversal). A file it passes
compiles under the transformer (tests/test_restricted_check.py checks the two
agree on every diffusers pipeline, the malicious corpus and one sample per refusal). A file it flags is
handed to the real transformer and compiler, whose outcome — exact messages included — is the verdict. The
screen can only send too many files to the slow path, never let a refused one through. The worker still
compiles the executed bytes with the full transformer in ``enforce`` mode; this module changes only how the
audit predicts that.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable
from typing import Any

from safeloader.audit.model import RestrictedOutcome
from safeloader.audit.restricted import (
    REFUSED_ATTRIBUTES,
    REFUSED_NAMES,
    PipelineTransformer,
    annotation_refusals,
    attribute_refusal,
    compile_restricted_module,
    name_refusal,
)
from safeloader.errors import AuditDenied

#: Deeper trees go to the real transformer, whose recursion may end in "nested too deeply" (diffusers: 20).
MAX_SCREEN_DEPTH = 60
#: Statically nested loops / try / with per function; CPython refuses more than 20.
_MAX_BLOCKS = 15
_FUTURE_FEATURES = frozenset(
    {
        "nested_scopes",
        "generators",
        "division",
        "absolute_import",
        "with_statement",
        "print_function",
        "unicode_literals",
        "generator_stop",
        "annotations",
    }
)


def _ast_classes() -> list[type[ast.AST]]:
    found: list[type[ast.AST]] = []
    pending: list[type[ast.AST]] = [ast.AST]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


#: Node classes the transformer visits; anything else it refuses ("X statements are not allowed").
_VISITED = frozenset(cls for cls in _ast_classes() if hasattr(PipelineTransformer, f"visit_{cls.__name__}"))
#: Fields that hold identifiers, flags, contexts or operators (which all have plain visitors), never nodes
#: the screen must see. ``names`` holds nodes only in imports; Global/Nonlocal are flagged before descent.
_SKIPPED_FIELDS = frozenset(
    {
        "ctx",
        "op",
        "ops",
        "type_comment",
        "kind",
        "is_async",
        "level",
        "conversion",
        "id",
        "attr",
        "arg",
        "name",
        "asname",
        "module",
        "simple",
        "tag",
        "kwd_attrs",
        "type_ignores",
    }
)
_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: (), ast.Global: (), ast.Nonlocal: ()}


def _fields(cls: type) -> tuple[str, ...]:
    fields = tuple(f for f in getattr(cls, "_fields", ()) if f not in _SKIPPED_FIELDS)
    _FIELDS[cls] = fields
    return fields


def _refused_name(name: str | None) -> bool:
    return name is not None and name_refusal(name) is not None


#: Identifiers already known to pass (a name's refusal depends on the name alone); bounded.
SAFE_NAMES: set[str] = set()
_SAFE_NAMES_MAX = 200_000


def _on_name(node: ast.Name) -> bool:
    name = node.id
    if name[0] == "_" or name in REFUSED_NAMES or name.endswith("__roles__"):
        return name_refusal(name) is not None and not (
            # ``print``/``printed`` in a load become the print collector before any name check.
            node.ctx.__class__ is ast.Load and name in ("print", "printed")
        )
    if len(SAFE_NAMES) < _SAFE_NAMES_MAX:
        SAFE_NAMES.add(name)
    return False


def _on_attribute(node: ast.Attribute) -> bool:
    attr = node.attr
    return (attr[0] == "_" or attr in REFUSED_ATTRIBUTES) and attribute_refusal(attr) is not None


def _on_function(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> bool:
    arguments = node.args
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    if arguments.vararg is not None:
        every.append(arguments.vararg)
    if arguments.kwarg is not None:
        every.append(arguments.kwarg)
    names = [a.arg for a in every]
    if len(set(names)) != len(names) or any(_refused_name(n) for n in names):
        return True
    if isinstance(node, ast.Lambda):
        return False
    if node.__class__ is ast.AsyncFunctionDef:
        return True  # async generators and ``return`` in them are compile-time questions: let the compiler decide
    return _refused_name(node.name)


def _on_class(node: ast.ClassDef) -> bool:
    return _refused_name(node.name)


def _on_import(node: ast.Import | ast.ImportFrom) -> bool:
    return any("*" in a.name or _refused_name(a.name) or _refused_name(a.asname) for a in node.names)


def _on_handler(node: ast.ExceptHandler) -> bool:
    return _refused_name(node.name)


def _on_starred(node: ast.Starred) -> bool:
    return node.ctx.__class__ is not ast.Load


def _on_comprehension(node: ast.comprehension) -> bool:
    return bool(node.is_async)


def _flag(node: ast.AST) -> bool:
    return True


#: Per node class: True when the node may be refused (then the real transformer decides).
_SCREENS: dict[type, Callable[[Any], bool]] = {
    ast.Name: _on_name,
    ast.Attribute: _on_attribute,
    ast.FunctionDef: _on_function,
    ast.AsyncFunctionDef: _on_function,
    ast.Lambda: _on_function,
    ast.ClassDef: _on_class,
    ast.Import: _on_import,
    ast.ImportFrom: _on_import,
    ast.ExceptHandler: _on_handler,
    ast.Starred: _on_starred,
    ast.comprehension: _on_comprehension,
    # Compile-time questions (scoping, generators, coroutines) and outright refusals.
    ast.Global: _flag,
    ast.Nonlocal: _flag,
    ast.Yield: _flag,
    ast.YieldFrom: _flag,
    ast.Await: _flag,
    ast.NamedExpr: _flag,
    ast.TryStar: _flag,
    ast.Match: _flag,
}


def _on_attribute_chain(node: ast.Attribute) -> bool:
    """The analyzer visits a chain ``a.b.c`` once, at its outermost node: screen every link and the base name."""
    current: ast.expr = node
    while current.__class__ is ast.Attribute:
        assert isinstance(current, ast.Attribute)
        if _on_attribute(current):
            return True
        current = current.value
    return isinstance(current, ast.Name) and _on_name(current)


#: What the analyzer's walk calls per node class (it visits attribute chains once, at the outermost node).
SCREENS: dict[type, Callable[[Any], bool]] = {
    **{cls: _flag for cls in _ast_classes() if cls not in _VISITED},
    **_SCREENS,
    ast.Attribute: _on_attribute_chain,
}


class RestrictedScreen:
    """Filled in by :meth:`FileAnalyzer.analyze <safeloader.audit.analyzer.FileAnalyzer.analyze>` during its
    one walk over the tree of ``data``: ``flagged`` once any node may be refused or the tree is deeper than
    ``max_depth``. One per file."""

    max_depth = MAX_SCREEN_DEPTH
    safe_names = SAFE_NAMES

    def __init__(self, data: bytes) -> None:
        self.flagged = False
        # Line ends as the tokenizer counts them (\n, \r\n, \r); offsets in the AST are UTF-8 bytes.
        self._lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self.checks: dict[type, Callable[[Any], bool]] = {
            **SCREENS,
            ast.FunctionDef: self._on_function,
            ast.AsyncFunctionDef: self._on_function,
            ast.arg: self._on_annotated,
            ast.AnnAssign: self._on_annotated,
        }

    def _on_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        return _on_function(node) or self._refused_annotation(node.returns)

    def _on_annotated(self, node: ast.arg | ast.AnnAssign) -> bool:
        return self._refused_annotation(node.annotation)

    def _refused_annotation(self, annotation: ast.expr | None) -> bool:
        """Whether an annotation holds a string the transformer would refuse. A string needs a quote in the
        source, so an annotation on one line whose source span holds none passes without a walk; the rest get
        the transformer's own check."""
        if annotation is None or annotation.__class__ is ast.Name:
            return False
        line = annotation.lineno
        if line == annotation.end_lineno and 0 < line <= len(self._lines):
            span = self._lines[line - 1][annotation.col_offset : annotation.end_col_offset]
            if b"'" not in span and b'"' not in span:
                return False
        return bool(annotation_refusals(annotation))


def _statements_may_be_refused(body: list[ast.stmt], scope: str, in_loop: bool, blocks: int) -> bool:
    """Placement rules CPython checks only when compiling (bounded recursion: the depth was checked)."""
    leading = scope == "module"
    for index, statement in enumerate(body):
        cls = statement.__class__
        if cls is ast.ImportFrom and statement.module == "__future__":  # type: ignore[attr-defined]
            if not leading or any(a.name not in _FUTURE_FEATURES for a in statement.names):  # type: ignore[attr-defined]
                return True
        elif leading and not (
            index == 0 and cls is ast.Expr and isinstance(getattr(statement.value, "value", None), str)  # type: ignore[attr-defined]
        ):
            leading = False
        if cls is ast.Return:
            if scope != "function":
                return True
        elif cls is ast.Break or cls is ast.Continue:
            if not in_loop:
                return True
        elif cls is ast.FunctionDef or cls is ast.AsyncFunctionDef:
            if _statements_may_be_refused(statement.body, "function", False, 0):  # type: ignore[attr-defined]
                return True
        elif cls is ast.ClassDef:
            if _statements_may_be_refused(statement.body, "class", False, 0):  # type: ignore[attr-defined]
                return True
        elif cls is ast.For or cls is ast.While or cls is ast.AsyncFor:
            if blocks + 1 > _MAX_BLOCKS:
                return True
            if _statements_may_be_refused(statement.body, scope, True, blocks + 1):  # type: ignore[attr-defined]
                return True
            if _statements_may_be_refused(statement.orelse, scope, in_loop, blocks + 1):  # type: ignore[attr-defined]
                return True
        elif cls is ast.If:
            if _statements_may_be_refused(statement.body, scope, in_loop, blocks):  # type: ignore[attr-defined]
                return True
            if _statements_may_be_refused(statement.orelse, scope, in_loop, blocks):  # type: ignore[attr-defined]
                return True
        elif cls is ast.With or cls is ast.AsyncWith:
            if blocks + 1 > _MAX_BLOCKS:
                return True
            if _statements_may_be_refused(statement.body, scope, in_loop, blocks + 1):  # type: ignore[attr-defined]
                return True
        elif cls is ast.Try:
            assert isinstance(statement, ast.Try)
            if blocks + 2 > _MAX_BLOCKS:
                return True
            handlers = statement.handlers
            if any(h.type is None for h in handlers[:-1]):
                return True  # "default 'except:' must be last"
            parts = [statement.body, statement.orelse, statement.finalbody, *(h.body for h in handlers)]
            if any(_statements_may_be_refused(part, scope, in_loop, blocks + 2) for part in parts):
                return True
        elif cls is not ast.Expr and cls not in _SIMPLE_STATEMENTS:
            return True  # a statement kind this screen does not know: let the compiler decide
    return False


_SIMPLE_STATEMENTS = frozenset(
    {
        ast.Import,
        ast.ImportFrom,
        ast.Assign,
        ast.AugAssign,
        ast.AnnAssign,
        ast.Expr,
        ast.Pass,
        ast.Raise,
        ast.Assert,
        ast.Delete,
        ast.Global,
        ast.Nonlocal,
    }
)


def _decodes_like_the_transformer(data: bytes) -> bool:
    """The audit parsed the bytes; the transformer parses ``data.decode("utf-8")``. Same tree only when the
    file is UTF-8 without a byte-order mark and without a coding line naming another encoding."""
    if data.startswith(b"\xef\xbb\xbf"):
        return False
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError:
        return False
    return encoding == "utf-8"


def restricted_outcome(tree: ast.Module, data: bytes, relpath: str, screen: RestrictedScreen) -> RestrictedOutcome:
    """Whether ``data`` compiles under the guard layer, given the ``screen`` the analyzer's walk over ``tree``
    filled in (the tree is only read)."""
    if (
        not screen.flagged
        and _decodes_like_the_transformer(data)
        and not _statements_may_be_refused(tree.body, "module", False, 0)
    ):
        return RestrictedOutcome(True)
    return full_restricted_outcome(data, relpath)


def full_restricted_outcome(data: bytes, relpath: str) -> RestrictedOutcome:
    """The verdict of the real transformer and compiler (re-parses ``data``)."""
    try:
        compile_restricted_module(data, relpath)
    except AuditDenied as exc:
        return RestrictedOutcome(False, tuple(str(exc).split("\n")))
    return RestrictedOutcome(True)
