"""SL7xx: introspection that reaches interpreter internals (the classic sandbox-escape primitives)."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "introspection"

RULES = (
    Rule(
        "SL701", "escape-attribute", "high", 749, "reads {detail}, an attribute used to escape Python sandboxes", FAMILY
    ),
    Rule("SL702", "frame-attribute", "high", 749, "reads {detail}, a frame or traceback internal", FAMILY),
    Rule("SL703", "frame-access", "high", 749, "reaches the call stack through {detail}", FAMILY),
    Rule("SL704", "heap-walk", "high", 749, "walks live interpreter objects through {detail}", FAMILY),
    Rule("SL705", "builtins-access", "high", 749, "reaches the builtins namespace directly through {detail}", FAMILY),
)

#: Attributes that hand out globals, code, builtins or arbitrary classes; refused statically and at run time.
ESCAPE_ATTRIBUTES = frozenset(
    {
        "__subclasses__",
        "__globals__",
        "__builtins__",
        "__code__",
        "__closure__",
        "__reduce__",
        "__reduce_ex__",
        "__getattribute__",
        "__self__",
        "__func__",
        "__mro__",
        "__bases__",
        "__base__",
        "__loader__",
        "__spec__",
        "__import__",
        "__objclass__",
        "__init_subclass__",
        "__subclasshook__",
        "__kwdefaults__",
        "__defaults__",
        "__traceback__",
        "__dictoffset__",
        "func_globals",
        "func_code",
        "_getframe",
        "_current_frames",
    }
)

#: Frame, traceback, generator and coroutine internals (RestrictedPython's list plus f_trace/gi_yieldfrom).
FRAME_ATTRIBUTES = frozenset(
    {
        "f_back",
        "f_builtins",
        "f_code",
        "f_globals",
        "f_locals",
        "f_trace",
        "f_generator",
        "tb_frame",
        "tb_next",
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "cr_origin",
        "ag_frame",
        "ag_code",
        "ag_await",
    }
)

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    # ``import gc`` / ``gc.collect()`` are everyday memory hygiene; only the walkers below reach live objects.
    modules={"builtins": "SL705", "__builtin__": "SL705"},
    references={
        "__builtins__": "SL705",
        "sys._getframe": "SL703",
        "sys._current_frames": "SL703",
        "sys.settrace": "SL703",
        "sys.setprofile": "SL703",
        "inspect.currentframe": "SL703",
        "inspect.stack": "SL703",
        "inspect.trace": "SL703",
        "inspect.getouterframes": "SL703",
        "inspect.getinnerframes": "SL703",
        "gc.get_objects": "SL704",
        "gc.get_referrers": "SL704",
        "gc.get_referents": "SL704",
    },
    attributes={
        **dict.fromkeys(sorted(ESCAPE_ATTRIBUTES), "SL701"),
        **dict.fromkeys(sorted(FRAME_ATTRIBUTES), "SL702"),
    },
)
