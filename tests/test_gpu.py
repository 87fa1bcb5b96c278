"""CUDA inside the sandbox (`[sandbox] gpu = true`): skipped on hosts without a CUDA device.

Run on a GPU machine with ``python -m pytest -m gpu``; the last result is recorded in the README.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from safeloader import DiffusionPipeline
from safeloader.policy import load_policy, with_overrides

pytestmark = pytest.mark.gpu


def test_sandboxed_pipeline_on_cuda_matches_unsandboxed(tiny_model_dir: Path) -> None:
    from diffusers import DDPMPipeline

    policy = with_overrides(load_policy("default"), sandbox={"gpu": True})
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir), policy=policy)
    try:
        assert pipe.safeloader.sandbox.all_active
        pipe.to("cuda")
        assert str(pipe.device).startswith("cuda")
        images = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np").images
    finally:
        pipe.close()
    reference = DDPMPipeline.from_pretrained(tiny_model_dir).to("cuda")
    reference.set_progress_bar_config(disable=True)
    expected = reference(generator=torch.Generator().manual_seed(0), num_inference_steps=4, output_type="np").images
    np.testing.assert_allclose(np.asarray(images), np.asarray(expected), rtol=0, atol=1e-6)


def test_gpu_nodes_absent_without_gpu_policy(tiny_model_dir: Path) -> None:
    """Without `gpu = true` the worker gets no NVIDIA device node, so CUDA is unavailable inside."""
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model_dir))
    try:
        with pytest.raises(Exception) as info:
            pipe.to("cuda")
        assert type(info.value).__name__ == "RemoteError"
    finally:
        pipe.close()
