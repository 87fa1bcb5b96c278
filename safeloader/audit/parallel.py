"""Auditing many files on several cores: the CLI's ``safeloader audit DIR`` over a directory of pipelines.

Files are independent until the report is assembled, so the entries of a directory are split across forked
processes, each running :func:`~safeloader.audit.api.audit_file` (one parse per file, every pass on it). A
child sends back only data — each result as the JSON the audit cache stores, re-validated field by field on
arrival — never a pickled object. Used only where the caller is known to be single-threaded (the CLI); forking
a process with threads is not safe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from safeloader.errors import AuditError
from safeloader.policy.schema import Policy

if TYPE_CHECKING:
    from safeloader.audit.api import FileResult
    from safeloader.audit.cache import AuditCache

#: Below this many files per process, forking costs more than it saves.
MIN_FILES_PER_JOB = 16


def default_jobs() -> int:
    """The CPUs this process may run on (at most 8)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _audit_share(
    items: Sequence[tuple[str, bytes]], label: str, policy: Policy, cache: AuditCache | None
) -> list[tuple[str, str, str]]:
    """In a child: (relpath, sha256, result as JSON) per file, or ("", "", error message) on an audit error."""
    from safeloader.audit.api import audit_file
    from safeloader.audit.cache import encode_result

    out = []
    for relpath, data in items:
        try:
            result = audit_file(data, relpath, label, policy, cache)
        except AuditError as exc:
            return [("", "", str(exc))]
        document = encode_result(result.sha256, result.analysis, result.restricted)
        out.append((relpath, result.sha256, json.dumps(document)))
    return out


def audit_in_parallel(
    items: Sequence[tuple[str, bytes]], label: str, policy: Policy, cache: AuditCache | None, jobs: int
) -> dict[str, FileResult]:
    """Audit ``items`` (relpath, bytes) on up to ``jobs`` forked processes; serially when that would not pay."""
    from safeloader.audit.api import FileResult, audit_file
    from safeloader.audit.cache import decode_result

    jobs = min(jobs, len(items) // MIN_FILES_PER_JOB)
    if jobs <= 1:
        return {relpath: audit_file(data, relpath, label, policy, cache) for relpath, data in items}
    import multiprocessing

    shares = [list(items[index::jobs]) for index in range(jobs)]
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        answers = pool.starmap(_audit_share, [(share, label, policy, cache) for share in shares])
    results: dict[str, FileResult] = {}
    expected = dict(items)
    for answer in answers:
        for relpath, sha256, text in answer:
            if not relpath:
                raise AuditError(text)
            decoded = decode_result(json.loads(text), sha256, relpath)
            if decoded is None or relpath not in expected:
                raise AuditError(f"{label}: the audit of {relpath} came back malformed; run it again with one job.")
            results[relpath] = FileResult(sha256, *decoded)
    if set(results) != set(expected):
        raise AuditError(f"{label}: the parallel audit lost files; run it again with one job.")
    return results
