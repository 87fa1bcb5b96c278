"""SL5xx: deserializers that can run code while loading (pickle and friends)."""

from __future__ import annotations

import ast

from safeloader.audit.rules.base import Family, Hit, Resolver, Rule

FAMILY = "deserialization"

RULES = (
    Rule("SL501", "pickle-load", "critical", 502, "deserializes with {detail}, which can run arbitrary code", FAMILY),
    Rule(
        "SL502",
        "torch-load-unsafe",
        "high",
        502,
        "calls {detail} without weights_only=True, which unpickles arbitrary objects",
        FAMILY,
    ),
    Rule("SL503", "numpy-load-pickle", "high", 502, "calls {detail} with allow_pickle enabled", FAMILY),
    Rule("SL504", "yaml-unsafe-load", "high", 502, "parses YAML with {detail} without a safe loader", FAMILY),
    Rule("SL505", "pickle-module", "medium", 502, "imports {detail}, a code-executing serialization module", FAMILY),
)

_PICKLE_MODULES = ("pickle", "_pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib", "jsonpickle")
_SAFE_YAML_LOADERS = ("SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node: ast.expr | None) -> bool:
    return not (isinstance(node, ast.Constant) and node.value is False) and node is not None


def _torch_load(call: ast.Call, resolver: Resolver) -> list[Hit]:
    weights_only = _keyword(call, "weights_only")
    # torch >= 2.6 defaults to weights_only=True; anything but a literal True/absent may unpickle.
    if weights_only is None or (isinstance(weights_only, ast.Constant) and weights_only.value is True):
        return []
    return [("SL502", "torch.load")]


def _numpy_load(call: ast.Call, resolver: Resolver) -> list[Hit]:
    allow = _keyword(call, "allow_pickle")
    if allow is None and len(call.args) >= 3:
        allow = call.args[2]
    return [("SL503", "numpy.load")] if _is_true(allow) else []


def _yaml_load(call: ast.Call, resolver: Resolver) -> list[Hit]:
    loader = _keyword(call, "Loader")
    if loader is None and len(call.args) >= 2:
        loader = call.args[1]
    name = resolver.qualname(loader) if loader is not None else None
    if name is not None and name.rsplit(".", 1)[-1] in _SAFE_YAML_LOADERS:
        return []
    return [("SL504", "yaml.load")]


FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules=dict.fromkeys(_PICKLE_MODULES, "SL505"),
    references={
        **{f"{module}.{func}": "SL501" for module in _PICKLE_MODULES for func in ("load", "loads", "Unpickler")},
        "shelve.open": "SL501",
        "pandas.read_pickle": "SL501",
        "numpy.lib.format.read_array": "SL501",
        "yaml.unsafe_load": "SL504",
        "yaml.unsafe_load_all": "SL504",
        "yaml.UnsafeLoader": "SL504",
        "yaml.Loader": "SL504",
    },
    call_checks={
        "torch.load": _torch_load,
        "numpy.load": _numpy_load,
        "yaml.load": _yaml_load,
        "yaml.load_all": _yaml_load,
    },
)
