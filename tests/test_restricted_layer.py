"""The RestrictedPython guard layer: real pipeline code runs under it; escapes are refused."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from safeloader._demo.tiny_model import ONE_STEP_PIPELINE_SOURCE
from safeloader.audit.restricted import compile_restricted_module, restricted_module_globals
from safeloader.errors import AuditDenied


def run_guarded(source: str, name: str = "sl_guarded") -> dict[str, Any]:
    """Execute like the worker does: a real module object registered in sys.modules (dataclasses need it)."""
    module = types.ModuleType(name)
    module.__dict__.update(restricted_module_globals(name, f"{name}.py"))
    sys.modules[name] = module
    try:
        exec(compile_restricted_module(textwrap.dedent(source), f"{name}.py"), module.__dict__)
    finally:
        del sys.modules[name]
    return module.__dict__


def test_demo_pipeline_runs_guarded_and_matches_the_unguarded_run(tiny_model_dir: Path) -> None:
    guarded = run_guarded(ONE_STEP_PIPELINE_SOURCE, "sl_guarded_pipeline")
    plain: dict[str, Any] = {"__name__": "sl_plain_pipeline"}
    exec(compile(ONE_STEP_PIPELINE_SOURCE, "pipeline.py", "exec"), plain)
    outputs = []
    for namespace in (guarded, plain):
        pipe = namespace["UnetSchedulerOneForwardPipeline"].from_pretrained(tiny_model_dir)
        torch.manual_seed(0)
        outputs.append(pipe())
    assert outputs[0].shape == (1, 3, 8, 8)
    assert torch.equal(outputs[0], outputs[1])


def test_everyday_python_features_work_guarded() -> None:
    namespace = run_guarded(
        """
        from __future__ import annotations
        import math
        from dataclasses import dataclass, field
        from typing import Optional

        @dataclass
        class Output:
            images: list[int] = field(default_factory=list)
            scale: Optional[float] = None

        class Base:
            def __init__(self, n: int) -> None:
                self._n = n

        class Child(Base):
            _registry: dict[str, int] = {}

            def __init__(self, n: int) -> None:
                super().__init__(n)
                self._count = 0
                self.__secret = n * 2

            def step(self, k: int = 1, **kwargs) -> int:
                self._count += k
                values = [0, 0]
                values[0] += self._count
                a, (b, c) = 1, (2, 3)
                total = 0
                for i, v in enumerate(values):
                    total += i + v
                seen = {}
                for key in ("k", "kwargs"):
                    seen[key] = locals()[key]  # the callback_kwargs idiom of diffusers pipelines
                return total + a + b + c + len(seen) + self.__secret

            def __repr__(self) -> str:
                return f"Child({self._n}, {self.__class__.__name__}, {math.floor(1.5)})"

        child = Child(3)
        result = child.step(2, extra=1)
        label = "{0._n}-{1}".format(child, repr(child))
        out = Output(images=[1, 2])
        import os
        here = os.getcwd() and os.path.join("a", "b")
        print("guarded print works")
        """
    )
    # loop total (0 + 2) + (1 + 0), a + b + c, two locals, the mangled private attribute
    assert namespace["result"] == 3 + 6 + 2 + 6
    assert namespace["label"] == "3-Child(3, Child, 1)"
    assert namespace["out"].images == [1, 2]


@pytest.mark.parametrize(
    "source",
    [
        "x = ().__class__.__base__.__subclasses__()",
        "def f(): pass\ng = f.__globals__",
        "b = __builtins__",
        "eval('1')",
        "exec('x = 1')",
        "c = compile('1', 'f', 'eval')",
        "m = __import__('os')",
        "g = globals()",
        "_getattr_ = getattr",
        "import sys\nf = sys._getframe(0)",
        "def g():\n    yield 1\nfr = g().gi_frame",
        "x: '().__class__.__base__' = 1",
        "def f(a: \"__import__('os')\"): pass",
    ],
)
def test_escape_primitives_are_refused_at_compile_time(source: str) -> None:
    with pytest.raises(AuditDenied, match=r"guard layer.*Line \d+"):
        compile_restricted_module(source, "evil.py")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def f(): pass\nx = getattr(f, '__glo' + 'bals__')", AttributeError),
        ("x = getattr(getattr((), '__cla' + 'ss__'), '__m' + 'ro__')", AttributeError),
        ("import os\nx = getattr(os, 'sys' + 'tem')", AttributeError),
        ("import os\nx = getattr(getattr(os, 'sy' + 's'), 'mod' + 'ules')", AttributeError),
        ("def f(): pass\nx = '{0.__glo' 'bals__}'.format(f)", AttributeError),
        ("import operator\nx = operator.attrgetter('__globals__')", AttributeError),
        ("x = vars()['_getattr_']", KeyError),
        ("import os\nos.system = print", AttributeError),
        ("import torch\nsetattr(torch, 'load', print)", AttributeError),
        ("m = 'subpro' + 'cess'\nimport importlib", ImportError),
        ("import ctypes", ImportError),
        ("from os import system", ImportError),
        ("import typing\ntyping.get_type_hints(int)", AttributeError),
        ("import diffusers.utils.import_utils as iu\nm = iu.importlib", AttributeError),
        ("import shutil\nrun = shutil.os.system", AttributeError),
        ("import os\nk = getattr(os, 'ki' + 'll')", AttributeError),
        ("import shutil\nrun = getattr(shutil, 'os').popen", AttributeError),
    ],
)
def test_escapes_through_run_time_names_are_refused(source: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="safeloader guard layer"):
        run_guarded(source)


def test_module_level_locals_cannot_rebind_guards() -> None:
    namespace = run_guarded("scope = locals()\nscope['_getattr_'] = getattr\n")
    from safeloader.audit.restricted import guarded_getattr

    assert namespace["_getattr_"] is guarded_getattr


def test_refusal_message_names_construct_and_line() -> None:
    with pytest.raises(AuditDenied) as info:
        compile_restricted_module("x = 1\ny = x.__subclasses__\n", "pipe.py")
    message = str(info.value)
    assert "Line 2" in message and "__subclasses__" in message and "pipe.py" in message
    with pytest.raises(AuditDenied, match="UTF-8"):
        compile_restricted_module(b"\xff\xfe", "pipe.py")


def test_gc_collect_runs_guarded_but_the_heap_walkers_are_refused() -> None:
    namespace = run_guarded(
        """
        import gc
        before = gc.isenabled()
        collected = gc.collect()
        """
    )
    assert isinstance(namespace["collected"], int) and namespace["before"] in (True, False)
    for source, error in (
        ("import gc\nlive = gc.get_objects()\n", AttributeError),
        ("from gc import get_referrers\n", ImportError),
        ("import gc\nwalk = getattr(gc, 'get_' + 'referents')\n", AttributeError),
    ):
        with pytest.raises(error, match="refused"):
            run_guarded(source)


def test_gc_walker_reached_under_another_name_is_refused() -> None:
    import gc

    carrier = types.ModuleType("sl_carrier")
    carrier.walk = gc.get_objects  # type: ignore[attr-defined]
    sys.modules["sl_carrier"] = carrier
    try:
        with pytest.raises(AttributeError, match="refused"):
            run_guarded("import sl_carrier\nw = sl_carrier.walk\n")
    finally:
        del sys.modules["sl_carrier"]
