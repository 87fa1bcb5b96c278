"""Hostile pipeline code in the real sandboxed worker: each attack fails, its effect is checked, errors are clear.

Attacks run at import, in ``__init__`` and in ``__call__``; results that try to smuggle code or blow the
limits arrive as inert data or as a ProtocolError that killed the worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safeloader.errors import ProtocolError, RemoteError, SafeLoaderError, WorkerCrashed, WorkerTimeout
from safeloader.policy.schema import Policy, SandboxPolicy
from safeloader.proxy import RemoteObject, RemotePipeline, load_remote_pipeline

HOSTILE_SOURCE = (Path(__file__).parent / "hostile" / "hostile_pipeline.py").read_text()
SECRET = "hf_safeloader_test_secret_value"


class Listeners:
    """Loopback TCP, unix path and abstract unix listeners that record every connection they get."""

    def __init__(self, directory: Path) -> None:
        self.received: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.unix_path = str(directory / "listener.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.abstract_name = f"safeloader-test-{os.getpid()}-{id(self)}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen()
        for server, kind in ((self.tcp, "tcp"), (self.unix, "unix"), (self.abstract, "abstract")):
            threading.Thread(target=self._accept, args=(server, kind), daemon=True).start()

    def _accept(self, server: socket.socket, kind: str) -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            self.received.append(kind)
            connection.close()

    def close(self) -> None:
        for server in (self.tcp, self.unix, self.abstract):
            server.close()


@dataclasses.dataclass
class Target:
    params: dict[str, Any]
    listeners: Listeners
    marker: Path
    cache_file: Path
    model_dir: Path


@pytest.fixture(scope="module")
def target(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("hostile")
    listeners = Listeners(base)
    (base / "hub").mkdir()
    (base / "hub" / "token").write_text(SECRET)
    (base / ".ssh").mkdir()
    (base / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    other_model = base / "hub" / "models--other--model" / "weights.safetensors"
    other_model.parent.mkdir(parents=True)
    other_model.write_bytes(b"other model")
    cache_file = base / "safeloader-cache" / "blob.py"
    cache_file.parent.mkdir()
    cache_file.write_text("verified = True\n")
    params = {
        "port": listeners.port,
        "unix_path": listeners.unix_path,
        "abstract_name": listeners.abstract_name,
        "token_file": str(base / "hub" / "token"),
        "ssh_key": str(base / ".ssh" / "id_rsa"),
        "hub_file": str(other_model),
        "cache_file": str(cache_file),
        "caller_pid": os.getpid(),
        "marker": str(base / "marker"),
        "hog_bytes": 6 * 1024**3,
    }
    yield Target(params, listeners, base / "marker", cache_file, tiny_model_dir)
    listeners.close()


def hostile_pipeline(target: Target, monkeypatch: pytest.MonkeyPatch | None = None, **overrides: Any) -> RemotePipeline:
    params = {**target.params, **overrides}
    source = HOSTILE_SOURCE.replace("\nPARAMS = {}\n", f"\nPARAMS = {params!r}\n").encode()
    code = {"hostile_pipeline.py": source}
    policy = dataclasses.replace(
        Policy(), sandbox=SandboxPolicy(call_timeout_s=20, load_timeout_s=120, memory_limit_mb=3072)
    )
    return load_remote_pipeline(
        policy,
        model_dir=target.model_dir,
        code=code,
        code_hashes={k: hashlib.sha256(v).hexdigest() for k, v in code.items()},
        entry="hostile_pipeline.py",
        from_pretrained_kwargs={},
    )


@pytest.fixture(scope="module")
def shared_pipe(target: Target) -> Iterator[RemotePipeline]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", SECRET)
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        pipe = hostile_pipeline(target)
    yield pipe
    pipe.close()


def assert_untouched(target: Target) -> None:
    assert target.listeners.received == []
    assert not target.marker.exists()
    assert target.cache_file.read_text() == "verified = True\n"


def test_worker_environment_holds_no_secret(shared_pipe: RemotePipeline, target: Target) -> None:
    environment = shared_pipe("env")
    assert isinstance(environment, dict)
    assert "HF_TOKEN" not in environment and "AWS_SECRET_ACCESS_KEY" not in environment
    assert SECRET not in repr(environment)


@pytest.mark.parametrize(
    "attack",
    [
        "read_token",
        "read_ssh",
        "read_hub_cache",
        "read_caller_environ",
        "read_caller_mem",
        "rewrite_cache",
        "write_site_packages",
        "tcp",
        "http",
        "unix_path",
        "unix_abstract",
        "subprocess",
        "fork_spray",
        "kill_caller",
        "memory_hog",
    ],
)
def test_call_attacks_fail_with_remote_error_and_no_effect(
    shared_pipe: RemotePipeline, target: Target, attack: str
) -> None:
    with pytest.raises(RemoteError) as caught:
        shared_pipe(attack)
    assert caught.value.type_name and caught.value.traceback_text
    assert_untouched(target)
    import torch

    assert not (Path(torch.__file__).parent / "safeloader_pwned.py").exists()


@pytest.mark.parametrize("attack", ["os_system", "ctypes"])
def test_shell_attacks_do_not_run_anything(shared_pipe: RemotePipeline, target: Target, attack: str) -> None:
    try:
        status = shared_pipe(attack)
        assert status != 0
    except RemoteError:
        pass
    assert_untouched(target)


def test_audit_events_record_what_the_code_attempted(shared_pipe: RemotePipeline) -> None:
    for attack in ("tcp", "subprocess", "read_token"):
        with pytest.raises(RemoteError):
            shared_pipe(attack)
    names = {event["event"] for event in shared_pipe.events if event["by"] == "pipeline"}
    assert "socket.__new__" in names and "subprocess.Popen" in names and "open" in names
    assert shared_pipe.safeloader.events is shared_pipe.events


def test_reduce_objects_come_back_as_inert_handles(shared_pipe: RemotePipeline, target: Target) -> None:
    result = shared_pipe("reduce")
    assert isinstance(result["box"], RemoteObject) and "Box" in repr(result["box"])
    assert isinstance(result["pickled"], bytes)
    assert_untouched(target)


def test_exception_arrives_as_remote_error_with_traceback(shared_pipe: RemotePipeline) -> None:
    with pytest.raises(RemoteError) as caught:
        shared_pipe("raise")
    assert caught.value.type_name == "ValueError"
    assert "boom from the pipeline" in str(caught.value)
    assert "hostile_pipeline.py" in caught.value.traceback_text and "ATTACKS" in caught.value.traceback_text
    assert shared_pipe("none") is None  # the worker survives an exception


def test_caller_is_alive_and_dunders_are_never_forwarded(shared_pipe: RemotePipeline) -> None:
    with pytest.raises(AttributeError):
        shared_pipe.__getattr__("__globals__")
    with pytest.raises(SafeLoaderError):
        shared_pipe.session.call(0, "__class__", (), {})
    with pytest.raises(AttributeError):
        _ = shared_pipe._private_thing


@pytest.mark.parametrize("stage", ["at_import", "at_init"])
def test_attacks_at_import_and_init_fail_the_load_cleanly(target: Target, stage: str) -> None:
    for attack in ("tcp", "rewrite_cache"):
        with pytest.raises(RemoteError) as caught:
            hostile_pipeline(target, **{stage: attack})
        assert "loading the pipeline" in str(caught.value)
        assert_untouched(target)


@pytest.mark.parametrize(
    ("attack", "error"),
    [
        ("deep", ProtocolError),
        ("huge", ProtocolError),
        ("raw_oversized", ProtocolError),
        ("raw_pickle", ProtocolError),
        ("exit", WorkerCrashed),
    ],
)
def test_fatal_results_kill_the_worker(target: Target, attack: str, error: type[Exception]) -> None:
    pipe = hostile_pipeline(target)
    worker = pipe.session.worker
    with pytest.raises(error) as caught:
        pipe(attack)
    if isinstance(caught.value, WorkerCrashed):
        assert caught.value.returncode == 3
        assert "exited with code 3" in str(caught.value)
    assert worker.wait(5) is not None
    assert not Path(f"/proc/{worker.pid}").exists() or worker.poll() is not None
    assert_untouched(target)
    with pytest.raises(WorkerCrashed, match="closed"):
        pipe("none")


def test_endless_loop_hits_call_timeout_and_leaves_no_orphan(target: Target) -> None:
    pipe = hostile_pipeline(target)
    pipe.session.policy = dataclasses.replace(
        pipe.session.policy, sandbox=SandboxPolicy(call_timeout_s=1.5, memory_limit_mb=3072)
    )
    worker_pid = pipe.session.worker.pid
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match=r"1\.5 s"):
        pipe("loop")
    assert time.monotonic() - started < 10
    assert pipe.session.worker.poll() is not None
    deadline = time.monotonic() + 5
    while Path(f"/proc/{worker_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{worker_pid}").exists()
