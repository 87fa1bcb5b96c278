"""``safeloader keygen``: create an Ed25519 key pair for signing pipelines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from safeloader.errors import SignatureError
from safeloader.verify.signatures import generate_keypair


def run(args: argparse.Namespace) -> int:
    prefix = Path(args.output)
    for suffix in (".pem", ".pub"):
        existing = prefix.with_name(prefix.name + suffix)
        if existing.exists() and not args.force:
            raise SignatureError(f"{existing} already exists; choose another -o prefix or pass --force to replace it.")
    private_path, public_path, key = generate_keypair(prefix)
    print(f"private key: {private_path} (keep it secret)")
    print(f"public key:  {public_path}")
    print("add this to your policy's [sources] trusted_keys:")
    print(key)
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("keygen", help="create an Ed25519 key pair (KEYPREFIX.pem and KEYPREFIX.pub)")
    parser.add_argument("-o", "--output", required=True, metavar="KEYPREFIX", help="path prefix of the key files")
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")
    parser.set_defaults(run=run)
