"""``safeloader doctor [--json]``: which sandbox layers this host really provides, and why any is missing."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check which sandbox layers this host provides (starts a confined probe process)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def _bounds_text(facts: Mapping[str, Any]) -> str:
    """The bounds on memory, processes and disk and the seccomp allow list's size, one line each."""
    allowed = facts.get("seccomp_allowed_syscalls")
    lines = [
        "bounds:",
        f"  memory     {facts.get('memory_bound') or 'unknown (the probe did not start)'}",
        f"  processes  {facts.get('process_bound') or 'unknown'}",
        f"  disk       {facts.get('tmp_bound') or 'unknown'}",
        f"  syscalls   {f'{allowed} allowed, every other one refused' if allowed else 'no seccomp allow list'}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from safeloader.sandbox.probe import probe_host

    report = probe_host()
    libraries = library_facts()
    if args.json:
        print(json.dumps({**report.to_dict(), "libraries": libraries}, indent=2))
    else:
        print(report.format_text())
        print(_bounds_text(report.facts))
        if report.missing:
            print("Layers marked OFF are not provided here; a policy that requires them will refuse to load.")
        print(format_library_facts(libraries))
    return 0 if report.all_active else 1


# --- libraries: which torch, diffusers, transformers, huggingface_hub, and were they tested ------------


def library_facts() -> list[dict[str, Any]]:
    """Installed version of each library safeloader was tested with, and whether it is inside that range."""
    from safeloader._compat.versions import dependency_facts

    return dependency_facts()


def format_library_facts(facts: list[dict[str, Any]]) -> str:
    from safeloader._compat.versions import format_dependency_facts

    text = format_dependency_facts(facts)
    if any(fact["inside_tested_range"] is False for fact in facts):
        text += "\nLibraries marked !! are outside the versions safeloader was tested with; see README, Compatibility."
    return text
