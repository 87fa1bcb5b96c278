"""A fake worker that says hello properly, then answers the first request with one hostile frame.

Run by tests/fixtures/plain_worker.py as ``python fake_worker.py MODE MARKER``; MARKER is a path that a
payload's ``__reduce__`` would create if the caller ever unpickled it.
"""

import fcntl
import os
import pickle
import socket
import struct
import sys
import time

import msgpack

from safeloader.ipc.codec import Encoder, Ext
from safeloader.ipc.framing import recv_frame, send_frame

mode, marker = sys.argv[1], sys.argv[2]
sock = socket.socket(fileno=3)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


def frame(message):
    send_frame(sock, msgpack.packb(message, use_bin_type=True))


def sealed(data, seals):
    fd = os.memfd_create("fake", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


if mode == "no_hello":
    time.sleep(60)
if mode == "array_in_hello":
    # A numpy array where the caller expects an int: comparing it raises in the caller, which must not leak.
    import numpy

    body, fds = Encoder().encode({"op": "hello", "version": numpy.array([1, 1]), "pid": 1, "layers": []})
    send_frame(sock, body, fds)
    time.sleep(60)
if mode.startswith("remote_") and mode != "remote_unannounced":
    # A hello whose probe the caller can read back: large buffers may then cross by address.
    import numpy

    cookie = numpy.frombuffer(bytearray(os.urandom(16)), dtype=numpy.uint8)
    probe = {"address": cookie.ctypes.data, "cookie": cookie.tobytes()}
    frame({"op": "hello", "version": 1, "pid": os.getpid(), "layers": [], "probe": probe})
else:
    frame({"op": "hello", "version": 1, "pid": os.getpid(), "layers": []})
if mode == "stops_reading":
    time.sleep(60)  # never reads the request, so the caller's send fills the socket buffer
recv_frame(sock)
deep = []
for _ in range(400):
    deep = [deep]
if mode == "garbage":
    sock.sendall(struct.pack(">IB", 8, 0) + b"\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1")
elif mode == "oversized":
    sock.sendall(struct.pack(">IB", 2**31, 0) + b"x" * 1024)
elif mode == "deep":
    frame({"op": "result", "value": deep})
elif mode == "pickle_ext":
    frame({"op": "result", "value": msgpack.ExtType(42, pickle.dumps(Exploit()))})
elif mode == "pickle_in_output":
    frame({"op": "result", "value": msgpack.ExtType(Ext.OUTPUT, msgpack.packb(["Exploit", pickle.dumps(Exploit())]))})
elif mode == "not_a_message":
    frame([1, 2, 3])
elif mode == "unknown_op":
    frame({"op": "exec", "code": "import os"})
elif mode == "unsealed_memfd":
    fd = sealed(b"\x00" * 16, fcntl.F_SEAL_SHRINK)
    send_frame(sock, msgpack.packb({"op": "result", "value": msgpack.ExtType(
        Ext.TENSOR, msgpack.packb(["float32", [4], 0, "cpu"]))}), [fd])
elif mode == "stray_fd":
    send_frame(sock, msgpack.packb({"op": "result", "value": 1}), [sys.stdout.fileno()])
elif mode == "truncated":
    sock.sendall(struct.pack(">IB", 1000, 0) + b"\x81")
    os._exit(0)
elif mode == "private_output_field":
    # An output whose field would answer numpy's __array_interface__ with caller memory.
    inner = msgpack.ExtType(Ext.OUTPUT, msgpack.packb(
        ["Sneaky", {"__array_interface__": {"data": [4096, False], "shape": [8], "typestr": "|u1"}}]))
    frame({"op": "result", "value": msgpack.ExtType(Ext.OUTPUT, msgpack.packb(["ImagePipelineOutput", {"images": [inner]}]))})
elif mode == "unhashable_callback":
    frame({"op": "callback", "callback": [1], "step": 0, "timestep": 0, "tensors": {}})
elif mode == "generator_state_wrong_size":
    # A call that carried one generator: its "advanced state" is 10 bytes, not a CPU generator's 5056.
    frame({"op": "result", "value": {"value": 1, "generators": [b"\x00" * 10], "global": b"\x00" * 5056}})
elif mode == "generator_state_invalid":
    # The one state of the reply (the global one is "agreed"): the right size, but no mt19937 state.
    frame({"op": "result", "value": {"value": 1, "generators": [b"\xff" * 5056], "global": True}})
elif mode == "generator_state_empty":
    frame({"op": "result", "value": {"value": 1, "generators": [b""], "global": True}})
elif mode == "generator_state_invalid_beside_global":
    # Two states: a valid new global one and an invalid generator state; neither may be set.
    import torch

    valid = bytes(torch.Generator().manual_seed(9).get_state().numpy())
    frame({"op": "result", "value": {"value": 1, "generators": [b"\xff" * 5056], "global": valid}})
elif mode == "generator_state_wrong_type":
    frame({"op": "result", "value": {"value": 1, "generators": ["state"], "global": None}})
elif mode == "global_state_as_tensor":
    state = msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1264], b"\x00" * 5056, "cpu"]))
    frame({"op": "result", "value": {"value": 1, "generators": [None], "global": state}})
elif mode == "generator_states_missing":
    frame({"op": "result", "value": 1})
elif mode == "generator_ext_bad_state":
    frame({"op": "result", "value": msgpack.ExtType(Ext.GENERATOR, msgpack.packb([0, "cpu", b"\x00" * 7, 0]))})
elif mode == "build_answers_data":
    frame({"op": "result", "value": {"pipeline": 0, "info": {}}})
elif mode == "sparse_image":
    # A 4 GiB image whose memfd has no page at all: costs this process nothing.
    fd = os.memfd_create("sparse", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4 << 30)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    image = msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGBA", 32768, 32768, 0]))
    send_frame(sock, msgpack.packb({"op": "result", "value": {"kind": "value", "value": image}}), [fd])
elif mode == "tensor_larger_than_memfd":
    fd = sealed(b"\x00" * 4096, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    tensor = msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1 << 20], 0, "cpu"]))
    send_frame(sock, msgpack.packb({"op": "result", "value": {"kind": "value", "value": tensor}}), [fd])
elif mode == "over_max_result":
    import torch  # a well-formed 2 MiB reply; the test's policy allows 1 MiB

    body, fds = Encoder().encode({"op": "result", "value": {"kind": "value", "value": torch.ones(1 << 19)}})
    send_frame(sock, body, fds)
elif mode == "image_size_mismatch":
    image = msgpack.ExtType(Ext.IMAGE, msgpack.packb(["RGB", 100, 100, b"\x00" * 100]))
    frame({"op": "result", "value": {"kind": "value", "value": image}})
elif mode == "inline_array_short":
    array = msgpack.ExtType(Ext.NDARRAY, msgpack.packb(["float64", [1000], b"\x00" * 10, False]))
    frame({"op": "result", "value": {"kind": "value", "value": array}})
elif mode == "transfer_can_resize":
    fd = sealed(b"\x00" * (1 << 20), 0)  # no seals: it could shrink under the caller's reads (SIGBUS)
    tensor = msgpack.ExtType(Ext.TENSOR, msgpack.packb(["uint8", [1 << 20], [0, 0], "cpu"]))
    send_frame(sock, msgpack.packb({"op": "result", "value": {"kind": "value", "value": tensor}}), [fd])
elif mode == "transfer_then_tamper":
    import torch

    encoder = Encoder(transfer_max=64 << 20)
    body, fds = encoder.encode({"op": "result", "value": {"kind": "value", "value": torch.ones(1 << 20)}})
    send_frame(sock, body, fds)
    for fd in fds:
        os.close(fd)
    recv_frame(sock)  # the caller has decoded the reply: it asks again
    encoder._transfer.mapping[:] = b"\xff" * encoder._transfer.capacity  # rewrite what the caller read
    frame({"op": "result", "value": {"kind": "value", "value": "tampered"}})
elif mode in ("remote_bad_address", "remote_unannounced"):
    # A 4 MiB tensor "at" an address this process has not mapped (or announced without a passed probe).
    tensor = msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1 << 20], {"remote": 4096}, "cpu"]))
    frame({"op": "result", "value": {"kind": "value", "value": tensor}})
elif mode == "remote_below_threshold":
    kept = bytearray(64)
    import numpy

    tensor = msgpack.ExtType(
        Ext.TENSOR, msgpack.packb(["uint8", [64], {"remote": numpy.frombuffer(kept, numpy.uint8).ctypes.data}, "cpu"])
    )
    frame({"op": "result", "value": {"kind": "value", "value": tensor}})
elif mode == "remote_over_max_result":
    tensor = msgpack.ExtType(Ext.TENSOR, msgpack.packb(["float32", [1 << 30], {"remote": 4096}, "cpu"]))
    frame({"op": "result", "value": {"kind": "value", "value": tensor}})
elif mode == "result_after_callback_storm":
    for _ in range(10_000):
        frame({"op": "progress", "bar": 1, "event": "update", "n": 1, "total": 1.0, "desc": "x"})
    frame({"op": "result", "value": {"kind": "value", "value": "ok"}})
time.sleep(60)
