"""``safeloader.lock``: the exact commit and file hashes of each pipeline a project loads.

TOML, one table per pipeline keyed by the spec it was resolved from::

    version = 1

    [pipelines."org/name"]
    source = "hub"
    source_id = "org/name"
    repo = "org/name"
    repo_type = "model"
    subfolder = ""
    commit = "0123…"            # absent for local pipelines
    entry = "pipeline.py"

    [pipelines."org/name".files]
    "pipeline.py" = "<sha256>"
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from safeloader.errors import LockDriftError, LockfileError
from safeloader.resolve.manifest import Manifest

LOCKFILE_VERSION = 1
DEFAULT_LOCKFILE = "safeloader.lock"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LockedPipeline:
    spec: str
    source: str
    source_id: str
    repo: str
    repo_type: str | None
    subfolder: str
    commit: str | None
    entry: str
    files: Mapping[str, str]


def locked_from_manifest(spec: str, manifest: Manifest) -> LockedPipeline:
    return LockedPipeline(
        spec=spec,
        source=manifest.source,
        source_id=manifest.source_id,
        repo=manifest.repo,
        repo_type=manifest.repo_type,
        subfolder=manifest.subfolder,
        commit=manifest.commit,
        entry=manifest.entry,
        files=dict(sorted(manifest.files.items())),
    )


def render_lockfile(pipelines: Iterable[LockedPipeline]) -> bytes:
    tables: dict[str, Any] = {}
    for locked in pipelines:
        table: dict[str, Any] = {
            "source": locked.source,
            "source_id": locked.source_id,
            "repo": locked.repo,
            "repo_type": locked.repo_type or "",
            "subfolder": locked.subfolder,
            "entry": locked.entry,
        }
        if locked.commit is not None:
            table["commit"] = locked.commit
        table["files"] = dict(sorted(locked.files.items()))
        tables[locked.spec] = table
    header = "# Written by `safeloader lock`; commit it. Any drift from these hashes is refused at load time.\n"
    return (header + tomli_w.dumps({"version": LOCKFILE_VERSION, "pipelines": tables})).encode("utf-8")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _is_commit(value: object) -> bool:
    return isinstance(value, str) and len(value) == 40 and set(value) <= _HEX


def read_lockfile(path: Path) -> dict[str, LockedPipeline]:
    """Parse and validate a lockfile; every problem is a :class:`LockfileError`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LockfileError(f"lockfile {path} does not exist; create it with `safeloader lock SPEC`.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise LockfileError(f"lockfile {path} cannot be read ({exc}); check the path and its permissions.") from exc
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: arrays nested too deeply
        raise LockfileError(
            f"lockfile {path} is not valid TOML ({exc}); regenerate it with `safeloader lock`."
        ) from exc
    if data.get("version") != LOCKFILE_VERSION:
        raise LockfileError(
            f"lockfile {path} has version {data.get('version')!r}, expected {LOCKFILE_VERSION}; "
            "regenerate it with `safeloader lock`."
        )
    tables = data.get("pipelines")
    if not isinstance(tables, dict):
        raise LockfileError(f"lockfile {path} has no [pipelines] table; regenerate it with `safeloader lock`.")
    locked: dict[str, LockedPipeline] = {}
    for spec, table in tables.items():
        problem = _table_problem(table)
        if problem is not None:
            raise LockfileError(f"lockfile {path}: pipeline {spec!r} {problem}; regenerate it with `safeloader lock`.")
        locked[spec] = LockedPipeline(
            spec=spec,
            source=table["source"],
            source_id=table["source_id"],
            repo=table["repo"],
            repo_type=table["repo_type"] or None,
            subfolder=table.get("subfolder", ""),
            commit=table.get("commit"),
            entry=table["entry"],
            files=dict(table["files"]),
        )
    return locked


def _table_problem(table: object) -> str | None:
    if not isinstance(table, dict):
        return "is not a table"
    for key in ("source", "source_id", "repo", "repo_type", "entry"):
        if not isinstance(table.get(key), str):
            return f"lacks the string key {key!r}"
    if "subfolder" in table and not isinstance(table["subfolder"], str):
        return "has a non-string subfolder"
    remote = table["source"] not in ("local_dir", "local_file")
    if remote and not _is_commit(table.get("commit")):
        return "has no 40-hex commit"
    if "commit" in table and not _is_commit(table["commit"]):
        return "has a commit that is not 40 hex digits"
    files = table.get("files")
    if not isinstance(files, dict) or not files or not all(_is_sha256(v) for v in files.values()):
        return "has a missing or malformed files table (path = sha256)"
    if table["entry"] not in files:
        return "does not list its entry file in files"
    return None


def find_locked(locked: Mapping[str, LockedPipeline], spec: str, path: Path) -> LockedPipeline:
    if spec in locked:
        return locked[spec]
    raise LockfileError(f"lockfile {path} has no entry for {spec!r}; add it with `safeloader lock {spec} -o {path}`.")


def check_drift(locked: LockedPipeline, manifest: Manifest) -> None:
    """Raise :class:`LockDriftError` if ``manifest`` differs in any way from what ``locked`` pins."""
    differences = []
    for name, want, got in (
        ("source", locked.source_id, manifest.source_id),
        ("repo", locked.repo, manifest.repo),
        ("subfolder", locked.subfolder, manifest.subfolder),
        ("commit", locked.commit, manifest.commit),
        ("entry", locked.entry, manifest.entry),
    ):
        if want != got:
            differences.append(f"{name} {got!r} instead of {want!r}")
    if dict(locked.files) != dict(manifest.files):
        changed = sorted(set(locked.files.items()) ^ set(manifest.files.items()))
        differences.append("files " + ", ".join(sorted({path for path, _ in changed})) + " differ")
    if differences:
        raise LockDriftError(
            f"{manifest.source_id} drifted from the lockfile ({'; '.join(differences)}); "
            "review the change and run `safeloader lock` again if it is intended."
        )
