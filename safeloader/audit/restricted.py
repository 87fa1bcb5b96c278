"""RestrictedPython as a guard layer that real diffusers pipelines pass.

RestrictedPython's stock transformer refuses every underscored name, annotated assignments and ``__init__``
calls, so it rejects all of diffusers' own pipelines. :class:`PipelineTransformer` keeps its rewriting
(every attribute read goes through ``_getattr_``, every item read through ``_getitem_``, writes through
``_write_``, iteration through ``_getiter_``) but accepts private names and ordinary dunders, and refuses at
compile time only the escape primitives: the attributes in :data:`ESCAPE_ATTRIBUTES` and frame internals,
``eval``/``exec``/``compile``/``__import__``/``globals``/``__builtins__``, and the names the guards
themselves live under. :func:`restricted_module_globals` supplies the run-time guards, which refuse the same
attributes when the name is only known at run time (``getattr(f, "__glo" + "bals__")``).
"""

from __future__ import annotations

import ast
import builtins
import functools
import gc
import operator
import os
import string
import sys
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from RestrictedPython import compile_restricted_exec
from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import RestrictingNodeTransformer

from safeloader.audit.rules.introspection import ESCAPE_ATTRIBUTES, FRAME_ATTRIBUTES
from safeloader.audit.rules.process import OS_PROGRAM_STARTERS
from safeloader.errors import AuditDenied

#: ``gc`` functions that reach arbitrary live objects; refused by name, by ``from gc import``, and by identity.
GC_WALKERS = frozenset({"get_objects", "get_referrers", "get_referents"})

#: Attributes no guarded code may read or write, whether written literally or built at run time.
REFUSED_ATTRIBUTES = ESCAPE_ATTRIBUTES | FRAME_ATTRIBUTES | {"co_code"}

#: Names guarded code may not mention at all: code runners, namespace handles, and the guards' own names.
REFUSED_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "__import__",
        "globals",
        "breakpoint",
        "__builtins__",
        "__builtin__",
        "__loader__",
        "__spec__",
        "__metaclass__",
        "printed",
    }
)

#: Modules guarded code may not import; their purpose is one of the escapes the audit looks for.
REFUSED_MODULES = frozenset(
    {
        "subprocess",
        "pty",
        "_posixsubprocess",
        "ctypes",
        "_ctypes",
        "cffi",
        "socket",
        "_socket",
        "builtins",
        "marshal",
        "pickle",
        "_pickle",
        "dill",
        "runpy",
        "code",
        "codeop",
        "importlib",
        "imp",
        "_imp",
        "pydoc",
        "_thread",
        "multiprocessing",
        "signal",
        "mmap",
        "_xxsubinterpreters",
        "posix",
        "nt",
        "_operator",
        "_string",
    }
)

#: Module attributes refused at run time even though the module itself may be imported (``os`` is common).
REFUSED_MODULE_ATTRIBUTES: dict[str, frozenset[str]] = {
    "os": frozenset({*OS_PROGRAM_STARTERS, "fork", "forkpty", "kill", "killpg", "_exit"}),
    "sys": frozenset(
        {
            "modules",
            "_getframe",
            "settrace",
            "setprofile",
            "meta_path",
            "path_hooks",
            "addaudithook",
            "_current_frames",
            "setrecursionlimit",
        }
    ),
    "builtins": frozenset(REFUSED_NAMES | {"getattr", "setattr", "delattr", "vars", "locals"}),
    # Each of these reads attributes or evaluates strings outside the guards.
    "inspect": frozenset(
        {
            "currentframe",
            "stack",
            "trace",
            "getouterframes",
            "getinnerframes",
            "getattr_static",
            "getmembers",
            "getmembers_static",
            "getclosurevars",
            "get_annotations",
        }
    ),
    "operator": frozenset({"attrgetter", "methodcaller"}),
    # ``gc.collect()`` is memory hygiene; these hand out every live object (frames, modules, the guards).
    "gc": frozenset(GC_WALKERS),
    "typing": frozenset({"get_type_hints", "ForwardRef", "_eval_type"}),
    "torch.hub": frozenset({"load", "load_state_dict_from_url", "download_url_to_file"}),
    "torch.ops": frozenset({"load_library"}),
}

_GUARD_NAME_PREFIXES = ("_tmp",)


def _is_guard_name(name: str) -> bool:
    """Names RestrictedPython's rewriting relies on (``_getattr_``, ``_print``, ``_tmp0``…)."""
    if name.startswith("_") and not name.startswith("__") and name.endswith("_") and len(name) > 2:
        return True
    return name == "_print" or (name.startswith(_GUARD_NAME_PREFIXES) and name[4:].isdigit())


def name_refusal(name: str) -> str | None:
    """Why guarded code may not use ``name`` as a variable, argument, function, class or import name."""
    if name in REFUSED_NAMES:
        return f'"{name}" is refused by the safeloader guard layer.'
    if _is_guard_name(name):
        return f'"{name}" is reserved for the safeloader guard layer.'
    if name.endswith("__roles__"):
        return f'"{name}" is an invalid name because it ends with "__roles__".'
    return None


def attribute_refusal(attr: str) -> str | None:
    """Why guarded code may not read, write or delete the attribute ``attr``."""
    if attr in REFUSED_ATTRIBUTES:
        return f'attribute "{attr}" is refused by the safeloader guard layer.'
    if _is_guard_name(attr):
        return f'attribute "{attr}" is reserved for the safeloader guard layer.'
    return None


def annotation_refusals(annotation: ast.expr) -> list[str]:
    """String annotations that are not plain type expressions (library code evaluates them unguarded)."""
    return [
        f"string annotation {sub.value[:60]!r} is not a plain type expression."
        for sub in ast.walk(annotation)
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and not _plain_type_expression(sub.value)
    ]


class PipelineTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer, tuned so real pipeline code compiles while escapes do not."""

    def check_name(self, node: Any, name: str | None, allow_magic_methods: bool = False) -> None:
        if name is None:
            return
        refusal = name_refusal(name)
        if refusal is not None:
            self.error(node, refusal)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        refusal = attribute_refusal(node.attr)
        if refusal is not None:
            self.error(node, refusal)
            return node
        # Let the parent rewrite it; temporarily present a name it accepts, then restore the real one.
        real = self.mangle(node.attr)
        node.attr = "a"
        rewritten = super().visit_Attribute(node)
        if isinstance(rewritten, ast.Call):
            rewritten.args[1] = ast.Constant(real)
            ast.copy_location(rewritten.args[1], rewritten)
        elif isinstance(rewritten, ast.Attribute):
            rewritten.attr = real
        return rewritten

    def check_annotation(self, node: ast.AST, annotation: ast.expr | None) -> None:
        """String annotations are evaluated later by library code (``typing.get_type_hints``) outside the
        guards, so they may hold only plain type expressions: names, dotted names, subscripts, ``|``."""
        if annotation is None:
            return
        for refusal in annotation_refusals(annotation):
            self.error(node, refusal)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> Any:
        # ``x: int = 1`` and class-level dataclass fields; the target is checked like any other name.
        self.check_annotation(node, node.annotation)
        return self.node_contents_visit(node)

    def visit_arg(self, node: ast.arg) -> Any:
        self.check_annotation(node, node.annotation)
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if isinstance(node.target, ast.Name):
            return super().visit_AugAssign(node)
        # ``self.count += 1`` / ``latents[i] += x``: visiting the Store target already routed the object
        # through _write_ and checked the attribute name.
        return self.node_contents_visit(node)

    def mangle(self, attr: str) -> str:
        """Private-name mangling, done here because ``_getattr_(self, "__x")`` is a string the compiler
        would no longer mangle (``self.__x`` in class ``C`` means ``self._C__x``)."""
        classes: list[str] = getattr(self, "_class_names", [])
        if not classes or not attr.startswith("__") or attr.endswith("__"):
            return attr
        owner = classes[-1].lstrip("_")
        return f"_{owner}{attr}" if owner else attr

    def visit_ClassDef(self, node: ast.ClassDef) -> Any:
        # Keep the class as written (the parent forces ``metaclass=__metaclass__`` for Zope).
        self.check_name(node, node.name)
        node.decorator_list = [self.visit(decorator) for decorator in node.decorator_list]
        classes: list[str] = getattr(self, "_class_names", [])
        self._class_names = [*classes, node.name]
        try:
            node.bases = [self.visit(base) for base in node.bases]
            node.keywords = [self.visit(keyword) for keyword in node.keywords]
            node.body = _flatten([self.visit(statement) for statement in node.body])
        finally:
            self._class_names = classes
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        self.check_name(node, node.name)
        self.check_function_argument_names(node)
        self.check_annotation(node, node.returns)
        with self.print_info.new_print_scope():
            node = self.node_contents_visit(node)
            self.inject_print_collector(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> Any:
        self.check_name(node, node.name)
        self.check_function_argument_names(node)
        self.check_annotation(node, node.returns)
        return self.node_contents_visit(node)

    def visit_Await(self, node: ast.Await) -> Any:
        return self.node_contents_visit(node)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> Any:
        return self.node_contents_visit(node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> Any:
        return self.node_contents_visit(node)

    def visit_Nonlocal(self, node: ast.Nonlocal) -> Any:
        for name in node.names:
            self.check_name(node, name)
        return node

    def visit_Match(self, node: ast.AST) -> Any:
        return self.node_contents_visit(node)


def _flatten(items: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in items:
        if isinstance(item, list):
            flat.extend(item)
        elif item is not None:
            flat.append(item)
    return flat


def _plain_type_expression(text: str) -> bool:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name) and (sub.id in REFUSED_NAMES or sub.id.startswith("_")):
            return False
        if isinstance(sub, ast.Attribute) and sub.attr.startswith("_"):
            return False
        if not isinstance(sub, _TYPE_EXPRESSION_NODES):
            return False
    return True


_TYPE_EXPRESSION_NODES = (
    ast.Expression,
    ast.Name,
    ast.Attribute,
    ast.Subscript,
    ast.Tuple,
    ast.List,
    ast.Constant,
    ast.BinOp,
    ast.BitOr,
    ast.Load,
)


def compile_restricted_module(source: str | bytes, filename: str) -> types.CodeType:
    """Compile untrusted module source under :class:`PipelineTransformer`.

    Raises :class:`AuditDenied` naming every refused construct and its line.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AuditDenied(f"{filename} is not UTF-8 text; save the pipeline as UTF-8.") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            result = compile_restricted_exec(source, filename=filename, policy=PipelineTransformer)
    except (RecursionError, MemoryError) as exc:
        raise AuditDenied(f"{filename} is nested too deeply for the guard layer; simplify the code.") from exc
    except (SyntaxError, ValueError) as exc:
        # Parsable but not compilable (an unknown __future__ feature, a misplaced return, NUL bytes).
        raise AuditDenied(f"{filename} does not compile ({exc}); fix the file before running it.") from exc
    if result.errors or result.code is None:
        details = "; ".join(result.errors) or "no code produced"
        raise AuditDenied(
            f"{filename} is refused by the RestrictedPython guard layer ({details}); remove those constructs or "
            'set [audit] restricted_python = "report" to run it unguarded.'
        )
    return result.code


# --- run-time guards ------------------------------------------------------------------------------


def _refuse(what: str) -> AttributeError:
    return AttributeError(f"{what} is refused by the safeloader guard layer")


def _module_name(obj: object) -> str | None:
    return obj.__name__ if isinstance(obj, types.ModuleType) else None


def guarded_getattr(obj: object, name: str, *default: Any) -> Any:
    """``getattr`` for guarded code: refuses escape attributes and dangerous module members."""
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name in REFUSED_ATTRIBUTES or _is_guard_name(name):
        raise _refuse(f"attribute {name!r}")
    module = _module_name(obj)
    if module is not None:
        if module in REFUSED_MODULE_ATTRIBUTES and name in REFUSED_MODULE_ATTRIBUTES[module]:
            raise _refuse(f"{module}.{name}")
        if name == "__dict__":
            raise _refuse(f"{module}.__dict__")
    if isinstance(obj, str) and name in ("format", "format_map"):
        return functools.partial(_safe_format, obj) if name == "format" else functools.partial(_safe_format_map, obj)
    if obj is string and name == "Formatter":
        raise _refuse("string.Formatter")
    value = getattr(obj, name, *default)
    _refuse_escape_value(value, name)
    return value


#: Refused functions by identity, wherever they are found: ``some_module.eval``, or ``os.system`` imported
#: by name into a library module (its ``__module__`` is ``posix``, which is not refused as a whole: ``os`` is
#: a legitimate import and most of its functions live there).
_REFUSED_CALLABLES = frozenset(
    [id(getattr(builtins, name)) for name in ("eval", "exec", "compile", "__import__", "globals", "breakpoint")]
    + [id(getattr(os, name)) for name in sorted(REFUSED_MODULE_ATTRIBUTES["os"]) if hasattr(os, name)]
    + [id(getattr(gc, name)) for name in sorted(GC_WALKERS)]
)
#: Modules whose functions and classes are refused wherever they are reached (imports refuse more).
_REFUSED_VALUE_MODULES = REFUSED_MODULES - {"posix", "nt"}


def _refuse_escape_value(value: object, name: str) -> None:
    """Refuse what an attribute leads to, not only its name: a refused module reached through another module
    (``diffusers.utils.import_utils.importlib``), or a function or class that lives in one
    (``shutil.os.system`` has ``__module__ == "posix"``), or a code runner under another name."""
    if isinstance(value, types.ModuleType):
        module = value.__name__
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        if id(value) in _REFUSED_CALLABLES:
            raise _refuse(f"attribute {name!r} (a refused function under another name)")
        module = getattr(value, "__module__", None) or ""
        if module == "builtins":
            return
    else:
        return
    top = module.split(".", 1)[0]
    if top in _REFUSED_VALUE_MODULES or module in _REFUSED_VALUE_MODULES:
        raise _refuse(f"attribute {name!r} (it leads into {module})")


class _GuardedFormatter(string.Formatter):
    """``str.format`` whose field lookups (``{0.attr}``, ``{0[key]}``) go through the guards."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = _formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            obj = guarded_getattr(obj, key) if is_attribute else guarded_getitem(obj, key)
        return obj, first


def _formatter_field_name_split(field_name: str) -> tuple[Any, Iterable[tuple[bool, Any]]]:
    import _string  # the C helper str.format itself uses

    return _string.formatter_field_name_split(field_name)


def _safe_format(template: str, *args: Any, **kwargs: Any) -> str:
    return _GuardedFormatter().vformat(template, args, kwargs)


def _safe_format_map(template: str, mapping: Any) -> str:
    return _GuardedFormatter().vformat(template, (), mapping)


def guarded_getitem(obj: Any, key: Any) -> Any:
    if isinstance(key, str) and (key in REFUSED_NAMES or key in REFUSED_ATTRIBUTES or _is_guard_name(key)):
        raise KeyError(f"{key!r} is refused by the safeloader guard layer")
    return obj[key]


class _ModuleWriteProxy:
    """What ``_write_`` hands out for a module: assignments to module attributes (monkeypatching) fail."""

    __slots__ = ("_module",)
    _module: types.ModuleType

    def __init__(self, module: types.ModuleType) -> None:
        object.__setattr__(self, "_module", module)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _refuse(f"assignment to {self._module.__name__}.{name}")

    def __delattr__(self, name: str) -> None:
        raise _refuse(f"deletion of {self._module.__name__}.{name}")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise _refuse(f"item assignment on {self._module.__name__}")


def guarded_write(obj: Any) -> Any:
    if isinstance(obj, types.ModuleType):
        return _ModuleWriteProxy(obj)
    if obj is sys.modules:
        raise _refuse("writing sys.modules")
    return obj


def guarded_setattr(obj: object, name: str, value: Any) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name in REFUSED_ATTRIBUTES or _is_guard_name(name) or name == "__class__":
        raise _refuse(f"setting attribute {name!r}")
    setattr(guarded_write(obj), name, value)


def guarded_delattr(obj: object, name: str) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name in REFUSED_ATTRIBUTES or _is_guard_name(name):
        raise _refuse(f"deleting attribute {name!r}")
    delattr(guarded_write(obj), name)


def guarded_hasattr(obj: object, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


def guarded_vars(*args: Any) -> dict[str, Any]:
    if not args:
        return guarded_locals_of(sys._getframe(1))
    (obj,) = args
    if isinstance(obj, types.ModuleType):
        raise _refuse(f"vars() of module {obj.__name__}")
    return dict(vars(obj))


def guarded_locals_of(frame: types.FrameType) -> dict[str, Any]:
    namespace = frame.f_locals
    # At module level ``locals()`` is the module's globals, where the guards live: hand out a copy.
    return dict(namespace) if namespace is frame.f_globals else namespace


def guarded_locals() -> dict[str, Any]:
    return guarded_locals_of(sys._getframe(1))


def guarded_import(
    name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
) -> types.ModuleType:
    top = name.split(".", 1)[0]
    if name in REFUSED_MODULES or top in REFUSED_MODULES:
        raise ImportError(f"import of {name!r} is refused by the safeloader guard layer")
    module = builtins.__import__(name, globals, locals, fromlist, level)
    for item in fromlist or ():
        if item in REFUSED_MODULE_ATTRIBUTES.get(name, frozenset()) or item in REFUSED_ATTRIBUTES:
            raise ImportError(f"'from {name} import {item}' is refused by the safeloader guard layer")
        if f"{name}.{item}" in REFUSED_MODULES:
            raise ImportError(f"import of '{name}.{item}' is refused by the safeloader guard layer")
    return module


def guarded_iter(obj: Any) -> Any:
    return iter(obj)


def guarded_apply(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "//=": operator.ifloordiv,
    "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target: Any, value: Any) -> Any:
    return _INPLACE[op](target, value)


class _StderrPrint:
    """``print`` in guarded code writes to the worker's log (stderr), never to the IPC channel."""

    def __init__(self, _getattr_: Any = None) -> None:
        self._getattr_ = _getattr_

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", sys.stderr)
        print(*objects, **kwargs)

    def __call__(self) -> str:
        return ""


def _restricted_builtins() -> dict[str, Any]:
    namespace = {k: v for k, v in vars(builtins).items() if k not in REFUSED_NAMES and not k.startswith("_")}
    namespace.update(
        __build_class__=builtins.__build_class__,
        __name__="builtins",
        __import__=guarded_import,
        getattr=guarded_getattr,
        setattr=guarded_setattr,
        delattr=guarded_delattr,
        hasattr=guarded_hasattr,
        vars=guarded_vars,
        locals=guarded_locals,
    )
    for name in (
        "eval",
        "exec",
        "compile",
        "globals",
        "breakpoint",
        "input",
        "help",
        "copyright",
        "credits",
        "license",
        "exit",
        "quit",
    ):
        namespace.pop(name, None)
    return namespace


def restricted_module_globals(module_name: str, filename: str) -> dict[str, Any]:
    """The globals to ``exec`` a :func:`compile_restricted_module` result in: guards plus safe builtins."""
    return {
        "__builtins__": _restricted_builtins(),
        "__name__": module_name,
        "__file__": filename,
        "__package__": module_name.rpartition(".")[0],
        "__doc__": None,
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_write_": guarded_write,
        "_getiter_": guarded_iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_apply_": guarded_apply,
        "_inplacevar_": guarded_inplacevar,
        "_print_": _StderrPrint,
    }
