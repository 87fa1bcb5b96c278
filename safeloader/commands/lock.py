"""``safeloader lock``: record the exact commit and file hashes of pipelines in a lockfile."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from safeloader.commands.fetch import resolve_from_args
from safeloader.resolve.cache import atomic_write
from safeloader.verify.lockfile import DEFAULT_LOCKFILE, locked_from_manifest, render_lockfile


def run(args: argparse.Namespace) -> int:
    args.lockfile = None
    args.offline = False
    locked = [locked_from_manifest(spec, resolve_from_args(args, spec)) for spec in args.specs]
    output = Path(args.output)
    atomic_write(output, render_lockfile(locked))
    for entry in locked:
        print(f"locked {entry.spec} at {entry.commit or '(local files)'} ({len(entry.files)} files)")
    print(f"wrote {output}")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("lock", help="write a lockfile pinning pipelines to a commit and file hashes")
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="custom_pipeline values to lock")
    parser.add_argument(
        "-o", "--output", default=DEFAULT_LOCKFILE, help=f"lockfile to write (default {DEFAULT_LOCKFILE})"
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit for every SPEC")
    parser.add_argument("--policy", default=None, help="built-in policy name or path to a policy TOML")
    parser.add_argument("--model-repo", default=None, help="model repo whose <SPEC>.py holds the pipeline")
    parser.add_argument("--model-revision", default=None, help="revision of --model-repo")
    parser.set_defaults(run=run)
