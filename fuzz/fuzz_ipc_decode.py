"""Fuzz the IPC frame decoder in both directions, through the real sockets, framing, codec and limits.

Worker → caller: the bytes are what a hostile worker writes to its socket; the real caller session
(:class:`safeloader.proxy.WorkerSession`, default limits) starts on them (hello) and makes one call. It must end
in a value or a :class:`~safeloader.errors.SafeLoaderError` (ProtocolError, WorkerCrashed, RemoteError, …),
without leaking a file descriptor the worker attached.

Caller → worker: the bytes are requests as the worker's :class:`safeloader.worker.serve.Worker` channel
receives them. The worker is not the trust boundary's protected side, so its decoder answers malformed input
with its own rejections (``CodecError``/``FrameError``, which end the worker and reach the caller as
WorkerCrashed); anything else — another exception, a crash, a hang, a leaked fd — is a finding.

Input layout: byte 0 selects ``direction`` (bit 0: 1 = caller → worker), ``raw`` (bit 1: the rest is written to
the socket verbatim, frame headers included, so several frames and broken headers are possible; otherwise the
rest is one frame body behind a correct header, after a valid hello in the worker → caller direction), the
number of sealed memfds attached (bits 2-3), how they are sealed (bits 4-5) and ``structured`` (bit 6: the rest
is not msgpack but choices that grow a message, see :func:`structured_message`); then two bytes of size per memfd.

Under atheris: ``python fuzz/fuzz_ipc_decode.py [libFuzzer flags] fuzz/corpus/ipc``. Without it:
``python fuzz/fuzz_ipc_decode.py --smoke 2000`` or ``--smoke-seconds 20``.
``--write-corpus`` adds missing seeds to the seed corpus from the real encoders.
"""

from __future__ import annotations

import array
import fcntl
import importlib
import os
import socket
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # worker-driven progress bars would flood the fuzz log

import torch  # noqa: E402 - imported once here so no input pays for it
from fuzz_audit import main  # noqa: E402
from run_all import prepare_target  # noqa: E402

from safeloader.errors import SafeLoaderError  # noqa: E402
from safeloader.ipc import protocol  # noqa: E402
from safeloader.ipc.codec import OUTPUT_CLASSES, CodecError  # noqa: E402
from safeloader.ipc.framing import FrameError, PeerClosed  # noqa: E402
from safeloader.ipc.shm import REQUIRED_SEALS  # noqa: E402
from safeloader.policy import load_policy  # noqa: E402
from safeloader.proxy import WorkerSession  # noqa: E402
from safeloader.sandbox.report import LayerStatus, SandboxReport  # noqa: E402
from safeloader.worker.serve import Worker  # noqa: E402

# Every allowed output class's module is imported once here, so no input pays for (or waits on the import
# lock of) a first diffusers import: the per-input time limit is for decoding, not for imports.
for _module_name in {location[0] for location in OUTPUT_CLASSES.values()}:
    importlib.import_module(_module_name)

MAX_INPUT = 64 * 1024
#: Frames the worker-side loop reads from one input (raw mode can hold many).
MAX_FRAMES = 64
SEAL_MODES = (REQUIRED_SEALS, 0, fcntl.F_SEAL_WRITE, REQUIRED_SEALS & ~fcntl.F_SEAL_SHRINK)
POLICY = load_policy("default")
HEADER = struct.Struct(">IB")
TO_WORKER = 1
RAW = 2
STRUCTURED = 64


class Finding(AssertionError):
    """Decoding one input left a socket or an attached memfd open: a worker could exhaust the caller's fds."""


class LoopbackWorker:
    """The caller's view of a worker process, here only the socket: the decoder under test is the caller's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # The hello's probe points into this process, so announced regions of "the worker's" memory are read
        # out of the fuzzer itself: the caller's remote-read path is fuzzed too.
        self.pid = os.getpid()
        self.report = SandboxReport(layers=(LayerStatus("seccomp", True, "fuzz"),))
        self.model_dir: Path | None = None

    def poll(self) -> int | None:
        return 0

    def wait(self, timeout: float | None = None) -> int | None:
        return 0

    def kill(self) -> None:
        pass

    def stderr_tail(self, lines: int = 20) -> str:
        return ""

    def close(self) -> None:
        self.sock.close()


def sealed_memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("fuzz-ipc", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, (bytes(range(256)) * (size // 256 + 1))[:size])
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def frame(body: bytes, fd_count: int = 0) -> bytes:
    return HEADER.pack(len(body), fd_count) + body


#: What the hello's probe points at: a cookie the caller reads back out of this process.
PROBE_COOKIE = bytearray(b"safeloader-fuzz!")


def hello_frame() -> bytes:
    import numpy as np

    from safeloader.ipc.codec import Encoder

    layers = [LayerStatus("landlock", True, "fuzz").to_dict()]
    probe = {"address": np.frombuffer(PROBE_COOKIE, dtype=np.uint8).ctypes.data, "cookie": bytes(PROBE_COOKIE)}
    message = {"op": protocol.HELLO, "version": protocol.PROTOCOL_VERSION, "pid": 2, "layers": layers, "probe": probe}
    return frame(Encoder().encode(message)[0])


HELLO = hello_frame()


class ByteReader:
    """Hands out the input's bytes one by one, then zeros: the structured mode's source of choices."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def byte(self) -> int:
        self.position += 1
        return self.data[self.position - 1] if self.position <= len(self.data) else 0

    def take(self, count: int) -> bytes:
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk


#: Names the decoders look for, so structured inputs reach the checks behind them.
WORDS = (
    "op", "result", "error", "progress", "callback", "hello", "value", "kind", "limit", "exception", "refused",
    "type", "message", "traceback", "events", "event", "detail", "bar", "n", "open", "close", "total", "desc",
    "tensors", "step", "timestep", "target", "name", "method", "args", "kwargs", "release", "version", "layers",
    "layer", "active", "required", "load", "call", "getattr", "describe", "seed", "callback_result", "float32",
    "uint8", "bool", "bfloat16", "float8_e4m3fn", "complex128", "object", "RGB", "1", "I;16", "P", "cpu", "cuda:0",
    "meta", "ImagePipelineOutput", "UNet2DOutput", "images", "sample", "__class__", "", "remote", "probe",
)  # fmt: skip


def structured_message(reader: ByteReader, depth: int = 0) -> Any:
    """A msgpack value grown from the input's bytes: byte mutations then change structure, not just spelling."""
    import msgpack

    choice = reader.byte() % (11 if depth < 12 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return reader.byte() - 128
    if choice == 2:
        return int.from_bytes(reader.take(8).ljust(8, b"\0"), "big") - (1 << 63) * (reader.byte() & 1)
    if choice == 3:
        return WORDS[reader.byte() % len(WORDS)]
    if choice == 4:
        return reader.take(reader.byte())
    if choice == 5:
        return [structured_message(reader, depth + 1) for _ in range(reader.byte() % 6)]
    if choice == 6:
        return {
            WORDS[reader.byte() % len(WORDS)]: structured_message(reader, depth + 1) for _ in range(reader.byte() % 5)
        }
    if choice == 7:
        payload = msgpack.packb(structured_message(reader, depth + 1), use_bin_type=True)
        return msgpack.ExtType(reader.byte() % 13, payload)
    if choice == 8:
        return struct.unpack(">d", reader.take(8).ljust(8, b"\0"))[0]
    if choice == 9:
        return bool(reader.byte() & 1)
    return {"op": WORDS[reader.byte() % len(WORDS)], "value": structured_message(reader, depth + 1)}


def send_input(data: bytes, sock: socket.socket) -> int:
    """Write the fuzz input to ``sock`` the way a peer would; returns its direction bits."""
    control = data[0] if data else 0
    fd_count = (control >> 2) & 3
    seals = SEAL_MODES[(control >> 4) & 3]
    sizes = [int.from_bytes(data[1 + 2 * i : 3 + 2 * i], "big") for i in range(fd_count)]
    body = data[1 + 2 * fd_count :]
    if control & STRUCTURED:
        import msgpack

        body = msgpack.packb(structured_message(ByteReader(body)), use_bin_type=True)
    stream = body if control & RAW else (HELLO if not control & TO_WORKER else b"") + frame(body, fd_count)
    fds = [sealed_memfd(size, seals) for size in sizes]
    try:
        if fds and stream:
            # The fds ride on the first byte of the frame they belong to, as framing.send_frame sends them.
            first = 0 if control & RAW or control & TO_WORKER else len(HELLO)
            if first:
                sock.sendall(stream[:first])
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sock.sendmsg([stream[first : first + 1]], ancillary)
            sock.sendall(stream[first + 1 :])
        else:
            sock.sendall(stream)
    finally:
        for fd in fds:
            os.close(fd)
    sock.shutdown(socket.SHUT_WR)
    return control & TO_WORKER


def step_callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
    return callback_kwargs


def caller_decodes(sock: socket.socket) -> None:
    """The real caller session starts on the worker's bytes and makes one call with a step callback."""
    worker = LoopbackWorker(sock)
    try:
        session = WorkerSession.start(POLICY, model_dir=Path("/nonexistent"), spawner=lambda *_a, **_k: worker)
    except SafeLoaderError:
        return
    try:
        value = session.call(protocol.PIPELINE_HANDLE, None, (), {"callback_on_step_end": step_callback})
        repr(value)
    except SafeLoaderError:
        pass
    finally:
        session.close()


def worker_decodes(sock: socket.socket) -> None:
    """The worker reads requests as its serve loop does, until the caller's bytes end or break the protocol.

    A request naming a library object the worker cannot rebuild is answered with a refusal and reading goes on
    (``Worker.receive``), as in the worker.
    """
    worker = Worker(sock, [])
    worker._register(SimpleNamespace(), protocol.PIPELINE_HANDLE)
    try:
        for _ in range(MAX_FRAMES):
            request = worker.receive(time.monotonic() + 5)
            if request is None:
                continue
            worker.release(request.get("release"))
            repr(request)
    except (CodecError, FrameError, PeerClosed):
        pass  # the worker's documented rejections: it exits and the caller reports WorkerCrashed
    finally:
        sock.close()


def open_ipc_fds() -> int:
    """Open sockets and fuzz memfds: what an input could leak (other threads may open files meanwhile)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        count += target.startswith(("socket:", "/memfd:fuzz-ipc"))
    return count


def decode_one(data: bytes) -> None:
    data = data[:MAX_INPUT]
    before = open_ipc_fds()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        direction = send_input(data, theirs)
        if direction == TO_WORKER:
            worker_decodes(ours)
        else:
            caller_decodes(ours)
    finally:
        ours.close()
        theirs.close()
    leaked = open_ipc_fds() - before
    if leaked > 0:
        raise Finding(f"{leaked} file descriptors stayed open after decoding one input")


# --- seed corpus ------------------------------------------------------------------------------------------


def seed_inputs() -> dict[str, bytes]:
    """Real messages from the real encoders, in both directions, plus edge cases and past findings."""
    import msgpack
    import numpy as np
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
    from PIL import Image

    from safeloader.ipc.codec import Encoder, Ext
    from safeloader.ipc.limits import Limits

    class Ref:
        """An extension value placed as is (a bare ExtType is a namedtuple, which the encoder sends as a tuple)."""

        def __init__(self, code: int, payload: object) -> None:
            self.ext = msgpack.ExtType(code, msgpack.packb(payload))

    def encoded(message: dict[str, Any], *, shm: bool = False) -> tuple[bytes, list[int]]:
        encoder = Encoder(limits=Limits(shm_threshold=16) if shm else Limits(), fallback=handle)
        body, fds = encoder.encode(message)
        sizes = [os.fstat(fd).st_size for fd in fds]
        for fd in fds:
            os.close(fd)
        return body, sizes

    def handle(value: object) -> msgpack.ExtType:
        if isinstance(value, Ref):
            return value.ext
        return msgpack.ExtType(Ext.HANDLE, msgpack.packb([7, type(value).__name__]))

    def framed(direction: int, message: dict[str, Any], *, shm: bool = False) -> bytes:
        body, sizes = encoded(message, shm=shm)
        control = direction | (len(sizes) << 2)
        return bytes([control]) + b"".join(s.to_bytes(2, "big") for s in sizes) + body

    def raw(direction: int, *messages: dict[str, Any]) -> bytes:
        frames = (HELLO if direction != TO_WORKER else b"") + b"".join(frame(encoded(m)[0]) for m in messages)
        return bytes([direction | RAW]) + frames

    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    image = Image.frombytes("RGB", (4, 2), bytes(range(24)))
    rich = {
        "tensor": tensor,
        "half": tensor.to(torch.bfloat16),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "scalar": np.float32(1.5),
        "image": image,
        "generator": torch.Generator().manual_seed(42),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "tuple": (1, "two", b"3", None, 4.5, True),
        "output": ImagePipelineOutput(images=[image]),
        "nested": [[{"k": [1, 2, {"deep": (3,)}]}]],
    }
    hello = {"op": protocol.HELLO, "version": protocol.PROTOCOL_VERSION, "pid": 2, "layers": []}
    result = {"op": protocol.RESULT, "value": rich, "events": [{"event": "open", "detail": "/tmp/x"}]}
    error = {"op": protocol.ERROR, "kind": protocol.ERROR_EXCEPTION, "type": "ValueError", "message": "m",
             "traceback": "Traceback", "events": []}  # fmt: skip
    limit_error = dict(error, kind=protocol.ERROR_LIMIT, type="CodecError")
    progress_open = {"op": protocol.PROGRESS, "bar": 1, "event": "open", "n": 0, "total": 4, "desc": "steps"}
    progress_step = {"op": protocol.PROGRESS, "bar": 1, "event": "update", "n": 3}
    callback = {"op": protocol.CALLBACK, "callback": 1, "step": 0, "timestep": tensor[0, 0], "tensors": {"x": tensor}}
    worker_handle = {"op": protocol.RESULT, "value": {"scheduler": object()}, "events": []}
    load = {"op": protocol.LOAD, "model_dir": "/model", "code": {"pipeline.py": b"X = 1\n"},
            "hashes": {"pipeline.py": "0" * 64}, "entry": "pipeline.py", "kwargs": {"torch_dtype": torch.float32},
            "restricted_python": "off", "package": "remote"}  # fmt: skip
    call = {"op": protocol.CALL, "target": protocol.PIPELINE_HANDLE, "method": None, "args": [],
            "kwargs": {"num_inference_steps": 2, "generator": torch.Generator().manual_seed(0),
                       "callback_on_step_end": Ref(Ext.CALLBACK, 123),
                       "latents": tensor, "output_type": "np"}, "release": [3, 4]}  # fmt: skip
    getattr_request = {"op": protocol.GETATTR, "target": Ref(Ext.HANDLE, [0, "P"]),
                       "name": "config"}  # fmt: skip

    def word(text: str) -> int:
        return WORDS.index(text)

    def ext(code: int, payload: object) -> bytes:
        return msgpack.packb({"op": protocol.RESULT, "value": msgpack.ExtType(code, msgpack.packb(payload))})

    seeds = {
        "w2c_result_rich": framed(0, result),
        "w2c_result_handle": framed(0, worker_handle),
        "w2c_result_memfds": framed(0, {"op": protocol.RESULT, "value": [tensor, np.ones(5), image]}, shm=True),
        "w2c_error": framed(0, error),
        "w2c_limit_error": framed(0, limit_error),
        "w2c_stream_progress_result": raw(0, progress_open, progress_step, result),
        "w2c_stream_callback_error": raw(0, callback, error),
        "w2c_hello_only": raw(0),
        # Regions of "the worker's" memory: an address in the fuzzer's own heap at fuzz time is anything from
        # unmapped (EFAULT) to readable; one below the inline threshold must be refused.
        "w2c_remote_region": bytes([0])
        + msgpack.packb(
            {
                "op": "result",
                "value": msgpack.ExtType(
                    Ext.TENSOR, msgpack.packb(["uint8", [1 << 20], {"remote": id(PROBE_COOKIE)}, "cpu"])
                ),
            }
        ),
        "w2c_remote_region_small": bytes([0])
        + msgpack.packb(
            {
                "op": "result",
                "value": msgpack.ExtType(
                    Ext.NDARRAY, msgpack.packb(["float64", [4], {"remote": id(PROBE_COOKIE)}, False])
                ),
            }
        ),
        "w2c_not_a_map": bytes([0]) + msgpack.packb([1, 2, 3]),
        "w2c_unknown_op": bytes([0]) + msgpack.packb({"op": "exec", "code": "print(1)"}),
        "c2w_load": framed(TO_WORKER, load),
        "c2w_call": framed(TO_WORKER, call),
        "c2w_call_memfds": framed(TO_WORKER, dict(call, args=[tensor, np.ones(9)]), shm=True),
        "c2w_getattr_handle": framed(TO_WORKER, getattr_request),
        "c2w_stream": raw(
            TO_WORKER,
            {"op": protocol.DESCRIBE, "target": 0},
            {"op": protocol.SEED, "seed": 2**64 - 1},
            {"op": protocol.CALLBACK_RESULT, "tensors": {"latents": tensor}},
            {"op": protocol.CALLBACK_ERROR, "message": "boom"},
            {"op": protocol.RELEASE, "release": [1]},
            {"op": protocol.CLOSE},
        ),
        "edge_header_too_large": bytes([RAW]) + HEADER.pack(2**32 - 1, 0),
        "edge_fd_count_mismatch": bytes([RAW | (1 << 2), 0, 8]) + frame(ext(Ext.TENSOR, ["uint8", [8], 0, "cpu"]), 2),
        "edge_truncated_body": bytes([RAW]) + HEADER.pack(100, 0) + b"\x81",
        "edge_deep_tuples": bytes([0]) + ext(Ext.TUPLE, [[[[[[[[[]]]]]]]]]),
        "edge_unsealed_memfd": bytes([(1 << 2) | (1 << 4), 0, 16]) + ext(Ext.TENSOR, ["float32", [4], 0, "cpu"]),
        "edge_image_huge_size": bytes([0]) + ext(Ext.IMAGE, ["RGBA", 65536, 65536, b""]),
        "edge_shape_overflow": bytes([0]) + ext(Ext.NDARRAY, ["float64", [2**47, 2**47], b"", False]),
        "edge_timestamp_ext": bytes([0]) + b"\x82\xa2op\xa6result\xa5value\xd6\xff" + b"\0" * 4,
        # Structured: {"op": "result", "value": ndarray ext of float32 [4] inline}, and a tensor ext in a call.
        "structured_w2c": bytes([STRUCTURED, 10, word("result"), 7, 5, 4, 3, word("float32"), 5, 1, 1, 132, 4, 16])
        + bytes(16)
        + bytes([9, 0, Ext.NDARRAY]),
        "structured_c2w": bytes([STRUCTURED | TO_WORKER, 10, word("call"), 7, 5, 4, 3, word("float32"), 5, 1, 1, 132])
        + bytes([4, 16])
        + bytes(16)
        + bytes([3, word("cpu"), Ext.TENSOR]),
        # Past findings: a hello whose layer "active" was an array made bool() raise ValueError/RuntimeError;
        # an unhashable dtype or mode name raised TypeError instead of CodecError.
        "finding_hello_active_array": bytes([RAW])
        + frame(encoded(dict(hello, layers=[{"layer": "seccomp", "active": np.ones(2), "detail": ""}]))[0])
        + frame(encoded(result)[0]),
        "finding_hello_active_tensor": bytes([RAW])
        + frame(encoded(dict(hello, layers=[{"layer": "seccomp", "active": torch.ones(2), "detail": ""}]))[0]),
        "finding_ndarray_dtype_list": bytes([0]) + ext(Ext.NDARRAY, [["float32"], [1], b"\0" * 4, False]),
        "finding_image_mode_list": bytes([0]) + ext(Ext.IMAGE, [["RGB"], 1, 1, b"\0" * 3]),
        # msgpack's true where an integer belongs: as a generator's seed it made the worker's manual_seed raise
        # RuntimeError. From the worker (edge_*), the caller's guard already made it a ProtocolError; the codec
        # now says what was wrong (a shape of true made reshape raise TypeError).
        "finding_generator_seed_true_to_worker": framed(
            TO_WORKER, dict(call, kwargs={"generator": Ref(Ext.GENERATOR, [True, "cpu", None, 0])})
        ),
        "edge_generator_seed_true": bytes([0]) + ext(Ext.GENERATOR, [True, "cpu", None, 0]),
        "edge_tensor_shape_true": bytes([0]) + ext(Ext.TENSOR, ["float32", [True, 2], b"\0" * 8, "cpu"]),
        # A release list holding a list: `handle in self.objects` raised TypeError (unhashable).
        "finding_release_unhashable_to_worker": framed(TO_WORKER, dict(call, release=[[1], 3])),
        # A request naming a library object of an unknown kind: the worker answers it with a refusal.
        "finding_library_kind_unknown_to_worker": framed(
            TO_WORKER, dict(call, kwargs={"scheduler": Ref(Ext.LIBRARY, ["olkat32", {}])})
        ),
    }
    return seeds


def write_corpus() -> None:
    directory = HERE / "corpus" / "ipc"
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        path = directory / f"{name}.bin"
        if not path.exists():  # some seeds are random (keys, salts): keep the committed ones stable
            path.write_bytes(data)


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        write_corpus()
        sys.exit(0)
    sys.exit(main(prepare_target(decode_one, sys.argv[1:]), "ipc", sys.argv[1:]))
