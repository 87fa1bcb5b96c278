"""The tiny Stable Diffusion pipeline (real CLIP text encoder, Rust tokenizer threads) runs under the allow list."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from safeloader import DiffusionPipeline
from tests.fixtures.tiny_sd import PROMPT

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="the sandbox is Linux-only")


def _seeded(pipe: object) -> np.ndarray:
    out = pipe(  # type: ignore[operator]
        PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    return np.asarray(out.images)


def test_tiny_stable_diffusion_runs_sandboxed_and_matches_in_process(tiny_sd_dir: Path) -> None:
    import diffusers

    reference = _seeded(diffusers.StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir)))
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    try:
        assert pipe.safeloader.sandbox.all_active
        np.testing.assert_array_equal(_seeded(pipe), reference)
    finally:
        pipe.close()
