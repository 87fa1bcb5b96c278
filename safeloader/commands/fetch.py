"""``safeloader fetch``: resolve, download and verify a pipeline, then show exactly which bytes would run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safeloader.policy import load_policy
from safeloader.resolve import Manifest, resolve_pipeline


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that resolves a pipeline shares."""
    parser.add_argument("--revision", default=None, help="branch, tag or 40-hex commit (diffusers' custom_revision)")
    parser.add_argument("--policy", default=None, help="built-in policy name or path to a policy TOML")
    parser.add_argument("--model-repo", default=None, help="model repo whose <SPEC>.py holds the pipeline")
    parser.add_argument("--model-revision", default=None, help="revision of --model-repo")
    parser.add_argument("--lockfile", type=Path, default=None, help="refuse anything that differs from this lockfile")
    parser.add_argument("--offline", action="store_true", help="use only the safeloader cache (like HF_HUB_OFFLINE=1)")


def resolve_from_args(args: argparse.Namespace, spec: str) -> Manifest:
    return resolve_pipeline(
        spec,
        revision=args.revision,
        policy=load_policy(args.policy),
        model_repo=args.model_repo,
        model_revision=args.model_revision,
        local_files_only=args.offline,
        lockfile=args.lockfile,
    )


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """The ``--json`` document: the required keys first, then everything a reviewer needs."""
    return {
        "source": manifest.source,
        "repo": manifest.repo,
        "commit": manifest.commit,
        "files": dict(sorted(manifest.files.items())),
        "source_id": manifest.source_id,
        "repo_type": manifest.repo_type,
        "endpoint": manifest.endpoint,
        "subfolder": manifest.subfolder,
        "requested_revision": manifest.requested_revision,
        "pinned": manifest.pinned,
        "entry": manifest.entry,
        "cache_paths": {rel: str(manifest.blob_path(rel)) for rel in sorted(manifest.files)},
        "signature_sha256": manifest.signature_sha256,
        "fetched_at": manifest.fetched_at,
        "notes": dict(manifest.notes),
    }


def render_text(manifest: Manifest) -> str:
    lines = [
        f"source:   {manifest.source} {manifest.source_id}",
        f"repo:     {manifest.repo}" + (f" ({manifest.repo_type})" if manifest.repo_type else ""),
    ]
    if manifest.endpoint:
        lines.append(f"endpoint: {manifest.endpoint}")
    if manifest.subfolder:
        lines.append(f"folder:   {manifest.subfolder}")
    lines.append(f"commit:   {manifest.commit or '(local files)'}")
    if manifest.requested_revision and manifest.requested_revision != manifest.commit:
        lines.append(f"revision: {manifest.requested_revision} (not pinned)")
    lines.append(f"entry:    {manifest.entry}")
    lines.append("files (sha256, cached copy — read these before running anything):")
    for rel in sorted(manifest.files):
        lines.append(f"  {rel}")
        lines.append(f"    sha256 {manifest.files[rel]}")
        lines.append(f"    {manifest.blob_path(rel)}")
    for key, value in sorted(manifest.notes.items()):
        lines.append(f"note: {key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    manifest = resolve_from_args(args, args.spec)
    if args.json:
        print(json.dumps(manifest_summary(manifest), indent=2))
    else:
        print(render_text(manifest))
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fetch", help="resolve, download and verify a custom pipeline, and print its files and hashes"
    )
    parser.add_argument("spec", help="custom_pipeline value: directory, .py file, org/name or community name")
    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(run=run)
