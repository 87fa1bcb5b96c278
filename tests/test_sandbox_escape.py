"""Hostile code inside the sandbox: each test asserts the concrete effect did NOT happen and the caller lives."""

from __future__ import annotations

import json
import os
import platform
import shutil
import site
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeloader.policy.schema import SandboxPolicy
from safeloader.sandbox.spawn import SandboxedWorker, spawn_worker

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the sandbox is Linux-only")

PRELUDE = "from safeloader.sandbox.inworker import finish_confinement; finish_confinement()\n"


def run_snippet(
    code: str, *args: str, policy: SandboxPolicy | None = None, model_dir: Path | None = None, timeout: float = 60
) -> tuple[int | None, str, SandboxedWorker]:
    """Run ``code`` confined; returns (exit code, its output, the closed worker)."""
    worker = spawn_worker(policy or SandboxPolicy(), model_dir=model_dir, argv=["-c", PRELUDE + code, *args])
    try:
        code_ = worker.wait(timeout)
        return code_, worker.stderr_tail(200), worker
    finally:
        worker.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-readable, world-writable directory: only the sandbox (not file modes) keeps the worker out."""
    path = Path(tempfile.mkdtemp(prefix="safeloader-test-open-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_environment_holds_no_credentials_and_home_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws_secret_value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    code = "import os, json; print(json.dumps({'env': dict(os.environ), 'home': os.listdir(os.environ['HOME'])}))"
    rc, out, _ = run_snippet(code)
    assert rc == 0, out
    seen = json.loads(out.strip().splitlines()[-1])
    assert not [name for name in seen["env"] if name.startswith(("HF_", "AWS_"))]
    assert "secret" not in out and "AKIA" not in out
    assert seen["home"] == []


def test_env_allow_refuses_credential_names() -> None:
    from safeloader.errors import SandboxError

    with pytest.raises(SandboxError, match="env_allow"):
        spawn_worker(SandboxPolicy(env_allow=("HF_TOKEN",)), argv=["-c", "pass"])


def test_credential_files_other_models_and_cache_are_unreadable(
    open_dir: Path, tiny_model_copy: Path, isolated_safeloader_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        ".cache/huggingface/token": "hf_token_file_secret",
        ".ssh/id_rsa": "ssh_private_key_secret",
        ".aws/credentials": "aws_credentials_secret",
    }
    for relpath, content in secrets.items():
        target = open_dir / "home" / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o644)
        for parent in target.parents:
            if parent == open_dir:
                break
            parent.chmod(0o755)
    monkeypatch.setenv("HOME", str(open_dir / "home"))
    other_model = open_dir / "other-model"
    shutil.copytree(tiny_model_copy, other_model)
    (isolated_safeloader_cache / "entry").write_text("cache_secret")
    targets = [str(open_dir / "home" / rel) for rel in secrets]
    targets += [str(other_model / "model_index.json"), str(isolated_safeloader_cache / "entry")]
    code = (
        "import sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n        print('READ', open(path).read())\n"
        "    except OSError as exc:\n        print('DENIED', type(exc).__name__, path)\n"
    )
    rc, out, _ = run_snippet(code, *targets)
    assert rc == 0, out
    assert out.count("DENIED") == len(targets), out
    assert "READ" not in out and "_secret" not in out


def _listen_tcp() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    return listener


def _accepted_anything(listener: socket.socket) -> bool:
    try:
        connection, _ = listener.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


def test_tcp_and_http_to_a_loopback_listener_get_nothing() -> None:
    listener = _listen_tcp()
    port = listener.getsockname()[1]
    code = (
        "import socket, sys, urllib.request\nport = int(sys.argv[1])\n"
        "for label, fn in [('tcp', lambda: socket.create_connection(('127.0.0.1', port), timeout=2)),\n"
        "                  ('http', lambda: urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=2))]:\n"
        "    try:\n        fn(); print('CONNECTED', label)\n"
        "    except Exception as exc:\n        print('BLOCKED', label, type(exc).__name__, exc)\n"
    )
    rc, out, _ = run_snippet(code, str(port))
    assert rc == 0, out
    assert "CONNECTED" not in out and out.count("BLOCKED") == 2
    assert not _accepted_anything(listener)
    listener.close()


def test_path_and_abstract_unix_sockets_get_nothing(open_dir: Path) -> None:
    path_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path_listener.bind(str(open_dir / "sock"))
    (open_dir / "sock").chmod(0o777)
    abstract_name = f"\0safeloader-test-{os.getpid()}-{threading.get_ident()}"
    abstract_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_listener.bind(abstract_name)
    for listener in (path_listener, abstract_listener):
        listener.listen(4)
        listener.settimeout(0.5)
    code = (
        "import socket, sys\n"
        "for address in sys.argv[1:]:\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(address.replace('@', '\\0', 1))\n"
        "        print('CONNECTED', address)\n"
        "    except OSError as exc:\n        print('BLOCKED', type(exc).__name__)\n"
        "try:\n    socket.socketpair(); print('SOCKETPAIR')\nexcept OSError:\n    print('BLOCKED socketpair')\n"
    )
    rc, out, _ = run_snippet(code, str(open_dir / "sock"), "@" + abstract_name[1:])
    assert rc == 0, out
    assert "CONNECTED" not in out and "SOCKETPAIR" not in out and out.count("BLOCKED") == 3
    assert not _accepted_anything(path_listener) and not _accepted_anything(abstract_listener)


def test_subprocess_system_and_fork_spray_have_no_effect(open_dir: Path) -> None:
    marker = open_dir / "pwned"
    code = (
        "import os, subprocess, sys\nmarker = sys.argv[1]\n"
        "try:\n    subprocess.run(['/usr/bin/touch', marker]); print('RAN')\n"
        "except OSError as exc:\n    print('SUBPROCESS', type(exc).__name__)\n"
        "print('SYSTEM', os.system('touch ' + marker))\n"
        "forks = 0\nfor _ in range(50):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        continue\n"
        "    if pid == 0:\n        open(marker, 'w').close(); os._exit(0)\n"
        "    forks += 1\nprint('FORKS', forks)\n"
    )
    rc, out, _ = run_snippet(code, str(marker))
    assert rc == 0, out
    assert "SUBPROCESS PermissionError" in out and "RAN" not in out
    assert "SYSTEM 0" not in out and "FORKS 0" in out
    assert not marker.exists()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="raw syscall numbers are x86_64's")
def test_denied_syscalls_fail_through_ctypes() -> None:
    calls = {  # name: (number, args)
        "unshare(CLONE_NEWUSER)": (272, [0x10000000]),
        "ptrace(PTRACE_ATTACH, 1)": (101, [16, 1, 0, 0]),
        "mount": (165, [0, 0, 0, 0, 0]),
        "bpf": (321, [0, 0, 0]),
        "keyctl": (250, [0, 0, 0]),
        "perf_event_open": (298, [0, 0, -1, -1, 0]),
        "io_uring_setup": (425, [1, 0]),
        "userfaultfd": (323, [0]),
        "setns": (308, [0, 0]),
        "execve": (59, [0, 0, 0]),
        "clone(fork)": (56, [17, 0, 0, 0, 0]),
        "clone3": (435, [0, 0]),
        "socket(AF_NETLINK)": (41, [16, 3, 0]),
        "process_vm_readv": (310, [1, 0, 0, 0, 0, 0]),
    }
    code = (
        "import ctypes, json, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nresults = {}\n"
        "for name, (nr, args) in json.loads(sys.argv[1]).items():\n"
        "    ret = libc.syscall(nr, *[ctypes.c_long(a) for a in args])\n"
        "    results[name] = (ret, ctypes.get_errno())\n"
        "print(json.dumps(results))\n"
    )
    rc, out, _ = run_snippet(code, json.dumps(calls))
    assert rc == 0, out
    results = json.loads(out.strip().splitlines()[-1])
    for name, (ret, err) in results.items():
        assert ret == -1, f"{name} succeeded inside the sandbox"
        assert err == (38 if name == "clone3" else 1), f"{name}: errno {err}"


def test_memory_hog_fails_inside_and_caller_is_fine() -> None:
    code = "try:\n    hog = bytearray(1 << 30); print('ALLOCATED')\nexcept MemoryError:\n    print('MEMORYERROR')\n"
    rc, out, _ = run_snippet(code, policy=SandboxPolicy(memory_limit_mb=256))
    assert rc == 0, out
    assert "MEMORYERROR" in out and "ALLOCATED" not in out


def _processes_of_uid(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.append(int(entry.name))
    return found


def test_endless_loop_is_killed_with_no_orphan() -> None:
    worker = spawn_worker(SandboxPolicy(), argv=["-c", PRELUDE + "while True:\n    pass\n"])
    try:
        uid = int(worker.report.facts["host_uid"])
        assert worker.wait(0.5) is None
        assert _processes_of_uid(uid)
        worker.kill()
        assert worker.poll() is not None
        assert _processes_of_uid(uid) == []
    finally:
        worker.close()


def test_signalling_and_reading_the_caller_fails() -> None:
    code = (
        "import os, signal, sys\ncaller = int(sys.argv[1])\n"
        "for label, fn in [('kill', lambda: os.kill(caller, signal.SIGKILL)), ('killall', lambda: os.kill(-1, 0)),\n"
        "                  ('environ', lambda: open(f'/proc/{caller}/environ', 'rb').read()),\n"
        "                  ('mem', lambda: open(f'/proc/{caller}/mem', 'rb').read(1))]:\n"
        "    try:\n        fn(); print('DID', label)\n"
        "    except OSError as exc:\n        print('BLOCKED', label, type(exc).__name__)\n"
    )
    rc, out, _ = run_snippet(code, str(os.getpid()))
    assert rc == 0, out
    assert "DID kill" not in out and "DID environ" not in out and "DID mem" not in out
    assert out.count("BLOCKED") >= 3


def test_writing_site_packages_and_the_model_fails(tiny_model_copy: Path) -> None:
    site_target = Path(site.getsitepackages()[0]) / "safeloader_sandbox_test_evil.pth"
    index = tiny_model_copy / "model_index.json"
    before = index.read_bytes()
    code = (
        "import os, sys, socket\nview = socket.socket(fileno=3).recv(4096).decode()\n"
        "for path in [sys.argv[1], sys.argv[2], os.path.join(view, 'model_index.json'), os.path.join(view, 'new')]:\n"
        "    try:\n        open(path, 'w').write('import os'); print('WROTE', path)\n"
        "    except OSError as exc:\n        print('BLOCKED', type(exc).__name__)\n"
    )
    worker = spawn_worker(
        SandboxPolicy(), model_dir=tiny_model_copy, argv=["-c", PRELUDE + code, str(site_target), str(index)]
    )
    try:
        assert worker.model_dir is not None
        view_index = (worker.model_dir / "model_index.json").read_bytes()
        worker.sock.sendall(str(worker.model_dir).encode())
        assert worker.wait(60) == 0
        out = worker.stderr_tail(50)
        assert (worker.model_dir / "model_index.json").read_bytes() == view_index
        assert not (worker.model_dir / "new").exists()
    finally:
        worker.close()
    assert out.count("BLOCKED") == 4 and "WROTE" not in out, out
    assert not site_target.exists()
    assert index.read_bytes() == before
