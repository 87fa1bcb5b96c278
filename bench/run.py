"""Run every benchmark in one go and print one table of ratios against the baselines.

    .venv/bin/python bench/run.py            # about 4 minutes on 2 cores
    .venv/bin/python bench/run.py --json     # the table as JSON too

Each ``bench_*.py`` prints its own detail and, last, one JSON line tagged ``"bench"``; this script runs
them one after another (never in parallel: they measure time) and assembles the rows. Baselines are
measured in the same run: in-process diffusers, bandit, ``ast.parse``, ``memcpy``, ``pickle`` and, for the
proxy call, a bare two-process loop on the same pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_audit.py", "bench_proxy.py", "bench_ipc.py")


def _run(script: str) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stdout)
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{script} failed with exit {proc.returncode}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{") and '"bench"' in line:
            result: dict[str, Any] = json.loads(line)
            result["_seconds"] = time.perf_counter() - started
            return result
    raise SystemExit(f"{script} printed no result line")


#: The last field: the goal met, not met, or ``None`` for a reference row that has no goal.
Row = tuple[str, str, str, str, str, bool | None]


def _rows(results: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []

    def add(name: str, value: str, baseline: str, ratio: float, goal: str, met: Callable[[float], bool]) -> None:
        rows.append((name, value, baseline, f"{ratio:.2f}x", goal, met(ratio)))

    def with_interval(ratio: float, interval: list[float] | None) -> str:
        # The call ratios are medians over rounds; their 95 % interval says how far another run may land.
        return f"{ratio:.2f}x" if not interval else f"{ratio:.2f}x ({interval[0]:.2f}-{interval[1]:.2f})"

    audit = results.get("audit")
    if audit:
        loads = "/".join(f"{load:.1f}" for load in audit["loads"])
        where = f"{audit['files']} diffusers pipelines, load {loads}"
        for policy in ("default", "strict"):
            add(
                f"`safeloader audit DIR --policy {policy}` vs fresh-process ast.parse ({where})",
                f"{audit[f'{policy}_s']:.2f} s",
                f"ast.parse {audit['parse_s']:.2f} s",
                audit[f"{policy}_over_parse"],
                "<= 2x",
                lambda r: r <= 2,
            )
        if audit.get("bandit_over_default"):
            add(
                "`bandit -r DIR` vs `safeloader audit DIR --policy default`",
                f"{audit['default_s']:.2f} s",
                f"bandit {audit['bandit_s']:.2f} s",
                audit["bandit_over_default"],
                ">= 8x faster",
                lambda r: r >= 8,
            )
            add(
                "`bandit -r DIR` vs `safeloader audit DIR --policy strict`",
                f"{audit['strict_s']:.2f} s",
                f"bandit {audit['bandit_s']:.2f} s",
                audit["bandit_over_strict"],
                ">= 8x faster",
                lambda r: r >= 8,
            )
        add(
            "re-audit of unchanged bytes (audit cache) vs fresh-process ast.parse",
            f"{audit['cached_s']:.2f} s",
            f"ast.parse {audit['parse_s']:.2f} s",
            audit["cached_over_parse"],
            "<= 0.25x",
            lambda r: r <= 0.25,
        )
        rows.append(
            (
                "RestrictedPython: diffusers pipeline files compiled (full transformer)",
                f"{audit['restricted_compiled']}/{audit['files']}",
                "-",
                f"{100 * audit['restricted_share']:.1f} %",
                ">= 95 %",
                audit["restricted_share"] >= 0.95,
            )
        )
    proxy = results.get("proxy")
    if proxy:
        rows.append(
            (
                "proxy call vs in-process (tiny DDPM, 10 steps, PIL; 95 % interval of the median)",
                f"{proxy['call_proxy_s']:.4f} s",
                f"in-process {proxy['call_local_s']:.4f} s",
                with_interval(proxy["call_ratio"], proxy.get("call_ratio_interval")),
                "<= 1.02x",
                proxy["call_ratio"] <= 1.02,
            )
        )
        references = (
            ("call_floor", "bare two-process floor vs in-process (reference, same calls)"),
            ("call_semantic_floor", "the floor + generator state back + ImagePipelineOutput, no checks (reference)"),
        )
        for key, label in references:
            if f"{key}_ratio" in proxy:
                row = (label, f"{proxy[f'{key}_s']:.4f} s", f"in-process {proxy['call_local_s']:.4f} s")
                ratio = with_interval(proxy[f"{key}_ratio"], proxy.get(f"{key}_ratio_interval"))
                rows.append((*row, ratio, "reference", None))
        if "caller_cpu_proxy_ms" in proxy:
            rows.append(
                (
                    "caller CPU per call (its thread): proxy vs the floor + generator state + output",
                    f"{proxy['caller_cpu_proxy_ms']:.3f} ms",
                    f"that floor {proxy['caller_cpu_semantic_floor_ms']:.3f} ms",
                    f"+{proxy['caller_cpu_proxy_ms'] - proxy['caller_cpu_semantic_floor_ms']:.3f} ms",
                    "reference",
                    None,
                )
            )
        add(
            "cold start, from_pretrained before `import torch`",
            f"{proxy['cold_early_s']:.2f} s",
            f"in-process {proxy['cold_local_s']:.2f} s",
            proxy["cold_early_ratio"],
            "<= 1.10x",
            lambda r: r <= 1.10,
        )
        add(
            "cold start, `import torch` first (fresh process)",
            f"{proxy['cold_proxy_s']:.2f} s",
            f"in-process {proxy['cold_local_s']:.2f} s",
            proxy["cold_ratio"],
            "<= 1.10x",
            lambda r: r <= 1.10,
        )
        rows.append(
            (
                "load with a pre-started worker vs in-process 2nd load",
                f"{proxy['prestarted_load_s']:.3f} s",
                f"in-process {proxy['second_local_load_s']:.3f} s",
                f"+{proxy['prestarted_load_extra_s']:.3f} s",
                "<= +0.25 s",
                proxy["prestarted_load_extra_s"] <= 0.25,
            )
        )
        rows.append(
            (
                "caller RSS growth while the worker holds weights",
                f"{proxy['caller_rss_growth_mib']:.1f} MiB",
                "-",
                "-",
                "small",
                True,
            )
        )
    ipc = results.get("ipc")
    if ipc:
        add(
            f"{ipc['mib']} MiB tensor worker -> caller (vs memcpy)",
            f"{ipc['ipc_gbps']:.1f} GB/s",
            f"memcpy {ipc['memcpy_gbps']:.1f}, pickle {ipc['pickle_gbps']:.1f} GB/s",
            ipc["ipc_over_memcpy"],
            f">= {ipc['goal_ipc_gbps']:.0f} GB/s and >= {ipc['goal_ipc_over_memcpy']}x",
            lambda r: ipc["ipc_gbps"] >= ipc["goal_ipc_gbps"] and r >= ipc["goal_ipc_over_memcpy"],
        )
        rows.append(
            (
                "4 KiB round trip (one request and its reply)",
                f"{ipc['round_trip_ms']:.3f} ms",
                "-",
                "-",
                f"<= {ipc['goal_round_trip_ms']} ms",
                ipc["round_trip_ms"] <= ipc["goal_round_trip_ms"],
            )
        )
        rows.append(
            (
                "4 KiB method call on the proxy (getattr + call)",
                f"{ipc['method_call_ms']:.3f} ms",
                "-",
                "-",
                "two round trips",
                None,
            )
        )
    return rows


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, Linux {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="also print the table as one JSON line")
    args = parser.parse_args()
    results = {}
    for script in BENCHES:
        result = _run(script)
        results[result["bench"]] = result
    rows = _rows(results)
    print(f"\nmachine: {_machine()}; load average {os.getloadavg()[0]:.1f}")
    header = ("measurement", "safeloader", "baseline", "ratio", "goal", "met")
    widths = [max(len(str(r[i])) for r in [header, *[(*r[:5], "yes") for r in rows]]) for i in range(6)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = (*row[:5], "-" if row[5] is None else "yes" if row[5] else "NO")
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    if args.json:
        print(json.dumps({"machine": _machine(), "rows": [list(r) for r in rows], "raw": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
