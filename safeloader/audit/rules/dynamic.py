"""SL4xx: running code that is not in the audited source (eval, exec, compile, code objects)."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "dynamic"

RULES = (
    Rule("SL401", "eval-exec", "critical", 95, "runs code from a value through {detail}", FAMILY),
    Rule("SL402", "compile", "high", 95, "compiles code at run time through {detail}", FAMILY),
    Rule("SL403", "code-runner-module", "high", 95, "imports {detail}, a module that runs arbitrary code", FAMILY),
    Rule("SL404", "code-object", "critical", 95, "builds a code or function object by hand through {detail}", FAMILY),
    Rule(
        "SL499",
        "restricted-python-refused",
        "high",
        693,
        "the RestrictedPython guard layer refuses this file ({detail}) and the policy enforces it",
        FAMILY,
    ),
)

#: References that are harmless where they only name a type — in an annotation, as the class argument of
#: ``isinstance``/``issubclass``, in an ``is``/``==`` comparison — and a finding anywhere else (a call builds a
#: function from a code object; an alias can be called later).
TYPE_POSITION_EXEMPT = frozenset({"types.FunctionType", "types.LambdaType"})

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules={"runpy": "SL403", "code": "SL403", "codeop": "SL403"},
    references={
        "eval": "SL401",
        "exec": "SL401",
        "builtins.eval": "SL401",
        "builtins.exec": "SL401",
        "compile": "SL402",
        "builtins.compile": "SL402",
        "types.CodeType": "SL404",
        "types.FunctionType": "SL404",
        "types.LambdaType": "SL404",
        "runpy.run_path": "SL401",
        "runpy.run_module": "SL401",
        "code.interact": "SL401",
        "code.InteractiveInterpreter": "SL401",
        "code.InteractiveConsole": "SL401",
        "codeop.compile_command": "SL402",
    },
    attributes={"co_code": "SL404"},
)
