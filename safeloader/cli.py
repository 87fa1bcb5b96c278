"""The ``safeloader`` command: a thin dispatcher over :mod:`safeloader.commands`.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from safeloader.display import printable
from safeloader.errors import SafeLoaderError

# Module names under safeloader.commands, in the order `--help` lists them.
COMMANDS = ("demo", "fetch", "lock", "keygen", "sign", "audit", "doctor")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's (so ``safeloader audit`` never imports the resolver,
    huggingface_hub or the verifier that other subcommands need: start-up is part of every audit's time)."""
    parser = argparse.ArgumentParser(
        prog="safeloader",
        description="Load diffusers custom pipelines from untrusted sources: pinned, verified, audited, sandboxed.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"safeloader.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"safeloader.commands.{name}":
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="safeloader: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args))
    except SafeLoaderError as exc:
        print("safeloader: error: " + printable(exc, keep="\n"), file=sys.stderr)
        return 2
    except OSError as exc:
        # Writing an output file (lockfile, key, signature, report) the user pointed somewhere unwritable.
        where = f" ({exc.filename})" if exc.filename else ""
        message = printable(f"{exc.strerror or exc}{where}")
        print(f"safeloader: error: {message}; choose a path you can write to.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
