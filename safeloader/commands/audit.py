"""``safeloader audit SPEC…``: audit local files, directories, Hub repos or community pipelines; report.

Exit codes: 0 nothing at or above fail-on, 1 findings at or above fail-on, 2 the audit could not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from safeloader.audit.api import audit_manifest, audit_path
from safeloader.audit.cache import AuditCache
from safeloader.audit.formats import FORMATS
from safeloader.audit.model import AuditReport
from safeloader.audit.parallel import default_jobs
from safeloader.errors import AuditError, CacheError
from safeloader.policy import SEVERITIES, load_policy, with_overrides
from safeloader.policy.schema import Policy

log = logging.getLogger("safeloader.audit")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="statically audit pipeline code under a policy and report findings",
        description="Audit pipeline code without running it. SPEC is a local .py file or directory, a Hub repo id "
        "(org/name) or a community pipeline name. Exit status: 0 clean, 1 findings at or above --fail-on, "
        "2 the audit could not run.",
    )
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="local path, Hub repo id or community name")
    parser.add_argument("--revision", help="branch, tag or 40-hex commit for Hub specs")
    parser.add_argument("--policy", help="built-in policy name (default, strict, permissive) or path to a .toml")
    parser.add_argument("--format", choices=sorted(FORMATS), default="text", help="report format (default: text)")
    parser.add_argument("-o", "--output", type=Path, help="write the report to this file instead of stdout")
    parser.add_argument("--fail-on", choices=SEVERITIES, help="lowest severity that fails (overrides the policy)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="processes for a large directory (default: one per available CPU, at most 8; 1: no subprocesses)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="audit every file afresh: neither read nor write the audit cache under $SAFELOADER_CACHE",
    )
    parser.set_defaults(run=run)


def _audit_spec(spec: str, policy: Policy, revision: str | None, cache: AuditCache | None, jobs: int) -> AuditReport:
    if Path(spec).exists():
        return audit_path(Path(spec), policy, cache, jobs=jobs)
    try:
        from safeloader.resolve import resolve_pipeline
    except ImportError as exc:
        raise AuditError(
            f"{spec} is not a local path and this safeloader has no resolver for Hub specs; give a local path."
        ) from exc
    manifest = resolve_pipeline(spec, revision=revision, policy=policy)
    return audit_manifest(manifest, policy, cache)


def _write_atomically(path: Path, text: str) -> None:
    directory = path.resolve().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise CacheError(f"cannot write the report to {path} ({exc.strerror}); choose a writable path.") from exc


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    if args.fail_on:
        policy = with_overrides(policy, audit={"fail_on": args.fail_on})
    # The cache key binds the policy: build it after --fail-on changed the policy.
    cache = None if args.no_cache else AuditCache(policy)
    jobs = args.jobs if args.jobs > 0 else default_jobs()
    reports = [_audit_spec(spec, policy, args.revision, cache, jobs) for spec in args.specs]
    document = FORMATS[args.format](reports)
    if args.output is not None:
        _write_atomically(args.output, document)
    else:
        sys.stdout.write(document)
        sys.stdout.flush()
    blocking = sum(len(report.blocking) for report in reports)
    for report in reports:
        if args.format != "text" or args.output is not None:
            log.info(
                "%s: %s, %d finding(s), %d at or above %s",
                report.label,
                report.verdict,
                len(report.findings),
                len(report.blocking),
                report.fail_on,
            )
    return 1 if blocking else 0
