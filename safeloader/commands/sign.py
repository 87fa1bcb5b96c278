"""``safeloader sign``: sign a resolved pipeline and write its ``safeloader.sig`` file.

The file goes where the resolver looks for it (see :mod:`safeloader.verify.signatures`): by default into a
local pipeline's directory, else ``./safeloader.sig`` to be committed at the root of the repository (or the
community release folder). Existing records of other keys or entries in that file are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from safeloader.commands.fetch import add_spec_arguments, resolve_from_args
from safeloader.resolve.cache import atomic_write
from safeloader.verify.signatures import SIGNATURE_FILE, add_signature, load_private_key, sign_manifest


def run(args: argparse.Namespace) -> int:
    manifest = resolve_from_args(args, args.spec)
    if args.output is not None:
        output = Path(args.output)
    elif manifest.source in ("local_dir", "local_file"):
        output = Path(manifest.repo) / SIGNATURE_FILE
    else:
        output = Path(SIGNATURE_FILE)
    record = sign_manifest(manifest, load_private_key(Path(args.key)))
    existing = output.read_bytes() if output.is_file() else None
    atomic_write(output, add_signature(existing, record))
    print(f"signed {manifest.source_id} ({manifest.entry}, {len(manifest.files)} files) with {record['key_id']}")
    print(f"wrote {output}" + ("" if manifest.source.startswith("local") else "; commit it at the pipeline root"))
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("sign", help=f"sign a pipeline's code and write {SIGNATURE_FILE}")
    parser.add_argument("spec", help="custom_pipeline value to sign")
    parser.add_argument("--key", required=True, help="Ed25519 private key (PEM) from `safeloader keygen`")
    parser.add_argument("-o", "--output", default=None, help=f"signature file to write (default: {SIGNATURE_FILE})")
    add_spec_arguments(parser)
    parser.set_defaults(run=run)
