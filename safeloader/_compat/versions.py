"""The versions of torch, diffusers, transformers and huggingface_hub safeloader was tested with.

``TESTED`` is the single record: the oldest versions are the lower bounds in ``pyproject.toml`` and the pins
of ``constraints/oldest.txt``; the newest are what ``make test-compat`` last passed with (README,
"Compatibility"). ``tests/test_packaging.py`` keeps the three in step. ``safeloader doctor`` reads the installed
versions from package metadata (nothing is imported) and says whether each is inside the tested range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any


@dataclass(frozen=True)
class TestedRange:
    distribution: str
    oldest: str
    newest: str
    #: Why the package is needed; an optional one says which extra brings it.
    needed_for: str
    optional: bool = False


TESTED: tuple[TestedRange, ...] = (
    TestedRange("torch", "2.13.0", "2.13.0", "runs the pipeline in the worker; tensors cross as data"),
    TestedRange("diffusers", "0.35.2", "0.42.1", "the pipelines themselves"),
    TestedRange(
        "transformers",
        "5.0.0",
        "5.24.0",
        "text encoders, tokenizers and trust_remote_code components (pip install 'safeloader[transformers]')",
        optional=True,
    ),
    TestedRange("huggingface_hub", "1.3.0", "2.4.0", "resolving and downloading from the Hub"),
)

_RELEASE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def release(version: str) -> tuple[int, int, int]:
    """``(2, 13, 0)`` for ``2.13.0+cpu``, ``0.43.0.dev0`` or ``2.13``: the release part only."""
    match = _RELEASE.match(version.strip())
    if match is None:
        return (0, 0, 0)
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return (major, minor, patch)


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def dependency_facts() -> list[dict[str, Any]]:
    """One entry per tested library: installed version (or None) and whether it is inside the tested range."""
    facts = []
    for tested in TESTED:
        version = installed_version(tested.distribution)
        if version is None:
            status = "optional, not installed" if tested.optional else "missing"
            inside = None if tested.optional else False
        elif release(version) < release(tested.oldest):
            status, inside = "older than tested", False
        elif release(version) > release(tested.newest):
            status, inside = "newer than tested", False
        else:
            status, inside = "inside the tested range", True
        facts.append(
            {
                "name": tested.distribution,
                "version": version,
                "tested_oldest": tested.oldest,
                "tested_newest": tested.newest,
                "inside_tested_range": inside,
                "status": status,
                "needed_for": tested.needed_for,
            }
        )
    return facts


def format_dependency_facts(facts: list[dict[str, Any]]) -> str:
    lines = ["libraries:"]
    for fact in facts:
        mark = {True: "ok ", False: "!! ", None: "-- "}[fact["inside_tested_range"]]
        version = fact["version"] or "not installed"
        lines.append(
            f"  [{mark}] {fact['name']:<16} {version:<14} {fact['status']} "
            f"({fact['tested_oldest']} … {fact['tested_newest']})"
        )
    return "\n".join(lines)
