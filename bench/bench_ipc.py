"""IPC: a 256 MiB tensor from the sandboxed worker to the caller against memcpy and pickle, the three bulk paths
per size (sealed memfd, transfer buffer, read out of the sender's memory), and the latency of a 4 KiB round trip.

Prints a small table and one JSON line (``{"bench": "ipc", ...}``). Run: ``python bench/bench_ipc.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import statistics
import sys
from pathlib import Path

import torch

from safeloader._demo.tiny_model import build_tiny_model
from safeloader.ipc.codec import Decoder, Encoder
from safeloader.ipc.remote_read import RemoteMemory
from safeloader.ipc.shm import TransferMappings
from safeloader.policy.schema import Policy
from safeloader.proxy import load_remote_pipeline
from safeloader.worker.serve import TRANSFER_MAX_BYTES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_time

BLOB_PIPELINE = b"""\
import torch
from diffusers import DiffusionPipeline


class BlobPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.blobs = {}

    def blob(self, nbytes):
        if nbytes not in self.blobs:
            self.blobs[nbytes] = torch.ones(nbytes // 4, dtype=torch.float32)
        return self.blobs[nbytes]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/safeloader-bench-model"))
    args = parser.parse_args()
    nbytes = args.mib * 1024 * 1024
    if not (args.model_dir / "model_index.json").exists():
        build_tiny_model(args.model_dir)

    source = torch.ones(nbytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    memcpy_s = median_time(args.repeats, lambda: target.copy_(source))
    pickle_s = median_time(
        args.repeats, lambda: pickle.loads(pickle.dumps(source, protocol=5))
    )  # our own bytes: the baseline

    def codec_round_trip() -> object:
        body, fds = Encoder().encode(source)
        return Decoder().decode(body, fds)

    codec_s = median_time(args.repeats, codec_round_trip)

    # The three bulk paths, in-process, per size: encode, decode and one full read by the receiver (the sealed
    # path maps lazily, so without the read it would look free). The remote read here reads this process.
    transfer_encoder, transfer_decoder = Encoder(transfer_max=1 << 40), Decoder(transfer=TransferMappings())
    remote_encoder, remote_decoder = Encoder(remote_read=True), Decoder(remote=RemoteMemory(os.getpid()))
    paths: dict[str, dict[int, float]] = {"sealed": {}, "transfer": {}, "remote": {}}
    for mib in (4, 16, 64, 256):
        tensor = torch.ones(mib * 1024 * 1024 // 4)
        for name, encoder, decoder in (
            ("sealed", Encoder(), Decoder()),
            ("transfer", transfer_encoder, transfer_decoder),
            ("remote", remote_encoder, remote_decoder),
        ):
            decoder.decode(*encoder.encode(tensor))  # sizes the transfer buffer

            def path_round_trip(
                encoder: Encoder = encoder, decoder: Decoder = decoder, tensor: torch.Tensor = tensor
            ) -> object:
                received = decoder.decode(*encoder.encode(tensor)).sum()
                encoder.pinned.clear()  # what a channel does when the receiver answers
                return received

            paths[name][mib] = median_time(args.repeats, path_round_trip)

    code = {"blob.py": BLOB_PIPELINE}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in code.items()}
    with load_remote_pipeline(
        Policy(), model_dir=args.model_dir, code=code, code_hashes=hashes, entry="blob.py", from_pretrained_kwargs={}
    ) as pipe:
        pipe.blob(nbytes)  # created and cached in the worker; the timed calls measure the transfer only
        received = pipe.blob(nbytes)
        assert received.shape == source.shape and bool(received[-1] == 1.0)
        del received
        ipc_s = median_time(args.repeats, lambda: pipe.blob(nbytes))
        # Pages of the received mapping are faulted in lazily: count one full read to be fair to the baselines.
        ipc_read_s = median_time(args.repeats, lambda: pipe.blob(nbytes).sum())
        local_read_s = median_time(args.repeats, lambda: source.sum())
        # What users run: a method call on the proxy (it asks the worker whether .blob is a method, then calls
        # it: two round trips), and one round trip alone (the session's call, as every step callback pays).
        pipe.blob(4096)
        method_s = statistics.median(median_time(200, lambda: pipe.blob(4096)) for _ in range(5))
        session = pipe.session
        round_trip_s = statistics.median(
            median_time(200, lambda: session.call(0, "blob", (4096,), {})) for _ in range(5)
        )

    def rate(seconds: float) -> float:
        return nbytes / seconds / 1e9

    rows = [
        ("memcpy (caller, torch copy_)", memcpy_s, rate(memcpy_s)),
        ("pickle dumps+loads (protocol 5)", pickle_s, rate(pickle_s)),
        ("codec encode+decode, in-process", codec_s, rate(codec_s)),
        ("worker -> caller through the proxy", ipc_s, rate(ipc_s)),
        ("  ... plus one full read of the result", ipc_read_s, rate(ipc_read_s)),
        ("  (one full read of a local tensor)", local_read_s, rate(local_read_s)),
    ]
    print(f"{args.mib} MiB float32 tensor, median of {args.repeats}")
    print(f"{'path':<40} {'seconds':>9} {'GB/s':>7}")
    for name, seconds, gbps in rows:
        print(f"{name:<40} {seconds:>9.4f} {gbps:>7.2f}")
    print(f"{'4 KiB round trip (latency)':<40} {round_trip_s:>9.6f}")
    print(f"{'4 KiB method call on the proxy':<40} {method_s:>9.6f}")
    print("in-process codec, encode + decode + one read, GB/s (sealed memfd | transfer buffer | remote read):")
    for mib in paths["sealed"]:
        rates = [mib * 1024 * 1024 / paths[name][mib] / 1e9 for name in ("sealed", "transfer", "remote")]
        print(f"  {mib:>4} MiB  " + " | ".join(f"{rate:6.2f}" for rate in rates))
    result = {
        "bench": "ipc",
        "mib": args.mib,
        "load_average_1m": os.getloadavg()[0],
        "memcpy_gbps": round(rate(memcpy_s), 3),
        "pickle_gbps": round(rate(pickle_s), 3),
        "codec_gbps": round(rate(codec_s), 3),
        "ipc_gbps": round(rate(ipc_s), 3),
        "ipc_over_memcpy": round(memcpy_s / ipc_s, 3),
        "ipc_with_read_gbps": round(rate(ipc_read_s), 3),
        "round_trip_ms": round(round_trip_s * 1000, 4),
        "method_call_ms": round(method_s * 1000, 4),
        "transfer_max_mib": TRANSFER_MAX_BYTES >> 20,
        "paths_gbps": {
            name: {str(mib): round(mib * 1024 * 1024 / seconds / 1e9, 3) for mib, seconds in by_size.items()}
            for name, by_size in paths.items()
        },
        "goal_ipc_gbps": 6.0,
        "goal_ipc_over_memcpy": 0.5,
        "goal_round_trip_ms": 0.1,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
