"""The audit's fast RestrictedPython verdict agrees with the real transformer and compiler.

The screen may send a file to the slow path needlessly, never pass a file the transformer refuses; each sample
below is audited both ways and the outcomes (messages included) must be identical.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import diffusers
import pytest

from safeloader.audit.analyzer import FileAnalyzer
from safeloader.audit.model import RestrictedOutcome
from safeloader.audit.restricted_check import RestrictedScreen, full_restricted_outcome, restricted_outcome

CORPUS = Path(__file__).parent / "corpus" / "malicious"
PIPELINES = Path(diffusers.__file__).parent / "pipelines"


def fast_outcome(data: bytes, relpath: str = "pipeline.py") -> tuple[RestrictedOutcome, bool]:
    tree = ast.parse(data)
    screen = RestrictedScreen(data)
    FileAnalyzer(allow_imports=None, deny_imports=()).analyze(tree, relpath, screen)
    return restricted_outcome(tree, data, relpath, screen), screen.flagged


REFUSED = {
    "refused-name": "x = eval\n",
    "guard-name": "_getattr_ = 1\n",
    "print-store": "printed = 1\n",
    "roles": "a__roles__ = 1\n",
    "escape-attribute": "g = f.__globals__\n",
    "escape-attribute-deep-chain": "g = a.b.c.d.__code__.co_consts\n",
    "guard-attribute": "x = obj._write_\n",
    "frame-attribute": "f = gen.gi_frame\n",
    "function-name": "def exec(): pass\n",
    "argument-name": "def f(_print_): pass\n",
    "vararg-name": "def f(*_getiter_): pass\n",
    "lambda-argument": "f = lambda _tmp1: 1\n",
    "class-name": "class _write_: pass\n",
    "import-star": "from os import *\n",
    "import-asname": "import os as _getattr_\n",
    "import-name": "from builtins import eval\n",
    "except-name": "try:\n    pass\nexcept Exception as _print_:\n    pass\n",
    "nonlocal-name": "def f():\n    eval = 1\n    def g():\n        nonlocal eval\n",
    "string-annotation": "def f(x: 'os.system(1)'): pass\n",
    "string-return-annotation": "def f() -> '__import__(\"os\")': pass\n",
    "string-annassign": "x: 'a.__class__' = 1\n",
    "match": "match x:\n    case 1:\n        pass\n",
    "try-star": "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "exec-call": "exec('1')\n",
    "return-outside-function": "return 1\n",
    "return-in-class": "class A:\n    return 1\n",
    "break-outside-loop": "break\n",
    "continue-in-loop-else": "for i in x:\n    pass\nelse:\n    continue\n",
    "late-future": "import os\nfrom __future__ import annotations\n",
    "unknown-future": "from __future__ import braces\n",
    "nonlocal-at-module": "nonlocal x\n",
    "nonlocal-unbound": "def f():\n    nonlocal y\n",
    "global-after-use": "def f():\n    x = 1\n    global x\n",
    "duplicate-argument": "def f(a, a): pass\n",
    "two-starred-targets": "*a, *b = c\n",
    "bare-starred-target": "*a = b\n",
    "default-except-not-last": "try:\n    pass\nexcept:\n    pass\nexcept ValueError:\n    pass\n",
    "yield-outside-function": "yield 1\n",
    "yield-in-comprehension": "def f():\n    return [(yield i) for i in x]\n",
    "await-outside-async": "def f():\n    await x\n",
    "walrus-in-comprehension-iterable": "[i for i in (y := x)]\n",
    "deep-binop-chain": "x = " + " + ".join(["a"] * 400) + "\n",
    "blocks-too-deep": "".join("    " * i + f"for i{i} in x:\n" for i in range(21)) + "    " * 21 + "pass\n",
}

COMPILED = {
    "everyday": textwrap.dedent(
        """
        from __future__ import annotations
        import torch
        from typing import Optional

        class Pipe:
            _registry: dict[str, int] = {}

            def __init__(self, n: int, *args: int, scale: Optional['float'] = None, **kwargs) -> None:
                self.__secret = n
                super().__init__()

            def __call__(self, prompt: str) -> 'torch.Tensor':
                for i, (a, b) in enumerate(zip(x, y)):
                    if i:
                        continue
                    break
                else:
                    pass
                try:
                    v = [k for k in range(3) if k]
                except ValueError as err:
                    raise RuntimeError(str(err)) from err
                finally:
                    print("done")
                with torch.no_grad() as (a, b):
                    a += 1
                    self.count += 1
                return torch.zeros(1)
        """
    ),
    "print-load": "print(1)\nx = printed\n",
    "async-function": "async def f():\n    await g()\n",
    "one-starred-target": "a, *b = c\n",
    "global": "x = 0\ndef f():\n    global x\n    x = 1\n",
    "nonlocal": "def f():\n    x = 1\n    def g():\n        nonlocal x\n        x = 2\n",
    "generator": "def f():\n    yield 1\n    yield from g()\n",
    "walrus": "if (n := len(x)) > 1:\n    pass\n",
    "docstring-then-future": '"""doc"""\nfrom __future__ import annotations\n',
    "parentheses-do-not-nest-the-tree": "x = " + "(" * 90 + "1" + ")" * 90 + "\n",
    "multiline-annotation": "def f(x: Optional[\n    'int'\n]) -> None: pass\n",
}


@pytest.mark.parametrize("source", list(REFUSED.values()), ids=list(REFUSED))
def test_every_refusal_goes_to_the_transformer_and_matches(source: str) -> None:
    data = source.encode()
    fast, _ = fast_outcome(data)
    full = full_restricted_outcome(data, "pipeline.py")
    assert not full.compiled, "the sample must be one the transformer or compiler refuses"
    assert fast == full


@pytest.mark.parametrize("source", list(COMPILED.values()), ids=list(COMPILED))
def test_valid_code_compiles_both_ways(source: str) -> None:
    data = source.encode()
    fast, _ = fast_outcome(data)
    assert fast == full_restricted_outcome(data, "pipeline.py") == RestrictedOutcome(True)


def test_the_common_case_takes_the_fast_path() -> None:
    _, flagged = fast_outcome(COMPILED["everyday"].encode())
    assert not flagged


@pytest.mark.parametrize(
    "data",
    [
        "# -*- coding: latin-1 -*-\nx = '\xe9'\n".encode("latin-1"),
        b"\xef\xbb\xbfx = 1\n",
        "# coding: latin-1\nx = '\xc3\xa9'\n".encode("latin-1"),
    ],
    ids=["latin-1", "bom", "utf-8-bytes-latin-1-cookie"],
)
def test_sources_the_transformer_decodes_differently_take_its_path(data: bytes) -> None:
    fast, _ = fast_outcome(data)
    assert fast == full_restricted_outcome(data, "pipeline.py")


def test_malicious_corpus_agrees() -> None:
    for path in sorted(CORPUS.glob("*.py")):
        data = path.read_bytes()
        assert fast_outcome(data, path.name)[0] == full_restricted_outcome(data, path.name), path.name


def test_diffusers_pipelines_agree_on_a_sample() -> None:
    """Every 24th pipeline file (bench/bench_audit.py checks all of them and reports the share)."""
    paths = sorted(PIPELINES.rglob("pipeline_*.py"))[::24]
    assert len(paths) > 10
    for path in paths:
        data = path.read_bytes()
        assert fast_outcome(data, path.name)[0] == full_restricted_outcome(data, path.name), path
