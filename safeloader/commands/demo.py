"""``safeloader demo``: the whole data path on a tiny model the project builds itself, offline.

Builds (once, cached) a tiny random UNet2DModel + DDPMScheduler model, writes diffusers' classic
one-step community pipeline as the untrusted code, audits it, loads it sandboxed, runs it, and
saves the output as a PNG.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from safeloader._demo.tiny_model import ONE_STEP_PIPELINE_SOURCE, build_tiny_model


def demo_root() -> Path:
    from safeloader.resolve.private_dir import cache_root

    return cache_root() / "demo"


def prepare(root: Path) -> tuple[Path, Path]:
    """The tiny model and the untrusted pipeline directory, built on first use."""
    model_dir = root / "tiny-ddpm"
    if not (model_dir / "model_index.json").is_file():
        staging = root / f".tiny-ddpm.{os.getpid()}"
        build_tiny_model(staging)
        os.replace(staging, model_dir)
    code_dir = root / "one_step_unet"
    code_dir.mkdir(parents=True, exist_ok=True)
    pipeline_file = code_dir / "pipeline.py"
    if not pipeline_file.is_file() or pipeline_file.read_text() != ONE_STEP_PIPELINE_SOURCE:
        pipeline_file.write_text(ONE_STEP_PIPELINE_SOURCE)
    return model_dir, code_dir


def save_png(tensor: Any, path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    array = tensor.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(dtype=torch.uint8)
    pixels = array[0].permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").resize((256, 256), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def run(args: argparse.Namespace) -> int:
    from safeloader.audit import audit_path
    from safeloader.dropin import DiffusionPipeline
    from safeloader.policy import load_policy

    started = time.perf_counter()
    policy = load_policy(args.policy)
    root = demo_root()
    model_dir, code_dir = prepare(root)
    print(f"model:    {model_dir} (tiny random UNet2DModel + DDPMScheduler)")
    print(f"pipeline: {code_dir / 'pipeline.py'} (untrusted: the one-step community pipeline)")
    print()
    report = audit_path(code_dir, policy)
    print(report.format_text().rstrip())
    print()
    pipe = DiffusionPipeline.from_pretrained(
        str(model_dir), custom_pipeline=str(code_dir), trust_remote_code=True, policy=policy
    )
    try:
        output = pipe()
        print(f"output:   {type(output).__name__} of shape {tuple(output.shape)}, dtype {output.dtype}")
        print(pipe.safeloader.sandbox.format_text())
        events = list(pipe.safeloader.events)
        own = [event for event in events if event.get("by") == "pipeline"]
        print(f"events:   {len(own)} attempt(s) by the pipeline code recorded in the worker", end="")
        print(f" (+{len(events) - len(own)} by the libraries it uses)" if len(events) > len(own) else "")
        for event in own:
            print(f"          {event['event']}: {event['detail']}")
    finally:
        pipe.close()
    png = Path(args.output) if args.output else root / "one_step_unet.png"
    save_png(output, png)
    print(f"image:    {png}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run an untrusted one-step pipeline sandboxed on a tiny model")
    parser.add_argument("--policy", default=None, help="built-in policy name or path (default: default)")
    parser.add_argument("-o", "--output", default=None, help="where to save the PNG")
    parser.set_defaults(run=run)
