"""Run every fuzz target: briefly without atheris (the default, what CI and ``make fuzz`` do) or for long under it.

Each target is a script in this folder named ``fuzz_*.py`` with a seed corpus in ``corpus/<name>/``. Every
target turns arbitrary bytes into a value or a :class:`~safeloader.errors.SafeLoaderError`; anything else is a
finding, saved to ``fuzz/crash-input.bin`` (smoke mode) or ``fuzz/findings/<target>/`` (atheris).

Smoke mode (default): the seed corpus plus random mutations, ``--seconds`` per target, each input under a
time guard, the whole target under a wall-clock limit::

    python fuzz/run_all.py --seconds 20                  # every target, 20 s each
    python fuzz/run_all.py --seconds 5 fuzz_ipc_decode   # one target

Long run under atheris/libFuzzer (coverage-guided; new inputs go to ``fuzz/findings/<target>/corpus``, never
into the seed corpus)::

    python fuzz/run_all.py --atheris --seconds 3600      # one hour per target
    python fuzz/run_all.py --atheris --seconds 600 -j 2 fuzz_lockfile

A finding is fixed by making the code under test raise a ``SafeLoaderError``; then copy the input into the
target's seed corpus so every later run replays it.
"""

from __future__ import annotations

import argparse
import inspect
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Time one input may take in smoke mode before it counts as a hang.
INPUT_SECONDS = 10.0
#: Modules whose Python code atheris traces for coverage: ours and the parsers they call.
INSTRUMENTED = ("safeloader", "tomllib", "tomli_w", "json", "msgpack", "base64")
#: Start-up (imports of torch and diffusers) allowed on top of a target's run time before it counts as hung.
STARTUP_GRACE_SECONDS = 90


class InputTimedOut(BaseException):
    """One input ran past the smoke mode's per-input limit (a BaseException, so no ``except Exception`` hides it)."""


def _raise_timed_out(_signum: int, _frame: object) -> None:
    raise InputTimedOut(f"one input ran for more than {INPUT_SECONDS:g} s")


def prepare_target(target: Callable[[bytes], None], argv: list[str]) -> Callable[[bytes], None]:
    """``target`` as the mode in ``argv`` runs it: under a per-input SIGALRM guard in smoke mode; under atheris
    (whose ``-timeout`` guards each input) with the modules it exercises instrumented for coverage."""
    if not any(arg.startswith("--smoke") for arg in argv):
        instrument_for_atheris(INSTRUMENTED)
        return target

    def guarded(data: bytes) -> None:
        previous = signal.signal(signal.SIGALRM, _raise_timed_out)
        signal.setitimer(signal.ITIMER_REAL, INPUT_SECONDS)
        try:
            target(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return guarded


def instrument_for_atheris(prefixes: tuple[str, ...]) -> int:
    """Add coverage to the loaded Python functions of modules named ``prefixes*``; returns how many.

    ``atheris.instrument_all()`` would also instrument torch (minutes, and it breaks some of it); the code under
    test is ours and the pure-Python parsers it calls.
    """
    import atheris

    done: set[int] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(prefixes):
            continue
        for value in list(vars(module).values()):
            members = list(vars(value).values()) if inspect.isclass(value) else []
            for member in [value, *members]:
                function = getattr(member, "__func__", getattr(member, "fget", member))
                if inspect.isfunction(function) and function.__module__ == name and id(function) not in done:
                    atheris.instrument_func(function)
                    done.add(id(function))
    return len(done)


def corpus_dir(target: Path) -> Path:
    """``corpus/<name>`` for ``fuzz_<name>.py``, else the corpus named by the name's first word (``ipc``)."""
    name = target.stem.removeprefix("fuzz_")
    for candidate in (name, name.split("_")[0]):
        if (HERE / "corpus" / candidate).is_dir():
            return HERE / "corpus" / candidate
    return HERE / "corpus" / name


def command_for(target: Path, seconds: int, *, atheris: bool) -> list[str]:
    if not atheris:
        return [sys.executable, str(target), "--smoke-seconds", str(seconds)]
    findings = HERE / "findings" / target.stem
    (findings / "corpus").mkdir(parents=True, exist_ok=True)
    # libFuzzer adds new inputs to the first corpus folder: a scratch folder, so the seeds stay hand-picked.
    return [
        sys.executable,
        str(target),
        f"-max_total_time={seconds}",
        "-timeout=10",
        "-rss_limit_mb=4096",
        "-max_len=65536",
        f"-artifact_prefix={findings}/",
        str(findings / "corpus"),
        str(corpus_dir(target)),
    ]


def run_copies(command: list[str], copies: int, *, limit: float) -> list[int | None]:
    """Run ``copies`` processes of ``command`` side by side (they share the findings corpus); None: killed as hung."""
    processes = [subprocess.Popen(command) for _ in range(copies)]
    deadline = time.monotonic() + limit
    returncodes: list[int | None] = []
    for process in processes:
        try:
            returncodes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncodes.append(None)
    return returncodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="run time per target (default 20)")
    parser.add_argument("--atheris", action="store_true", help="run under atheris/libFuzzer instead of the smoke loop")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="fuzzing processes per target (atheris only)")
    parser.add_argument("targets", nargs="*", help="target names such as fuzz_lockfile (default: every fuzz_*.py)")
    args = parser.parse_args()
    targets = [HERE / f"{name.removesuffix('.py')}.py" for name in args.targets] or sorted(HERE.glob("fuzz_*.py"))
    missing = [str(t) for t in targets if not t.is_file()]
    if missing:
        parser.error(f"no such target: {', '.join(missing)}")
    failures = 0
    for target in targets:
        command = command_for(target, args.seconds, atheris=args.atheris)
        copies = args.jobs if args.atheris else 1
        started = time.perf_counter()
        returncodes = run_copies(command, copies, limit=args.seconds * 2 + STARTUP_GRACE_SECONDS)
        bad = [code for code in returncodes if code != 0]
        status = "ok" if not bad else ("HUNG" if None in bad else f"FAILED (exit {bad[0]})")
        print(f"fuzz {target.stem}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
        failures += bool(bad)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
