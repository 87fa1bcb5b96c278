"""Every fuzz target's smoke mode runs in CI: each seed (past findings included) is replayed, then mutations."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
TARGETS = sorted(path.stem for path in FUZZ.glob("fuzz_*.py"))
#: Per target; five targets stay well under 40 s together.
SMOKE_SECONDS = 5
#: Start-up (torch for the IPC target) plus the slowest single input the smoke loop lets finish.
GRACE_SECONDS = 60


def corpus_dir(target: str) -> Path:
    """The runner's own rule for where a target's seeds live."""
    spec = importlib.util.spec_from_file_location("fuzz_run_all", FUZZ / "run_all.py")
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return Path(runner.corpus_dir(FUZZ / f"{target}.py"))


def test_every_target_has_a_seed_corpus() -> None:
    assert {"fuzz_ipc_decode", "fuzz_lockfile", "fuzz_signature"} <= set(TARGETS)
    for target in TARGETS:
        corpus = corpus_dir(target)
        assert corpus.is_dir() and any(corpus.iterdir()), f"{target} has no seed corpus in {corpus}"


@pytest.mark.parametrize("target", TARGETS)
def test_smoke_mode_finds_nothing(target: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(FUZZ / f"{target}.py"), "--smoke-seconds", str(SMOKE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=SMOKE_SECONDS + GRACE_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    match = re.search(r"(\d+) inputs, no crash", completed.stdout)
    assert match is not None, completed.stdout
    seeds = sum(1 for path in corpus_dir(target).iterdir() if path.is_file())
    assert int(match.group(1)) >= seeds, f"only {match.group(1)} of {seeds} seeds were replayed"


def test_a_hanging_input_is_stopped_and_reported() -> None:
    # In a child process: the guard uses SIGALRM, which pytest's own timeout may use in this one.
    program = f"""
import sys, time
sys.path.insert(0, {str(FUZZ)!r})
import run_all
run_all.INPUT_SECONDS = 0.2
guarded = run_all.prepare_target(lambda data: time.sleep(30), ["--smoke-seconds", "1"])
started = time.monotonic()
try:
    guarded(b"x")
except run_all.InputTimedOut:
    print(f"stopped after {{time.monotonic() - started:.2f}} s")
"""
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=20, check=False)
    match = re.search(r"stopped after ([0-9.]+) s", completed.stdout)
    assert match is not None, completed.stdout + completed.stderr
    assert float(match.group(1)) < 2


def test_runner_runs_a_named_target() -> None:
    completed = subprocess.run(
        [sys.executable, str(FUZZ / "run_all.py"), "--seconds", "1", "fuzz_lockfile"],
        capture_output=True,
        text=True,
        timeout=GRACE_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert re.search(r"fuzz fuzz_lockfile: ok in [0-9.]+ s", completed.stdout), completed.stdout
