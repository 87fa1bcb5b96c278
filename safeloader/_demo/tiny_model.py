"""Build a tiny random UNet2DModel + DDPMScheduler pipeline directory in about a second."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The community "one-step" pipeline from diffusers' guide, as the untrusted code of the demo.
ONE_STEP_PIPELINE_SOURCE = """\
from diffusers import DiffusionPipeline
import torch


class UnetSchedulerOneForwardPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def __call__(self):
        image = torch.randn(
            (1, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size),
        )
        timestep = 1
        model_output = self.unet(image, timestep).sample
        scheduler_output = self.scheduler.step(model_output, timestep, image).prev_sample
        return scheduler_output
"""


def build_tiny_model(dest: Path, *, seed: int = 0, sample_size: int = 8) -> Path:
    """Write a tiny DDPM pipeline (UNet2DModel + DDPMScheduler) to ``dest`` with ``save_pretrained``.

    The weights are random but deterministic for a given ``seed``. Returns ``dest``.
    """
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    scheduler = DDPMScheduler(num_train_timesteps=100)
    dest.mkdir(parents=True, exist_ok=True)
    pipeline: Any = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(dest, safe_serialization=True)
    return dest


def model_index(dest: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((dest / "model_index.json").read_text())
    return data
