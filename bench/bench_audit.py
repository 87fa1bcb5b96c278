"""Audit throughput on diffusers' own pipeline files, against bandit and bare ``ast.parse``, in one run.

Also records the two corpus figures the audit issue asks for: how many of those files compile under the
RestrictedPython guard layer, and how many the ``default`` policy denies (must be 0).

Prints a small table and one JSON line (``{"bench": "audit", ...}``). Run: ``python bench/bench_audit.py``
(``--no-bandit`` to skip the slow bandit pass, ``--repeat N`` for best-of-N timings).
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import diffusers

from safeloader.audit import audit_sources
from safeloader.audit.restricted import compile_restricted_module
from safeloader.errors import AuditDenied
from safeloader.policy import load_policy, with_overrides

PIPELINES = Path(diffusers.__file__).parent / "pipelines"


def pipeline_files() -> list[Path]:
    return sorted(
        p for p in PIPELINES.rglob("pipeline_*.py") if p.name not in ("pipeline_utils.py", "pipeline_loading_utils.py")
    )


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(PIPELINES.parent.parent).with_suffix("").parts[:-1])


def best_of(repeat: int, works: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best time of each job over ``repeat`` rounds, the jobs interleaved so that load from other
    processes on a shared machine hits them alike."""
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeat):
        for name, work in works.items():
            started = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def run_bandit(paths: list[Path]) -> tuple[float, int]:
    """bandit as a library, default profile, on the same files; returns (seconds, issues found)."""
    from bandit.core import config as bandit_config
    from bandit.core import manager as bandit_manager

    logging.getLogger("bandit").setLevel(logging.ERROR)
    started = time.perf_counter()
    mgr = bandit_manager.BanditManager(bandit_config.BanditConfig(), "file", quiet=True)
    mgr.discover_files([str(p) for p in paths])
    mgr.run_tests()
    return time.perf_counter() - started, len(mgr.get_issue_list())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-bandit", action="store_true")
    args = parser.parse_args()

    paths = pipeline_files()
    sources = {p: p.read_bytes() for p in paths}
    total_bytes = sum(len(d) for d in sources.values())
    default = load_policy("default")
    static_only = with_overrides(default, audit={"restricted_python": "off"})

    compiled = 0
    for path, data in sources.items():
        try:
            compile_restricted_module(data, path.name)
            compiled += 1
        except AuditDenied:
            pass
    denied = [
        str(path)
        for path, data in sources.items()
        if audit_sources({path.name: data}, default, entry=path.name, label=str(path), package=package_of(path)).verdict
        != "allow"
    ]

    def parse_all() -> None:
        for data in sources.values():
            ast.parse(data)

    def parse_all_without_gc() -> None:
        gc.disable()
        try:
            parse_all()
        finally:
            gc.enable()

    def audit_with(policy: object) -> Callable[[], None]:
        def work() -> None:
            for path, data in sources.items():
                audit_sources({path.name: data}, policy, entry=path.name, label="b", package=package_of(path))  # type: ignore[arg-type]

        return work

    fast = best_of(
        args.repeat, {"parse": parse_all, "parse_nogc": parse_all_without_gc, "audit": audit_with(static_only)}
    )
    parse_s, parse_nogc_s, audit_s = fast["parse"], fast["parse_nogc"], fast["audit"]
    full_s = best_of(1, {"full": audit_with(default)})["full"]
    bandit_s, bandit_issues = (None, None) if args.no_bandit else run_bandit(paths)

    mib = total_bytes / 2**20
    rows = [
        ("ast.parse only", parse_s),
        ("ast.parse only, cycle collector off (as the auditor parses)", parse_nogc_s),
        ("safeloader static audit (parse + rules)", audit_s),
        ("safeloader audit, default policy (+ RestrictedPython report)", full_s),
    ]
    if bandit_s is not None:
        rows.append((f"bandit (library, default profile; {bandit_issues} issues)", bandit_s))
    print(f"{len(paths)} diffusers pipeline files, {mib:.2f} MiB")
    print(f"RestrictedPython guard layer compiles {compiled}/{len(paths)} ({100 * compiled / len(paths):.1f} %)")
    print(f"denied under 'default': {len(denied)}")
    for label, seconds in rows:
        print(f"  {label:<66} {seconds:7.3f} s  {mib / seconds:7.2f} MiB/s")
    print(
        f"static audit / ast.parse: {audit_s / parse_s:.2f}x (goal <= 1.5x); "
        f"/ ast.parse without gc: {audit_s / parse_nogc_s:.2f}x"
    )
    if bandit_s is not None:
        print(f"bandit / static audit: {bandit_s / audit_s:.1f}x faster (goal >= 8x)")
    print(
        json.dumps(
            {
                "bench": "audit",
                "files": len(paths),
                "bytes": total_bytes,
                "restricted_compiled": compiled,
                "restricted_share": round(compiled / len(paths), 4),
                "denied_default": len(denied),
                "parse_s": round(parse_s, 4),
                "parse_nogc_s": round(parse_nogc_s, 4),
                "static_audit_s": round(audit_s, 4),
                "default_audit_s": round(full_s, 4),
                "bandit_s": None if bandit_s is None else round(bandit_s, 4),
                "audit_over_parse": round(audit_s / parse_s, 3),
                "audit_over_parse_nogc": round(audit_s / parse_nogc_s, 3),
                "bandit_over_audit": None if bandit_s is None else round(bandit_s / audit_s, 2),
            }
        )
    )
    return 1 if denied else 0


if __name__ == "__main__":
    sys.exit(main())
