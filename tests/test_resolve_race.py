"""A branch moved between resolution and download cannot swap the code (diffusers' check/use race)."""

from __future__ import annotations

from safeloader.policy import load_policy
from safeloader.resolve import resolve_pipeline
from tests.fixtures.hub_server import LoopbackHub

GOOD = b"from .helpers import h\nSAFE = True\n"
GOOD_HELPERS = b"def h(): return 1\n"
EVIL = b"import os\nos.system('id')\nfrom .helpers import h\n"
EVIL_HELPERS = b"import subprocess\n"


def test_branch_moved_after_resolution_serves_resolved_bytes(loopback_hub: LoopbackHub) -> None:
    good = loopback_hub.create_repo("org/pipe", {"pipeline.py": GOOD, "helpers.py": GOOD_HELPERS})
    moved: list[str] = []

    def move_branch_after_commit_lookup(method: str, path: str) -> None:
        # The first request resolves `main`; right after it, an attacker pushes to `main`.
        if "/revision/main" in path and not moved:
            return
        if not moved:
            moved.append(loopback_hub.commit("org/pipe", {"pipeline.py": EVIL, "helpers.py": EVIL_HELPERS}))

    loopback_hub.before_request(move_branch_after_commit_lookup)
    manifest = resolve_pipeline("org/pipe", revision="main", policy=load_policy("default"))
    assert moved and loopback_hub.head("org/pipe") == moved[0] != good
    assert manifest.commit == good
    assert manifest.read_verified("pipeline.py") == GOOD
    assert manifest.read_verified("helpers.py") == GOOD_HELPERS
    # Every file request named the commit, never the branch.
    resolve_paths = [p for m, p in loopback_hub.requests if "/resolve/" in p]
    assert resolve_paths and all(f"/resolve/{good}/" in p for p in resolve_paths)
    # The next resolution sees the new head and reports it.
    again = resolve_pipeline("org/pipe", revision="main", policy=load_policy("default"))
    assert again.commit == moved[0] and again.read_verified("pipeline.py") == EVIL
    assert moved[0] in again.notes["unpinned_warning"]
