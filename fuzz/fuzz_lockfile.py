"""Fuzz the lockfile parser: arbitrary bytes as ``safeloader.lock`` end in pinned pipelines or a SafeLoaderError.

Beyond "no other exception", every parsed lockfile must hold together: each entry verifies against a manifest
built from itself (no drift), through the real :func:`~safeloader.verify.verify_manifest`; and rendering the
parsed entries and parsing them again is stable (render → parse → render gives the same bytes).

Under atheris: ``python fuzz/fuzz_lockfile.py [libFuzzer flags] fuzz/corpus/lockfile``. Without it:
``python fuzz/fuzz_lockfile.py --smoke 2000`` or ``--smoke-seconds 20``.
``--write-corpus`` adds missing seeds to the seed corpus with the real writer.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from fuzz_audit import main  # noqa: E402
from run_all import prepare_target  # noqa: E402

from safeloader.errors import LockDriftError, SafeLoaderError  # noqa: E402
from safeloader.policy import load_policy  # noqa: E402
from safeloader.resolve.manifest import Manifest, SourceKind  # noqa: E402
from safeloader.verify import LockedPipeline, read_lockfile, render_lockfile, verify_manifest  # noqa: E402
from safeloader.verify.lockfile import check_drift, find_locked  # noqa: E402

MAX_INPUT = 64 * 1024
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-lockfile-"))
LOCKFILE = WORKDIR / "safeloader.lock"
POLICY = load_policy("default")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#: A manifest the fuzzed entries are also checked against (drift or not, never another exception).
OTHER = Manifest(
    source="hub",
    source_id="org/pipe",
    repo="org/pipe",
    repo_type="model",
    requested_revision=COMMIT,
    commit=COMMIT,
    entry="pipeline.py",
    files={"pipeline.py": SHA},
    fetched_at="",
    blob_root=WORKDIR,
)


class Finding(AssertionError):
    """A parsed lockfile contradicts itself (drifts from its own entry, or does not re-render stably)."""


def manifest_of(locked: LockedPipeline) -> Manifest:
    """The manifest a resolve that matches ``locked`` exactly would produce."""
    return Manifest(
        source=cast(SourceKind, locked.source),  # the parser checked it is a string, not which one
        source_id=locked.source_id,
        repo=locked.repo,
        repo_type=locked.repo_type,
        requested_revision=locked.commit,
        commit=locked.commit,
        entry=locked.entry,
        files=dict(locked.files),
        fetched_at="",
        blob_root=WORKDIR,
        subfolder=locked.subfolder,
    )


def parse_one(data: bytes) -> None:
    LOCKFILE.write_bytes(data[:MAX_INPUT])
    try:
        locked = read_lockfile(LOCKFILE)
    except SafeLoaderError:
        return
    for spec, entry in locked.items():
        if find_locked(locked, spec, LOCKFILE) is not entry:
            raise Finding(f"find_locked did not return the entry for {spec!r}")
        try:
            verify_manifest(manifest_of(entry), POLICY, lockfile=LOCKFILE, spec=spec)
        except LockDriftError as exc:
            raise Finding(f"entry {spec!r} drifts from a manifest built from itself: {exc}") from exc
        with contextlib.suppress(LockDriftError):
            check_drift(entry, OTHER)
    rendered = render_lockfile(locked.values())
    LOCKFILE.write_bytes(rendered)
    if render_lockfile(read_lockfile(LOCKFILE).values()) != rendered:
        raise Finding("a parsed lockfile does not render, parse and render again to the same bytes")


# --- seed corpus ------------------------------------------------------------------------------------------


def seed_inputs() -> dict[str, bytes]:
    """Lockfiles written by the real writer, plus edge cases and past findings."""
    hub = LockedPipeline(
        spec="org/pipe",
        source="hub",
        source_id="org/pipe",
        repo="org/pipe",
        repo_type="model",
        subfolder="",
        commit=COMMIT,
        entry="pipeline.py",
        files={"pipeline.py": SHA, "utils/helpers.py": "a" * 64},
    )
    community = LockedPipeline(
        spec="lpw_stable_diffusion",
        source="community",
        source_id="community:lpw_stable_diffusion",
        repo="diffusers/community-pipelines-mirror",
        repo_type="dataset",
        subfolder="v0.42.1",
        commit="f" * 40,
        entry="lpw_stable_diffusion.py",
        files={"lpw_stable_diffusion.py": "b" * 64},
    )
    local = LockedPipeline(
        spec="./my_pipeline",
        source="local_dir",
        source_id="local:/home/me/my_pipeline",
        repo="/home/me/my_pipeline",
        repo_type=None,
        subfolder="",
        commit=None,
        entry="pipeline.py",
        files={"pipeline.py": "c" * 64},
    )
    header = b'version = 1\n[pipelines."x"]\nsource = "local_dir"\nsource_id = "local:/x"\nrepo = "/x"\n'
    tail = b'repo_type = ""\nentry = "p.py"\n[pipelines."x".files]\n"p.py" = "' + b"d" * 64 + b'"\n'
    return {
        "hub.lock": render_lockfile([hub]),
        "community.lock": render_lockfile([community]),
        "local.lock": render_lockfile([local]),
        "three.lock": render_lockfile([hub, community, local]),
        "edge_empty.lock": b"",
        "edge_wrong_version.lock": render_lockfile([hub]).replace(b"version = 1", b'version = "1"'),
        "edge_short_commit.lock": render_lockfile([hub]).replace(COMMIT.encode(), b"0123"),
        "edge_entry_not_in_files.lock": render_lockfile([hub]).replace(b'entry = "pipeline.py"', b'entry = "x.py"'),
        "edge_not_utf8.lock": b"version = 1\n# \xff\xfe\n",
        # Past findings: arrays nested thousands deep raised RecursionError out of tomllib; a local entry's
        # commit was not checked to be a string (and a non-string commit broke the render round trip).
        "finding_deep_array.lock": b"version = 1\nx = " + b"[" * 3000 + b"]" * 3000 + b"\n",
        "finding_deep_inline_table.lock": b"version = 1\nx = " + b"{a = " * 2000 + b"1" + b"}" * 2000 + b"\n",
        "finding_local_commit_not_string.lock": header + b"commit = nan\n" + tail,
    }


def write_corpus() -> None:
    directory = HERE / "corpus" / "lockfile"
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        path = directory / name
        if not path.exists():  # some seeds are random (keys, salts): keep the committed ones stable
            path.write_bytes(data)


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        write_corpus()
        sys.exit(0)
    sys.exit(main(prepare_target(parse_one, sys.argv[1:]), "lockfile", sys.argv[1:]))
