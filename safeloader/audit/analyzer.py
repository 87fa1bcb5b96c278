"""One pass over one file's AST: a single visitor dispatches each node to the checks of every rule family.

The analyzer never runs the code and never uses regular expressions over the source: docstrings and comments
are not code. It tracks just enough to see through renaming (``import os as o``), constant strings assembled
at run time (``"sys" + "tem"``, ``chr`` chains, ``bytes.fromhex``) and decoded payloads passed to ``exec``.
"""

from __future__ import annotations

import ast
import base64
import binascii
import builtins
import codecs
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from safeloader.audit.model import ImportRecord
from safeloader.audit.rules import FAMILIES
from safeloader.audit.rules.base import CallCheck, Hit, StringCheck
from safeloader.audit.rules.credentials import environment_scan
from safeloader.audit.rules.dynamic import TYPE_POSITION_EXEMPT
from safeloader.audit.rules.imports import CONSTANT_NAME_IMPORTERS
from safeloader.audit.rules.obfuscation import CHR_CHAIN_MIN, DECODERS
from safeloader.audit.rules.tampering import write_method_on_own_file

_MAX_FOLD_DEPTH = 48
_MAX_FOLDED_LENGTH = 65_536
_MAX_CHAIN = 64
_BUILTIN_NAMES = frozenset(dir(builtins))
_IMPORT_FUNCTIONS = frozenset({"__import__", "builtins.__import__", "importlib.import_module", "importlib.__import__"})
_CODE_RUNNERS = frozenset({"exec", "eval", "compile", "builtins.exec", "builtins.eval", "builtins.compile"})
_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr", "builtins.getattr"})
#: Last components of decoder calls and of methods that pass decoded data on (cheap pre-filter).
_DECODER_ATTRIBUTES = frozenset({name.rsplit(".", 1)[1] for name in DECODERS} | {"decode", "decompress", "tobytes"})
_PASS_THROUGH_CALLS = frozenset({"compile", "str", "bytes", "bytearray"})
_FOLDABLE_VALUES = frozenset({ast.Constant, ast.BinOp, ast.Call, ast.JoinedStr, ast.Subscript, ast.Name})
_PARENT_MODULE_WRITES = frozenset({"sys.modules", "builtins", "__builtins__"})


class Screen(Protocol):
    """Another pass that rides along the analyzer's walk: per-class checks, a depth bound, a flag."""

    checks: dict[type, Callable[[Any], bool]]
    max_depth: int
    flagged: bool
    #: Names known to pass the checks (skipped without a call: names are the commonest node).
    safe_names: set[str]


@dataclass(frozen=True)
class RawHit:
    rule_id: str
    detail: str
    line: int
    column: int


@dataclass(frozen=True)
class RelativeImport:
    """``from ..pkg.mod import name`` inside the audited file: ``level=2, module="pkg.mod"``."""

    level: int
    module: str
    names: tuple[str, ...]
    line: int
    column: int


@dataclass(frozen=True)
class FileAnalysis:
    hits: tuple[RawHit, ...]
    imports: tuple[ImportRecord, ...]
    relative_imports: tuple[RelativeImport, ...]


class _Tables:
    """Every family's tables merged once, so that each node costs one dictionary lookup per table."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.references: dict[str, str] = {}
        self.reference_prefixes: dict[str, str] = {}
        self.attributes: dict[str, str] = {}
        self.call_checks: dict[str, list[CallCheck]] = {}
        string_checks: list[StringCheck] = []
        for family in FAMILIES:
            self.modules.update(family.modules)
            self.references.update(family.references)
            self.reference_prefixes.update(family.reference_prefixes)
            self.attributes.update(family.attributes)
            for name, check in family.call_checks.items():
                self.call_checks.setdefault(name, []).append(check)
            string_checks.extend(family.string_checks)
        self.string_checks = tuple(string_checks)


TABLES = _Tables()
#: Last name component of every call the analyzer inspects beyond plain references.
_CALL_TAILS = frozenset(
    name.rsplit(".", 1)[-1] for name in (*TABLES.call_checks, *_IMPORT_FUNCTIONS, *_CODE_RUNNERS, *_ATTRIBUTE_FUNCTIONS)
)


def _module_prefixes(module: str) -> Iterator[str]:
    """``a.b.c`` → ``a.b.c``, ``a.b``, ``a``."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        yield ".".join(parts[:end])


def module_matches(module: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``module`` or one of its parent packages matches a pattern (exact name or fnmatch)."""
    return any(
        prefix == pattern or fnmatch.fnmatchcase(prefix, pattern)
        for prefix in _module_prefixes(module)
        for pattern in patterns
    )


class FileAnalyzer:
    """Audit one parsed module; create one per file."""

    def __init__(self, *, allow_imports: tuple[str, ...] | None, deny_imports: tuple[str, ...]) -> None:
        self._allow_imports = allow_imports
        self._deny_imports = deny_imports
        self._aliases: dict[str, str] = {}
        self._strings: dict[str, str] = {}
        self._decoded_names: set[str] = set()
        self._skip: set[int] = set()
        self._hits: dict[tuple[str, int, int, str], RawHit] = {}
        self._imports: list[ImportRecord] = []
        self._relative: list[RelativeImport] = []
        self._relpath = ""
        self._tree: ast.AST | None = None
        self._parents: dict[int, ast.AST] | None = None
        #: Nodes whose reference is an ordinary import (``importlib.import_module("x")``'s function).
        self._constant_imports: set[int] = set()
        self._handlers: dict[type[ast.AST], Callable[[Any], Any]] = {
            ast.For: self._on_loop,
            ast.comprehension: self._on_comprehension,
            ast.Import: self._on_import,
            ast.ImportFrom: self._on_import_from,
            ast.Expr: self._on_expr,
            ast.Constant: self._on_constant,
            ast.Name: self._on_name,
            ast.Attribute: self._on_attribute,
            ast.Call: self._on_call,
            ast.Subscript: self._on_subscript,
            ast.BinOp: self._on_binop,
            ast.Assign: self._on_assign,
        }

    # --- entry point ------------------------------------------------------------------------------

    def analyze(self, tree: ast.Module, relpath: str, screen: Screen | None = None) -> FileAnalysis:
        """Visit every node once, depth first in source order (iteratively: deep nesting cannot overflow).

        ``screen`` (the RestrictedPython layer's, :class:`~safeloader.audit.restricted_check.RestrictedScreen`)
        rides along the same walk: its per-class checks see every node, and the walk tracks the depth it needs.
        """
        self._relpath = relpath
        self._tree = tree
        handlers = self._handlers.get
        child_fields = _CHILD_FIELDS
        screens = screen.checks.get if screen is not None else None
        max_depth = screen.max_depth if screen is not None else 0
        safe_names = screen.safe_names if screen is not None else frozenset()
        name_class = ast.Name
        aliases, references = self._aliases, TABLES.references
        depth = 0
        stack: list[Any] = [tree]
        pop, push, extend = stack.pop, stack.append, stack.extend
        while stack:
            node = pop()
            cls = node.__class__
            if cls is int:  # the end of a node's children: leave its depth
                depth -= node
                continue
            if cls is name_class:
                # The commonest node: most names are neither imported aliases nor checked references, and
                # already known to pass the screen. Those need no call at all.
                name = node.id
                if name not in aliases and name not in references and name != "__builtins__":
                    if screens is not None and name not in safe_names:
                        check = screens(cls)
                        if check is not None and check(node):
                            assert screen is not None
                            screen.flagged = True
                            screens = None
                    continue
            if screens is not None and (cls is not name_class or node.id not in safe_names):
                check = screens(cls)
                if check is not None and check(node):
                    assert screen is not None
                    screen.flagged = True
                    screens = None
            handler = handlers(cls)
            if handler is not None:
                # None: visit the children; True: the handler covered them; a node: visit only that one.
                outcome = handler(node)
                if outcome is not None:
                    if outcome is not True:
                        if screens is not None:
                            levels = _chain_length(node) if cls is ast.Attribute else 1
                            depth += levels
                            push(levels)
                            if depth > max_depth:
                                assert screen is not None
                                screen.flagged = True
                                screens = None
                        push(outcome)
                    continue
            fields = child_fields.get(cls)
            if fields is None:
                if not isinstance(node, ast.AST):
                    continue
                fields = _child_fields_of(cls)
            if screens is not None and fields:
                depth += 1
                push(1)
                if depth > max_depth:
                    assert screen is not None
                    screen.flagged = True
                    screens = None
            for name in fields:
                value = getattr(node, name, None)
                if value.__class__ is list:
                    extend(value[::-1])
                elif value is not None:
                    push(value)
        return FileAnalysis(tuple(self._hits.values()), tuple(self._imports), tuple(self._relative))

    # --- resolution helpers (also the Resolver protocol the families' call checks use) -------------

    def qualname(self, node: ast.expr) -> str | None:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
            if len(parts) > _MAX_CHAIN:
                return None
        base: str | None
        if isinstance(node, ast.Name):
            base = self._aliases.get(node.id)
            if base is None and (not parts or node.id in _BUILTIN_NAMES or node.id == "__builtins__"):
                base = node.id
        elif isinstance(node, ast.Call):
            base = self._imported_by_call(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and parts:
            base = type(node.value).__name__
        else:
            base = None
        if base is None:
            return None
        return ".".join([base, *reversed(parts)])

    def fold(self, node: ast.expr) -> str | None:
        return self._fold(node, 0)

    def _fold(self, node: ast.expr, depth: int) -> str | None:
        if depth > _MAX_FOLD_DEPTH:
            return None
        depth += 1
        value: str | None = None
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                value = node.value
        elif isinstance(node, ast.Name):
            value = self._strings.get(node.id)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left = self._fold(node.left, depth)
            right = self._fold(node.right, depth) if left is not None else None
            value = left + right if left is not None and right is not None else None
        elif isinstance(node, ast.JoinedStr):
            pieces = [self._fold(part, depth) for part in node.values]
            value = "".join(p for p in pieces if p is not None) if None not in pieces else None
        elif isinstance(node, ast.FormattedValue) and node.format_spec is None and node.conversion == -1:
            value = self._fold(node.value, depth)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            value = self._fold_reversed(node, depth)
        elif isinstance(node, ast.Call):
            value = self._fold_call(node, depth)
        if value is not None and len(value) > _MAX_FOLDED_LENGTH:
            return None
        return value

    def _fold_reversed(self, node: ast.Subscript, depth: int) -> str | None:
        piece = node.slice
        assert isinstance(piece, ast.Slice)
        step = piece.step
        reverse = (
            piece.lower is None
            and piece.upper is None
            and isinstance(step, ast.UnaryOp)
            and isinstance(step.op, ast.USub)
            and isinstance(step.operand, ast.Constant)
            and step.operand.value == 1
        )
        if not reverse:
            return None
        inner = self._fold(node.value, depth)
        return inner[::-1] if inner is not None else None

    def _fold_call(self, node: ast.Call, depth: int) -> str | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            code = node.args[0]
            if isinstance(code, ast.Constant) and isinstance(code.value, int) and 0 <= code.value < 0x110000:
                return chr(code.value)
            return None
        if isinstance(func, ast.Name) and func.id == "str" and len(node.args) == 1:
            return self._fold(node.args[0], depth)
        if not isinstance(func, ast.Attribute):
            return None
        if func.attr == "join" and len(node.args) == 1:
            separator = self._fold(func.value, depth)
            if separator is None:
                return None
            items = self._fold_sequence(node.args[0], depth)
            return separator.join(items) if items is not None else None
        if func.attr != "decode":
            return None
        if self.qualname(func) == "codecs.decode":
            if len(node.args) < 2:
                return None
            text, codec = self._fold(node.args[0], depth), self._fold(node.args[1], depth)
            if text is not None and codec is not None and codec.replace("_", "").lower() == "rot13":
                return codecs.decode(text, "rot13")
            return None
        raw = self._fold_bytes(func.value, depth)
        return raw.decode("utf-8", "replace") if raw is not None else None

    def _fold_sequence(self, node: ast.expr, depth: int) -> list[str] | None:
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self._fold(item, depth) for item in node.elts]
            return None if None in items else [i for i in items if i is not None]
        if isinstance(node, (ast.GeneratorExp, ast.ListComp)) and len(node.generators) == 1:
            element, generator = node.elt, node.generators[0]
            codes = _int_constants(generator.iter)
            if (
                codes is not None
                and isinstance(element, ast.Call)
                and isinstance(element.func, ast.Name)
                and element.func.id == "chr"
            ):
                return [chr(c) for c in codes]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "map"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "chr"
        ):
            codes = _int_constants(node.args[1])
            return [chr(c) for c in codes] if codes is not None else None
        return None

    def _fold_bytes(self, node: ast.expr, depth: int) -> bytes | None:
        """Bytes produced by decoding a constant: ``bytes.fromhex("..")``, ``base64.b64decode("..")``."""
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            return node.value
        if not isinstance(node, ast.Call) or len(node.args) != 1:
            return None
        name = self.qualname(node.func)
        if name not in DECODERS:
            return None
        arg = node.args[0]
        text = self._fold(arg, depth)
        raw = text.encode("utf-8", "replace") if text is not None else self._fold_bytes(arg, depth)
        if raw is None or len(raw) > _MAX_FOLDED_LENGTH:
            return None
        try:
            if name in ("bytes.fromhex", "bytearray.fromhex", "binascii.unhexlify", "binascii.a2b_hex"):
                return bytes.fromhex(raw.decode("ascii"))
            if name in ("base64.b64decode", "base64.standard_b64decode", "base64.decodebytes", "binascii.a2b_base64"):
                return base64.b64decode(raw)
            if name == "base64.urlsafe_b64decode":
                return base64.urlsafe_b64decode(raw)
            if name == "base64.b32decode":
                return base64.b32decode(raw)
            if name == "base64.b16decode":
                return base64.b16decode(raw)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        return None

    def _imported_by_call(self, node: ast.Call) -> str | None:
        """``__import__("os")`` and ``importlib.import_module("os")`` stand for the module ``os``."""
        if not node.args or self.qualname(node.func) not in _IMPORT_FUNCTIONS:
            return None
        return self.fold(node.args[0])

    def _is_decoded(self, node: ast.expr, depth: int = 0) -> bool:
        """Whether a value comes out of a decoder: ``zlib.decompress(b64decode(x)).decode()``, or a name
        assigned from one. Looks through decoder-like calls a few levels deep only, so it stays cheap."""
        if depth > 6:
            return False
        cls = node.__class__
        if cls is ast.Name:
            assert isinstance(node, ast.Name)
            return node.id in self._decoded_names
        if cls is not ast.Call:
            return False
        assert isinstance(node, ast.Call)
        func = node.func
        if func.__class__ is ast.Attribute:
            assert isinstance(func, ast.Attribute)
            if func.attr not in _DECODER_ATTRIBUTES:
                return False
            if self.qualname(func) in DECODERS or self._is_decoded(func.value, depth + 1):
                return True
        elif not (isinstance(func, ast.Name) and func.id in _PASS_THROUGH_CALLS):
            return False
        return any(self._is_decoded(arg, depth + 1) for arg in node.args)

    # --- recording ---------------------------------------------------------------------------------

    def _hit(self, rule_id: str, detail: str, node: ast.AST) -> None:
        line = getattr(node, "lineno", 1)
        column = getattr(node, "col_offset", 0)
        self._hits.setdefault((rule_id, line, column, detail), RawHit(rule_id, detail, line, column))

    def _hits_at(self, hits: list[Hit], node: ast.AST) -> None:
        for rule_id, detail in hits:
            self._hit(rule_id, detail, node)

    def _check_module(self, module: str, node: ast.AST, how: str) -> None:
        self._imports.append(ImportRecord(module, how, self._relpath, getattr(node, "lineno", 1)))
        if module == "__future__":
            return
        if self._deny_imports and module_matches(module, self._deny_imports):
            self._hit("SL102", module, node)
        if self._allow_imports is not None and not module_matches(module, self._allow_imports):
            self._hit("SL101", module, node)
        for prefix in _module_prefixes(module):
            rule_id = TABLES.modules.get(prefix)
            if rule_id is not None:
                self._hit(rule_id, module, node)
                break

    def _exempt_reference(self, name: str, node: ast.AST) -> bool:
        """Whether this reference is harmless where it stands (both cases are rare: checked lazily)."""
        if name in TYPE_POSITION_EXEMPT:
            return self._in_type_position(node)
        if name in CONSTANT_NAME_IMPORTERS:
            return id(node) in self._constant_imports
        return False

    def _in_type_position(self, node: ast.AST) -> bool:
        """``node`` only names a type: in an annotation, as ``isinstance``/``issubclass``'s class argument, or
        compared with ``is``/``==`` (through ``Optional[...]``, tuples and ``|``)."""
        if self._parents is None:
            self._parents = {id(c): n for n in ast.walk(self._tree) for c in ast.iter_child_nodes(n)}  # type: ignore[arg-type]
        parents = self._parents
        child, parent = node, parents.get(id(node))
        while isinstance(parent, (ast.Subscript, ast.Tuple, ast.List)) or (
            isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.BitOr)
        ):
            if isinstance(parent, ast.Subscript) and child is not parent.slice:
                break
            child, parent = parent, parents.get(id(parent))
        if isinstance(parent, (ast.arg, ast.AnnAssign)):
            return child is parent.annotation
        if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return child is parent.returns
        if isinstance(parent, ast.Call):
            checker = self.qualname(parent.func)
            return checker in ("isinstance", "issubclass") and len(parent.args) == 2 and child is parent.args[1]
        if isinstance(parent, ast.Compare):
            return all(isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq)) for op in parent.ops)
        return False

    def _check_reference(self, name: str, node: ast.AST) -> bool:
        rule_id = TABLES.references.get(name)
        if rule_id is not None:
            if not self._exempt_reference(name, node):
                self._hit(rule_id, name, node)
            return True
        dot = name.rfind(".")
        if dot < 0:
            return False
        while dot > 0:
            rule_id = TABLES.reference_prefixes.get(name[:dot])
            if rule_id is not None:
                self._hit(rule_id, name, node)
                return True
            dot = name.rfind(".", 0, dot)
        return False

    def _check_string(self, value: str, node: ast.AST) -> None:
        for check in TABLES.string_checks:
            self._hits_at(check(value), node)

    # --- node handlers -----------------------------------------------------------------------------

    def _on_import(self, node: ast.Import) -> bool:
        for alias in node.names:
            if alias.asname:
                self._aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".", 1)[0]
                self._aliases[top] = top
            self._check_module(alias.name, node, "static")
        return True

    def _on_import_from(self, node: ast.ImportFrom) -> bool:
        names = tuple(alias.name for alias in node.names)
        if node.level:
            self._relative.append(RelativeImport(node.level, node.module or "", names, node.lineno, node.col_offset))
            self._imports.append(
                ImportRecord("." * node.level + (node.module or ""), "relative", self._relpath, node.lineno)
            )
            return True
        module = node.module or ""
        self._check_module(module, node, "static")
        for alias in node.names:
            if alias.name == "*":
                continue
            qualified = f"{module}.{alias.name}"
            self._aliases[alias.asname or alias.name] = qualified
            submodule_rule = TABLES.modules.get(qualified)
            if submodule_rule is not None and TABLES.modules.get(module) is None:
                self._hit(submodule_rule, qualified, node)  # ``from importlib import util``
                continue
            if qualified in TABLES.modules or any(p in TABLES.modules for p in _module_prefixes(qualified)):
                continue  # already reported as a module import
            if qualified in CONSTANT_NAME_IMPORTERS or qualified in TYPE_POSITION_EXEMPT:
                continue  # every use of the alias is checked where it is made
            self._check_reference(qualified, node)
        return True

    def _on_expr(self, node: ast.Expr) -> ast.expr | bool:
        # A bare string statement (docstring) is documentation, not code.
        value = node.value
        return True if value.__class__ is ast.Constant and isinstance(value.value, str) else value

    def _on_constant(self, node: ast.Constant) -> bool:
        if node.value.__class__ is str:
            self._check_string(node.value, node)
        return True

    def _on_name(self, node: ast.Name) -> bool:
        name = node.id
        if node.ctx.__class__ is ast.Load:
            qualified = self._aliases.get(name, name)
            if qualified in TABLES.references or "." in qualified:
                self._check_reference(qualified, node)
        elif name == "__builtins__":
            self._hit("SL705", "__builtins__", node)
        return True

    def _on_attribute(self, node: ast.Attribute) -> ast.expr | bool:
        """Handle a whole chain ``a.b.c`` at its outermost node; then visit only what the chain hangs on."""
        attributes = TABLES.attributes
        parts: list[str] = []
        current: ast.expr = node
        while current.__class__ is ast.Attribute:
            assert isinstance(current, ast.Attribute)
            attr = current.attr
            rule_id = attributes.get(attr)
            if rule_id is not None:
                self._hit(rule_id, attr, current)
            parts.append(attr)
            current = current.value
        base: str | None = None
        follow: ast.expr | bool = current
        if current.__class__ is ast.Name:
            assert isinstance(current, ast.Name)
            self._on_name(current)
            base = self._aliases.get(current.id)
            if base is None and (current.id in _BUILTIN_NAMES or current.id == "__builtins__"):
                base = current.id
            follow = True
        elif current.__class__ is ast.Call:
            assert isinstance(current, ast.Call)
            base = self._imported_by_call(current)
        elif current.__class__ is ast.Constant and isinstance(current.value, (str, bytes)):
            base = type(current.value).__name__
            follow = True
        if base is None or len(parts) > _MAX_CHAIN:
            return follow
        name = base
        for part in reversed(parts):
            name = f"{name}.{part}"
            if name in TABLES.references and not self._exempt_reference(name, node):
                self._hit(TABLES.references[name], name, node)
        self._check_reference(name, node)
        if node.ctx.__class__ is not ast.Load:
            root = base.split(".", 1)[0]
            if root in self._aliases.values() or root in _PARENT_MODULE_WRITES:
                self._hit("SL904", f"assignment to {name}", node)
        return follow

    def _on_call(self, node: ast.Call) -> None:
        func = node.func
        tail = func.attr if func.__class__ is ast.Attribute else getattr(func, "id", None)
        # Most calls cannot be any checked function: skip resolving their names.
        name = self.qualname(func) if tail in _CALL_TAILS or tail in self._aliases else None
        if name is not None:
            for check in TABLES.call_checks.get(name, ()):
                self._hits_at(check(node, self), node)
            if name in CONSTANT_NAME_IMPORTERS and node.args and _is_plain_string(node.args[0]):
                self._constant_imports.add(id(func))  # visited after this handler: no SL103 on it
            if name in _IMPORT_FUNCTIONS:
                self._on_dynamic_import(node, name)
            elif name in _CODE_RUNNERS:
                if any(self._is_decoded(arg) for arg in node.args):
                    self._hit("SL951", f"{name} of decoded data", node)
            elif name in _ATTRIBUTE_FUNCTIONS and len(node.args) >= 2:
                self._on_attribute_function(node)
        if isinstance(func, ast.Attribute):
            self._hits_at(write_method_on_own_file(func.attr, func.value), node)
            if func.attr == "join" and node.args and _counts_chr(node.args[0]) >= CHR_CHAIN_MIN:
                self._hit("SL952", "a join of chr()", node)

    def _on_loop(self, node: ast.For) -> None:
        self._hits_at(environment_scan(node, node.body, self), node)

    def _on_comprehension(self, node: ast.comprehension) -> None:
        # The element and conditions that filter names live on the comprehension's parent; the ``ifs`` here are
        # where a filter is written ({k: v for k, v in os.environ.items() if "TOKEN" in k}).
        self._hits_at(environment_scan(node, node.ifs, self), node.iter)

    def _on_dynamic_import(self, node: ast.Call, name: str) -> None:
        if not node.args:
            return
        target = node.args[0]
        module = self.fold(target)
        how = "__import__" if name.endswith("__import__") else "importlib"
        if module is None:
            self._imports.append(ImportRecord("<run-time value>", how, self._relpath, node.lineno))
            return
        plain = isinstance(target, ast.Constant)
        before = len(self._hits)
        self._check_module(module, node, how if plain else "string-built")
        if not plain and len(self._hits) > before:
            self._hit("SL955", repr(module), node)

    def _on_attribute_function(self, node: ast.Call) -> None:
        attribute = self.fold(node.args[1])
        if attribute is None:
            return
        plain = isinstance(node.args[1], ast.Constant)
        before = len(self._hits)
        rule_id = TABLES.attributes.get(attribute)
        if rule_id is not None:
            self._hit(rule_id, attribute, node)
        owner = self.qualname(node.args[0])
        if owner is not None:
            self._check_reference(f"{owner}.{attribute}", node)
        if not plain and len(self._hits) > before:
            self._hit("SL955", repr(attribute), node)

    def _on_subscript(self, node: ast.Subscript) -> None:
        owner = self.qualname(node.value)
        if owner is None:
            return
        if owner in ("os.environ", "os.environb") and isinstance(node.ctx, ast.Load):
            from safeloader.audit.rules.credentials import is_secret_name

            key = self.fold(node.slice)
            if key is not None and is_secret_name(key):
                self._hit("SL802", key, node)
        elif owner in _PARENT_MODULE_WRITES and not isinstance(node.ctx, ast.Load):
            self._hit("SL904", f"assignment into {owner}", node)
        elif owner in ("__builtins__", "builtins.__dict__", "globals") and isinstance(node.ctx, ast.Load):
            key = self.fold(node.slice)
            if key is not None:
                self._check_reference(key, node)

    def _on_binop(self, node: ast.BinOp) -> None:
        if id(node) in self._skip or not isinstance(node.op, ast.Add):
            return
        operands = _flatten_add(node, self._skip)
        chr_calls = sum(1 for operand in operands if _is_chr_call(operand))
        if chr_calls >= CHR_CHAIN_MIN:
            self._hit("SL952", str(chr_calls), node)
        folded = self.fold(node)
        if folded is not None:
            before = len(self._hits)
            self._check_string(folded, node)
            if chr_calls and len(self._hits) > before:
                self._hit("SL955", repr(folded[:80]), node)

    def _on_assign(self, node: ast.Assign) -> None:
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            return
        target = node.targets[0].id
        value = node.value
        if value.__class__ in _FOLDABLE_VALUES:
            folded = self.fold(value)
            if folded is not None:
                self._strings[target] = folded
            elif self._strings:
                self._strings.pop(target, None)
        if value.__class__ is ast.Call:
            assert isinstance(value, ast.Call)
            if self._is_decoded(value):
                self._decoded_names.add(target)
            module = self._imported_by_call(value) if value.args else None
            if module is not None:
                self._aliases[target] = module  # ``m = __import__("os")`` makes ``m.system`` os.system


#: Fields that never hold child nodes worth visiting (identifiers, flags, contexts and operators).
_LEAF_FIELDS = frozenset(
    {
        "ctx",
        "op",
        "ops",
        "type_comment",
        "kind",
        "is_async",
        "level",
        "id",
        "attr",
        "arg",
        "name",
        "module",
        "conversion",
        "simple",
        "tag",
        "kwd_attrs",
        "type_ignores",
        "names",
    }
)
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields_of(cls: type) -> tuple[str, ...]:
    # Reversed: the walk pops from a stack, and source order matters (imports before their uses).
    fields = tuple(f for f in reversed(getattr(cls, "_fields", ())) if f not in _LEAF_FIELDS)
    if cls is ast.MatchClass:
        fields = ("kwd_patterns", "patterns", "cls")
    _CHILD_FIELDS[cls] = fields
    return fields


def _is_plain_string(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _chain_length(node: ast.expr) -> int:
    length = 0
    while node.__class__ is ast.Attribute:
        assert isinstance(node, ast.Attribute)
        node = node.value
        length += 1
    return length


def _int_constants(node: ast.expr) -> list[int] | None:
    if not isinstance(node, (ast.List, ast.Tuple)):
        return None
    codes = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, int)]
    if len(codes) != len(node.elts) or not all(0 <= c < 0x110000 for c in codes):
        return None
    return codes


def _is_chr_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "chr"


def _counts_chr(node: ast.expr) -> int:
    """How many characters a ``join`` argument builds with ``chr``."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return sum(1 for e in node.elts if _is_chr_call(e))
    generators: list[ast.comprehension] = []
    if isinstance(node, (ast.GeneratorExp, ast.ListComp)) and _is_chr_call(node.elt):
        generators = node.generators
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "map" and node.args:
        first = node.args[0]
        if isinstance(first, ast.Name) and first.id == "chr":
            return CHR_CHAIN_MIN
    if generators:
        iterable = generators[0].iter
        return len(iterable.elts) if isinstance(iterable, (ast.List, ast.Tuple)) else CHR_CHAIN_MIN
    return 0


def _flatten_add(node: ast.BinOp, inner: set[int]) -> list[ast.expr]:
    """The operands of ``a + b + c`` (left-nested), marking the inner ``+`` nodes as seen."""
    operands: list[ast.expr] = []
    stack: list[ast.expr] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.BinOp) and isinstance(current.op, ast.Add) and len(operands) < 4096:
            if current is not node:
                inner.add(id(current))
            stack.append(current.right)
            stack.append(current.left)
        else:
            operands.append(current)
    return operands
