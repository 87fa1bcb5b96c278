"""Fuzz the auditor: arbitrary bytes end in an AuditReport or a SafeLoaderError — never another exception,
a crash, or a hang. Deep nesting must end in AuditError (not RecursionError).

Under atheris: ``python fuzz/fuzz_audit.py [libFuzzer flags] fuzz/corpus/audit``.
Without it (CI): ``python fuzz/fuzz_audit.py --smoke 2000`` or ``--smoke-seconds 20``: the seed corpus
plus random mutations of it.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run_all import prepare_target  # noqa: E402

from safeloader.audit import audit_sources  # noqa: E402
from safeloader.audit.restricted import compile_restricted_module  # noqa: E402
from safeloader.errors import SafeLoaderError  # noqa: E402
from safeloader.policy import load_policy, with_overrides  # noqa: E402

#: Larger inputs are refused by the auditor anyway; fuzzing them only slows the loop.
MAX_INPUT = 64 * 1024
#: One input taking longer than this counts as a hang.
HANG_SECONDS = 10.0
POLICY = with_overrides(load_policy("default"), audit={"restricted_python": "enforce"})
SEPARATOR = b"\n#--helpers--\n"
TOKENS = (
    b"(",
    b")",
    b"[",
    b"]",
    b"{",
    b"}",
    b"'",
    b'"',
    b"\\",
    b"\x00",
    b"\n",
    b"    ",
    b".",
    b"+",
    b"[::-1]",
    b"__import__(",
    b"exec(",
    b"getattr(",
    b"chr(115)+",
    b"from . import ",
    b"from .. import x\n",
    b"import os\n",
    b"os.system",
    b"lambda: ",
    b"async def f(): await x\n",
    b"class C:\n  def __init__(s): s.__x=1\n",
    b"f'{x!r:>{w}}'",
    b"match x:\n case [a, *b]: pass\n",
    b"x: 'List[int]' = 1\n",
    b"((((((((((",
)


def audit_one(data: bytes) -> None:
    data = data[:MAX_INPUT]
    files = {"pipeline.py": data}
    if SEPARATOR in data:
        head, tail = data.split(SEPARATOR, 1)
        files = {"pipeline.py": head, "helpers.py": tail}
    try:
        report = audit_sources(files, POLICY, entry="pipeline.py", label="fuzz")
    except SafeLoaderError:
        return
    report.to_dict()
    report.format_text()
    with contextlib.suppress(SafeLoaderError):
        compile_restricted_module(data, "pipeline.py")


def mutate(data: bytes, seeds: Sequence[bytes], rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.randrange(6)
        position = rng.randint(0, len(buffer))
        if choice == 0 and buffer:
            buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        elif choice == 1:
            buffer[position:position] = rng.choice(TOKENS)
        elif choice == 2 and buffer:
            end = min(len(buffer), position + rng.randint(1, 64))
            del buffer[position:end]
        elif choice == 3 and buffer:
            start = rng.randrange(len(buffer))
            buffer[position:position] = buffer[start : start + rng.randint(1, 256)]
        elif choice == 4:
            other = rng.choice(seeds)
            start = rng.randint(0, len(other))
            buffer[position:position] = other[start : start + rng.randint(1, 512)]
        else:
            depth = rng.choice((50, 200, 1000, 5000))
            opener, closer = rng.choice(((b"(", b")"), (b"[", b"]"), (b"-", b""), (b"not ", b""), (b"x.", b"y")))
            buffer[position:position] = b"x = " + opener * depth + b"1" + closer * depth + b"\n"
    return bytes(buffer[:MAX_INPUT])


def load_seeds(name: str) -> list[bytes]:
    directory = HERE / "corpus" / name
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()] or [b""]


def smoke_loop(target: Callable[[bytes], None], seeds: list[bytes], *, iterations: int, seconds: float) -> int:
    """Run seeds then mutations until ``iterations`` or ``seconds`` is reached; return the count run."""
    rng = random.Random(0x5AFE)
    deadline = time.monotonic() + seconds
    count = 0
    queue = list(seeds)
    while count < iterations and time.monotonic() < deadline:
        data = queue.pop() if queue else mutate(rng.choice(seeds), seeds, rng)
        started = time.monotonic()
        try:
            target(data)
        except BaseException:
            (HERE / "crash-input.bin").write_bytes(data)
            print(f"crash on input #{count} (saved to fuzz/crash-input.bin)", file=sys.stderr)
            raise
        if time.monotonic() - started > HANG_SECONDS:
            (HERE / "slow-input.bin").write_bytes(data)
            raise SystemExit(f"input #{count} took over {HANG_SECONDS} s (saved to fuzz/slow-input.bin)")
        count += 1
    return count


def main(target: Callable[[bytes], None], corpus: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", type=int, metavar="N", help="run N inputs without atheris")
    parser.add_argument("--smoke-seconds", type=float, metavar="S", help="run for S seconds without atheris")
    args, rest = parser.parse_known_args(argv)
    if args.smoke is not None or args.smoke_seconds is not None:
        iterations = args.smoke if args.smoke is not None else sys.maxsize
        seconds = args.smoke_seconds if args.smoke_seconds is not None else float("inf")
        ran = smoke_loop(target, load_seeds(corpus), iterations=iterations, seconds=seconds)
        print(f"{corpus}: {ran} inputs, no crash")
        return 0
    import atheris

    atheris.Setup([sys.argv[0], *rest], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(prepare_target(audit_one, sys.argv[1:]), "audit", sys.argv[1:]))
