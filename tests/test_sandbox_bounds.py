"""Memory, stack, processes, disk and the log are bounded for every kind of use; the caller stays untouched.

The heavy tests run *inside* the sandboxed worker under a 1 GiB limit, so they die early: they never use
more than about 1 GiB of the machine's memory, and nothing of their tmpfs reaches the disk.
"""

from __future__ import annotations

import json
import platform
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safeloader import DiffusionPipeline
from safeloader.cli import main as cli_main
from safeloader.errors import SandboxError, WorkerCrashed
from safeloader.policy import load_policy, with_overrides
from safeloader.policy.schema import SandboxPolicy
from safeloader.sandbox import cgroups, resources, syscalls
from safeloader.sandbox.spawn import SandboxedWorker, spawn_worker

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the sandbox is Linux-only")

PRELUDE = "from safeloader.sandbox.inworker import finish_confinement; finish_confinement()\n"
GIB = 1 << 30
LIMITED = SandboxPolicy(memory_limit_mb=1024, threads=1)
needs_cgroup = pytest.mark.skipif(
    cgroups.unavailable() is not None, reason=f"no memory cgroup: {cgroups.unavailable()}"
)


def run_snippet(
    code: str, *args: str, policy: SandboxPolicy = LIMITED, timeout: float = 60
) -> tuple[int | None, str, str | None, SandboxedWorker]:
    """Run ``code`` confined; returns (exit code, its output, why the kernel ended it, the closed worker)."""
    worker = spawn_worker(policy, argv=["-c", PRELUDE + code, *args])
    try:
        returncode = worker.wait(timeout)
        return returncode, worker.stderr_tail(200), worker.exit_cause(), worker
    finally:
        worker.close()


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def caller_with_unlimited_stack() -> Iterator[None]:
    """The caller runs as after ``ulimit -s unlimited``: the worker must not inherit it."""
    before = resource.getrlimit(resource.RLIMIT_STACK)
    try:
        resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pytest.skip("cannot raise this process's stack limit to unlimited")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_STACK, before)


def test_every_rlimit_is_set_explicitly(caller_with_unlimited_stack: None) -> None:
    names = [name for name in dir(resource) if name.startswith("RLIMIT_") and name != "RLIMIT_OFILE"]
    code = (
        "import json, resource, sys\n"
        "print('LIMITS', json.dumps({n: resource.getrlimit(getattr(resource, n)) for n in sys.argv[1:]}))\n"
    )
    rc, out, _, _ = run_snippet(code, *names)
    assert rc == 0, out
    seen = json.loads(out.split("LIMITS ", 1)[1].splitlines()[0])
    expected = resources.rlimits(LIMITED)
    assert set(expected) == set(names)  # no limit left to inheritance
    for name in names:
        assert seen[name] == [expected[name], expected[name]], name
    assert seen["RLIMIT_STACK"] == [8 << 20, 8 << 20]


HOG_PIPELINE = """
import mmap

from diffusers import DiffusionPipeline


class HogPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self, gib: int = 2):
        shared = mmap.mmap(-1, gib << 30)  # MAP_SHARED: shared memory, which RLIMIT_DATA does not count
        chunk = b"x" * (64 << 20)
        for offset in range(0, gib << 30, len(chunk)):
            shared[offset : offset + len(chunk)] = chunk
        return "FILLED"
"""


@needs_cgroup
def test_two_gib_of_shared_memory_kill_the_worker_and_the_caller_is_told_why(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    code = tmp_path / "hog"
    code.mkdir()
    (code / "pipeline.py").write_text(HOG_PIPELINE)
    policy = with_overrides(
        load_policy("default"), sandbox={"memory_limit_mb": 1024, "threads": 1}, audit={"mode": "warn"}
    )
    pipe: Any = DiffusionPipeline.from_pretrained(
        str(tiny_model_dir), custom_pipeline=str(code), trust_remote_code=True, policy=policy
    )
    group_dir = Path(pipe.safeloader.sandbox.facts["cgroup"]["memory_dir"])
    assert (group_dir / "memory.limit_in_bytes").read_text().strip() == str(GIB) or group_dir.joinpath(
        "memory.max"
    ).exists()
    worker_pid = pipe.safeloader.sandbox.facts["worker_pid"]
    assert Path(f"/proc/{worker_pid}/oom_score_adj").read_text().strip() == "1000"  # the worker, not its launcher
    rss_before = _rss_kib()
    with pytest.raises(WorkerCrashed) as info:
        pipe(gib=2)
    message = str(info.value)
    assert "SIGKILL" in message and "memory cgroup limit of 1024 MiB" in message, message
    assert _rss_kib() - rss_before < 100 * 1024  # the caller did not absorb the worker's memory
    pipe.close()
    assert not group_dir.exists()  # the group is removed with the worker


def test_two_gib_of_stack_fail(caller_with_unlimited_stack: None) -> None:
    code = r"""
import sys, threading
threading.stack_size(2 << 30)  # a 2 GiB stack for one thread
def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)
def run():
    print("THREAD_RAN", deep(10 ** 6), flush=True)
try:
    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
except (RuntimeError, MemoryError) as exc:
    print("THREAD_REFUSED", type(exc).__name__, flush=True)
threading.stack_size(0)
# The main thread: C recursion (repr of a nested list) that would need hundreds of MiB of stack.
sys.setrecursionlimit(10 ** 8)
nested = []
for _ in range(10 ** 6):
    nested = [nested]
print("MAIN_STARTED", flush=True)
print("MAIN_FINISHED", len(repr(nested)), flush=True)
"""
    rc, out, cause, _ = run_snippet(code)
    assert "THREAD_REFUSED" in out and "THREAD_RAN" not in out, out
    assert "MAIN_STARTED" in out and "MAIN_FINISHED" not in out, out
    assert rc == -signal.SIGSEGV, out
    assert cause is not None and "RLIMIT_STACK (8 MiB)" in cause


def test_tmpdir_and_home_are_one_capped_tmpfs() -> None:
    code = r"""
import os, tempfile
for where in (tempfile.gettempdir(), os.environ["HOME"], tempfile.gettempdir()):
    fd, path = tempfile.mkstemp(dir=where)
    try:
        os.posix_fallocate(fd, 0, 3 << 30)
        print("FALLOCATED", where, flush=True)
    except OSError as exc:
        print("REFUSED", exc.errno, flush=True)
    finally:
        os.close(fd)
        os.unlink(path)
import shutil
with open(os.path.join(tempfile.gettempdir(), "a"), "w") as f:
    f.write("copied with its metadata")
shutil.copy2(os.path.join(tempfile.gettempdir(), "a"), os.path.join(os.environ["HOME"], "b"))  # xattrs: EPERM, ok
print("COPY2", open(os.path.join(os.environ["HOME"], "b")).read())
st = os.statvfs(tempfile.gettempdir())
print("TMPFS_BYTES", st.f_blocks * st.f_frsize)
"""
    rc, out, _, worker = run_snippet(code)
    assert rc == 0, out
    assert "FALLOCATED" not in out and out.count("REFUSED 28") == 3, out  # ENOSPC, three times
    assert int(out.split("TMPFS_BYTES ")[1].split()[0]) == 1024 << 20
    assert worker.report.facts["tmp_size_mb"] == 1024
    assert "COPY2 copied with its metadata" in out


def test_a_flood_of_output_does_not_hide_the_real_error_nor_reach_the_disk() -> None:
    code = r"""
import sys
line = "noise " * 20 + "\n"
for _ in range((100 << 20) // len(line)):
    sys.stderr.write(line)
raise ValueError("the real error is this one")
"""
    rss_before = _rss_kib()
    worker = spawn_worker(LIMITED, argv=["-c", PRELUDE + code])
    try:
        private = worker._private_dir
        assert worker.wait(120) == 1
        tail = worker.stderr_tail(3)
        on_disk = sum(p.stat().st_size for p in private.rglob("*") if p.is_file())
    finally:
        worker.close()
    assert tail.splitlines()[-1] == "ValueError: the real error is this one"
    assert on_disk < 1 << 20  # the 100 MB went through a pipe into a 64 KiB ring, not to a file
    assert _rss_kib() - rss_before < 50 * 1024


def test_unknown_and_new_syscalls_fail_by_number_and_x32_kills() -> None:
    code = r"""
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
results = {}
calls = (("statmount", 457), ("listmount", 458), ("mseal", 462), ("unassigned", 1000), ("setuid", 105), ("chown", 92))
for name, nr in calls:
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    results[name] = (ret, ctypes.get_errno())
print("RESULTS", json.dumps(results), flush=True)
libc.syscall(ctypes.c_long(0x40000000 | 39))  # x32 getpid
print("X32_SURVIVED", flush=True)
"""
    if platform.machine() != "x86_64":
        pytest.skip("syscall numbers in this test are x86_64's")
    rc, out, _, _ = run_snippet(code)
    results = json.loads(out.split("RESULTS ", 1)[1].splitlines()[0])
    for name, (ret, err) in results.items():
        expected = 1 if name == "chown" else 38  # chown: EPERM (refused quietly), everything else: ENOSYS
        assert (ret, err) == (-1, expected), f"{name}: returned {ret}, errno {err}"
    assert "X32_SURVIVED" not in out and rc == -signal.SIGSYS, out


def test_the_allow_list_never_names_a_refused_call() -> None:
    assert set(syscalls.MEASURED) <= set(syscalls.ALLOWED)
    assert not set(syscalls.ALLOWED) & {*syscalls.DENIED_EPERM, *syscalls.REFUSED_QUIETLY}
    assert not set(syscalls.ALLOWED) & {"clone3", "listmount", "statmount", "io_uring_setup", "socket"}
    assert 150 < syscalls.allowed_count(False) < syscalls.allowed_count(True) < 260


def test_doctor_json_shows_the_bounds(capsys: pytest.CaptureFixture[str]) -> None:
    cli_main(["doctor", "--json"])
    facts = json.loads(capsys.readouterr().out)["facts"]
    assert facts["seccomp_allowed_syscalls"] == syscalls.allowed_count(False)
    assert facts["tmp_size_mb"] == 1024 and "tmpfs" in facts["tmp_bound"]
    assert "RLIMIT_DATA" in facts["memory_bound"] and "RLIMIT_NPROC" in facts["process_bound"]
    if cgroups.unavailable() is None:
        assert "cgroup v" in facts["memory_bound"] and "pids.max" in facts["process_bound"]


@needs_cgroup
def test_groups_left_by_a_dead_caller_are_swept_and_a_closed_worker_leaves_none() -> None:
    hierarchy, _ = cgroups.detect()
    assert hierarchy is not None
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    stale = [hierarchy.memory_parent / f"{cgroups.GROUP_PREFIX}{dead_pid}-0badc0de"]
    stale.append(hierarchy.pids_parent / stale[0].name)
    for directory in dict.fromkeys(stale):
        directory.mkdir()
    group = cgroups.create(256 << 20, 16)
    try:
        assert not any(directory.exists() for directory in stale)
        assert group.memory_dir.is_dir() and group.pids_dir.is_dir()
    finally:
        group.remove()
    assert not group.memory_dir.exists() and not group.pids_dir.exists()


def _group_the_kernel_refuses(tmp_path: Path) -> cgroups.WorkerCgroup:
    """A worker group whose cgroup.procs cannot be written: the move into it fails as a refused one would."""
    gone = tmp_path / "removed-group"
    return cgroups.WorkerCgroup(2, gone, gone, 1024 << 20, 64)


def test_a_refused_move_into_an_optional_cgroup_turns_the_layer_off_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cgroups, "create", lambda memory_bytes, pids_max: _group_the_kernel_refuses(tmp_path))
    policy = SandboxPolicy(memory_limit_mb=1024, threads=1, require=("environment", "privileges", "processes"))

    returncode, output, _cause, worker = run_snippet("print('ran')", policy=policy)

    assert returncode == 0 and "ran" in output
    layer = next(status for status in worker.report.layers if status.layer == "cgroup")
    assert not layer.active and "joining the worker's cgroup failed" in layer.detail
    assert "cgroup v" not in worker.report.facts["memory_bound"]
    assert worker.report.facts["cgroup"] is None
    assert "SANDBOX LAYER OFF: 'cgroup'" in caplog.text


def test_a_refused_move_into_a_required_cgroup_refuses_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroups, "create", lambda memory_bytes, pids_max: _group_the_kernel_refuses(tmp_path))
    policy = SandboxPolicy(memory_limit_mb=1024, threads=1, require=("environment", "privileges", "cgroup"))

    with pytest.raises(SandboxError, match="'cgroup' is required by the policy but joining the worker's cgroup"):
        spawn_worker(policy, argv=["-c", PRELUDE + "print('never')"])
