"""Large buffers read out of the worker's memory (safeloader.ipc.remote_read), and the pages they land in."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from safeloader.ipc import session as session_module
from safeloader.ipc.channel import Channel
from safeloader.ipc.codec import CodecError, Decoder, Encoder
from safeloader.ipc.remote_read import PARALLEL_READ_BYTES, RemoteMemory, RemoteReadError
from safeloader.ipc.shm import ReceivedPages
from safeloader.policy.schema import Policy
from safeloader.proxy import RemotePipeline, load_remote_pipeline

BIG_PIPELINE = b"""\
import numpy as np
import torch
from diffusers import DiffusionPipeline


class BigPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def tensor(self, rows, cols):
        return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols).t()  # not contiguous

    def array(self, count):
        return np.arange(count, dtype=np.float64)

    def ramp(self, count):
        return torch.arange(count, dtype=torch.float32)
"""


def _load(model_dir: Path) -> RemotePipeline:
    code = {"big_pipeline.py": BIG_PIPELINE}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in code.items()}
    return load_remote_pipeline(
        Policy(), model_dir=model_dir, code=code, code_hashes=hashes, entry="big_pipeline.py", from_pretrained_kwargs={}
    )


@pytest.fixture(scope="module")
def remote(tiny_model_dir: Path) -> Iterator[RemotePipeline]:
    pipe = _load(tiny_model_dir)
    yield pipe
    pipe.close()


def test_large_results_cross_by_address_from_the_sandboxed_worker(remote: RemotePipeline) -> None:
    assert remote.session._remote is not None  # the probe passed under the real sandbox
    for _ in range(3):  # the second and third land in reused pages
        received = remote.tensor(1024, 768)
        assert torch.equal(received, torch.arange(1024 * 768, dtype=torch.float32).reshape(1024, 768).t())
        assert received.is_contiguous() and received.untyped_storage().nbytes() >= received.nbytes
        received.add_(1)  # the caller's own, writable pages
    for count in (300_001, 300_001, 300_003):  # not a whole number of pages: the tensor has exactly its size
        ramp = remote.ramp(count)
        assert ramp.shape == (count,) and float(ramp[-1]) == count - 1
    array = remote.array(1 << 18)
    assert np.array_equal(array, np.arange(1 << 18, dtype=np.float64)) and array.flags.writeable
    large = remote.tensor(4096, 4096)  # 64 MiB: read by two threads
    assert large.nbytes >= PARALLEL_READ_BYTES and float(large[5, 7]) == 7 * 4096 + 5


def test_without_a_readable_probe_large_results_use_the_transfer_buffer(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "open_remote_memory", lambda pid: None)
    pipe = _load(tiny_model_dir)
    try:
        assert pipe.session._remote is None
        received = pipe.tensor(1024, 768)
        assert torch.equal(received, torch.arange(1024 * 768, dtype=torch.float32).reshape(1024, 768).t())
    finally:
        pipe.close()


def test_a_gone_process_is_never_read(tmp_path: Path) -> None:
    kept = bytearray(b"s" * 4096)
    address = np.frombuffer(kept, dtype=np.uint8).ctypes.data
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    memory = RemoteMemory(child)
    landing = np.zeros(4096, dtype=np.uint8)
    memory.read_into(landing.ctypes.data, address, 4096)  # a fork shares the address: readable while alive
    assert landing.tobytes() == bytes(kept)
    os.kill(child, 9)
    os.waitpid(child, 0)  # reaped: the pid may now be reused, the pidfd still names the dead process
    with pytest.raises(RemoteReadError, match="gone"):
        memory.read_into(landing.ctypes.data, address, 4096)
    assert not memory.probe(address, bytes(kept[:16]))
    memory.close()


def test_probe_and_bad_addresses() -> None:
    memory = RemoteMemory(os.getpid())
    cookie = np.frombuffer(bytearray(os.urandom(16)), dtype=np.uint8)
    assert memory.probe(cookie.ctypes.data, cookie.tobytes())
    assert not memory.probe(cookie.ctypes.data, os.urandom(16))
    assert not memory.probe("0x10", cookie.tobytes()) and not memory.probe(cookie.ctypes.data, b"short")
    landing = np.zeros(16, dtype=np.uint8)
    for address in (0, 4096, 2**64 - 8):
        with pytest.raises(RemoteReadError):
            memory.read_into(landing.ctypes.data, address, 16)
    memory.close()


def test_the_decoder_refuses_regions_it_was_not_told_to_read() -> None:
    tensor = torch.ones(1 << 20)
    body, fds = Encoder(remote_read=True).encode(tensor)
    with pytest.raises(CodecError, match="not accepted"):
        Decoder().decode(body, fds)


def test_announced_buffers_stay_pinned_until_the_peer_answers() -> None:
    left, right = socket.socketpair()
    try:
        worker = Channel(left, Encoder(remote_read=True), Decoder())
        caller = Channel(right, Encoder(), Decoder(remote=RemoteMemory(os.getpid())))
        worker.send({"op": "result", "value": torch.full((1 << 20,), 3.0) * 1})  # a temporary: only pinned
        assert len(worker.encoder.pinned) == 1
        received = caller.recv()["value"]
        assert torch.equal(received, torch.full((1 << 20,), 3.0))
        caller.send({"op": "next"})
        assert worker.recv()["op"] == "next" and worker.encoder.pinned == []
    finally:
        left.close()
        right.close()


def test_received_pages_are_reused_only_once_free_and_fully_overwritten() -> None:
    pages = ReceivedPages(keep=2)
    first = pages.take(4 << 20)
    tensor = torch.frombuffer(first, dtype=torch.uint8)
    tensor.fill_(7)
    pages.keep(first)
    first_id = id(first)
    del first  # only the tensor (and the pool) refer to it now
    assert id(pages.take(4 << 20)) != first_id  # still in use by the tensor
    del tensor
    reused = pages.take((4 << 20) - 100)  # same page-rounded size: reused, its tail zeroed
    assert id(reused) == first_id and reused[0] == 7 and reused[(4 << 20) - 100 :] == bytes(100)
    small = pages.take(4096)
    pages.keep(small)
    assert small not in pages._kept  # below MIN_BYTES: never remembered
