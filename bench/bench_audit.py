"""The audit as users run it: ``safeloader audit DIR --policy default|strict``, a fresh process each time.

Corpus: diffusers' own pipeline files (``diffusers/pipelines/**/pipeline_*.py``, ~357 files), copied into one
directory with their relative imports written as absolute ``diffusers.…`` imports — the form community
pipelines use, so the directory is a pipeline set the CLI audits as is (every top-level ``.py`` is an entry).

Each round runs, one after another (never in parallel), in fresh processes:

- a fresh-process ``ast.parse`` of the same files (the baseline: the least any auditor must do);
- ``safeloader audit DIR --policy default`` and ``--policy strict`` with an empty audit cache (first audit);
- the same ``default`` audit again on the now warm cache (re-auditing unchanged bytes);
- ``bandit -r DIR`` (the dev venv's bandit, default profile).

Ratios are taken within a round (the machine is shared: load hits a round's runs alike) and the median over
rounds is reported, with the load average of each round. Also reports how many files compile under the full
RestrictedPython transformer (the real one, not the audit's screen) and how many the ``default`` policy denies.

Prints a table and one JSON line (``{"bench": "audit", ...}``). ``--rounds N`` (default 3), ``--no-bandit``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers

from safeloader.audit.restricted_check import full_restricted_outcome

PIPELINES = Path(diffusers.__file__).parent / "pipelines"
PACKAGE_ROOT = PIPELINES.parent.parent
_RELATIVE = re.compile(rb"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b)", re.MULTILINE)
_PARSE = (
    "import ast, pathlib, sys\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).glob('*.py')):\n"
    "    ast.parse(p.read_bytes())\n"
)


def pipeline_files() -> list[Path]:
    return sorted(
        p for p in PIPELINES.rglob("pipeline_*.py") if p.name not in ("pipeline_utils.py", "pipeline_loading_utils.py")
    )


def build_corpus(directory: Path) -> int:
    """Copy every pipeline file into ``directory`` (flat, unique names), relative imports made absolute."""
    count = 0
    for path in pipeline_files():
        package = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts[:-1])

        def absolute(match: re.Match[bytes], package: list[str] = package) -> bytes:
            base = package[: len(package) - (len(match.group(2)) - 1)]
            module = ".".join([*base, *([match.group(3).decode()] if match.group(3) else [])])
            return match.group(1) + module.encode() + match.group(4)

        name = "__".join(path.relative_to(PIPELINES).parts)
        (directory / name).write_bytes(_RELATIVE.sub(absolute, path.read_bytes()))
        count += 1
    return count


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds (what the user waits) and CPU seconds of the process and its children (less sensitive to
    other load on a shared machine, but it counts every core the audit uses)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def denied_files(corpus: Path, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "safeloader.cli", "audit", str(corpus), "--policy", "default", "--format", "json"],
        env=env,
        capture_output=True,
        check=False,
    )
    document = json.loads(proc.stdout)
    blocking = {"high", "critical"}
    return sorted({f["file"] for f in document["findings"] if f["severity"] in blocking})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-bandit", action="store_true")
    args = parser.parse_args()
    bandit = shutil.which("bandit", path=str(Path(sys.executable).parent))
    if args.no_bandit:
        bandit = None

    work = Path(tempfile.mkdtemp(prefix="sl-bench-audit-"))
    try:
        corpus = work / "pipelines"
        corpus.mkdir()
        files = build_corpus(corpus)
        total_bytes = sum(p.stat().st_size for p in corpus.glob("*.py"))
        env = dict(os.environ, SAFELOADER_CACHE=str(work / "cache-check"))
        denied = denied_files(corpus, env)
        compiled = sum(full_restricted_outcome(p.read_bytes(), p.name).compiled for p in sorted(corpus.glob("*.py")))

        audit = [sys.executable, "-m", "safeloader.cli", "audit", str(corpus)]
        rounds: list[dict[str, float]] = []
        for index in range(args.rounds):
            load = os.getloadavg()[0]
            row: dict[str, float] = {"load": load}
            row["parse"], row["parse_cpu"] = timed([sys.executable, "-c", _PARSE, str(corpus)], dict(os.environ))
            for policy in ("default", "strict"):
                cache = work / f"cache-{index}-{policy}"
                env = dict(os.environ, SAFELOADER_CACHE=str(cache))
                row[policy], row[f"{policy}_cpu"] = timed([*audit, "--policy", policy], env)
            warm = dict(os.environ, SAFELOADER_CACHE=str(work / f"cache-{index}-default"))
            row["cached"], row["cached_cpu"] = timed([*audit, "--policy", "default"], warm)
            if bandit is not None:
                row["bandit"], row["bandit_cpu"] = timed([bandit, "-r", "-q", str(corpus)], dict(os.environ))
            rounds.append(row)
            print(
                f"round {index + 1}: load {load:.1f}; "
                + ", ".join(f"{k} {v:.2f} s" for k, v in row.items() if k != "load" and not k.endswith("_cpu")),
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(top: str, bottom: str) -> float:
        return statistics.median(r[top] / r[bottom] for r in rounds)

    result = {
        "bench": "audit",
        "files": files,
        "bytes": total_bytes,
        "rounds": len(rounds),
        "loads": [round(r["load"], 1) for r in rounds],
        "restricted_compiled": compiled,
        "restricted_share": round(compiled / files, 4),
        "denied_default": len(denied),
        "parse_s": round(median("parse"), 3),
        "default_s": round(median("default"), 3),
        "strict_s": round(median("strict"), 3),
        "cached_s": round(median("cached"), 3),
        "default_over_parse": round(ratio("default", "parse"), 3),
        "strict_over_parse": round(ratio("strict", "parse"), 3),
        "cached_over_parse": round(ratio("cached", "parse"), 3),
        "default_over_parse_cpu": round(ratio("default_cpu", "parse_cpu"), 3),
        "strict_over_parse_cpu": round(ratio("strict_cpu", "parse_cpu"), 3),
        "bandit_over_default_cpu": round(ratio("bandit_cpu", "default_cpu"), 2) if bandit else None,
        "bandit_s": round(median("bandit"), 3) if bandit else None,
        "bandit_over_default": round(ratio("bandit", "default"), 2) if bandit else None,
        "bandit_over_strict": round(ratio("bandit", "strict"), 2) if bandit else None,
    }
    print(f"{files} diffusers pipeline files (relative imports made absolute), {total_bytes / 2**20:.2f} MiB")
    print(f"full RestrictedPython transformer compiles {compiled}/{files}; denied under 'default': {len(denied)}")
    print(f"rounds: {len(rounds)}, load average per round: {result['loads']}")
    print(f"  fresh-process ast.parse                  {result['parse_s']:7.2f} s")
    print(
        f"  safeloader audit --policy default         {result['default_s']:7.2f} s  {result['default_over_parse']:.2f}x"
    )
    print(
        f"  safeloader audit --policy strict          {result['strict_s']:7.2f} s  {result['strict_over_parse']:.2f}x"
    )
    print(
        f"  safeloader audit --policy default, cached {result['cached_s']:7.2f} s  {result['cached_over_parse']:.2f}x"
    )
    if bandit:
        print(f"  bandit -r                                 {result['bandit_s']:7.2f} s  ")
        print(
            f"bandit / audit default: {result['bandit_over_default']:.1f}x, "
            f"/ strict: {result['bandit_over_strict']:.1f}x"
        )
    print(
        f"CPU-time ratios (all processes): default / parse {result['default_over_parse_cpu']:.2f}x, "
        f"strict / parse {result['strict_over_parse_cpu']:.2f}x"
        + (f", bandit / default {result['bandit_over_default_cpu']:.1f}x" if bandit else "")
    )
    print(json.dumps(result))
    return 1 if denied else 0


if __name__ == "__main__":
    sys.exit(main())
