"""Fuzz the policy loader: arbitrary bytes as a policy file end in a Policy or a PolicyError (a
SafeLoaderError) — never another exception or a hang. The file may ``extends`` itself, a sibling or a
built-in, so inheritance and cycle detection are exercised too.

Under atheris: ``python fuzz/fuzz_policy.py [libFuzzer flags] fuzz/corpus/policy``; without it:
``python fuzz/fuzz_policy.py --smoke 2000`` or ``--smoke-seconds 20``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fuzz_audit import main  # noqa: E402
from run_all import prepare_target  # noqa: E402

from safeloader.errors import SafeLoaderError  # noqa: E402
from safeloader.policy import load_policy, policy_from_mapping  # noqa: E402

MAX_INPUT = 16 * 1024
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-policy-"))
(WORKDIR / "sibling.toml").write_text('[policy]\nname = "sibling"\nextends = "policy.toml"\n')


def load_one(data: bytes) -> None:
    data = data[:MAX_INPUT]
    path = WORKDIR / "policy.toml"
    path.write_bytes(data)
    with contextlib.suppress(SafeLoaderError):
        load_policy(path)
    try:
        mapping = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return
    with contextlib.suppress(SafeLoaderError):
        policy_from_mapping(mapping, origin="fuzz")


if __name__ == "__main__":
    sys.exit(main(prepare_target(load_one, sys.argv[1:]), "policy", sys.argv[1:]))
