"""Run every fuzz target briefly (CI) or for long (``--seconds 3600``).

Each target is a script in this folder named ``fuzz_*.py``. With atheris installed and ``--atheris``,
a target runs under libFuzzer for the given time; otherwise (the default, and what CI uses) it runs
its built-in smoke loop: the seed corpus plus random mutations for the given time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="time per target")
    parser.add_argument("--atheris", action="store_true", help="run under atheris/libFuzzer instead of the smoke loop")
    parser.add_argument("targets", nargs="*", help="target names (default: all fuzz_*.py)")
    args = parser.parse_args()
    targets = [HERE / f"{name}.py" for name in args.targets] or sorted(HERE.glob("fuzz_*.py"))
    failures = 0
    for target in targets:
        corpus = HERE / "corpus" / target.stem.removeprefix("fuzz_")
        if args.atheris:
            cmd = [sys.executable, str(target), f"-max_total_time={args.seconds}", "-timeout=10", "-rss_limit_mb=4096"]
            if corpus.is_dir():
                cmd.append(str(corpus))
        else:
            cmd = [sys.executable, str(target), "--smoke-seconds", str(args.seconds)]
        started = time.perf_counter()
        result = subprocess.run(cmd, check=False)
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        print(f"fuzz {target.stem}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
