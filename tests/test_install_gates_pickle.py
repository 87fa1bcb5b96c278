"""Under ``safeloader.install()`` diffusers and transformers unpickle no checkpoint in the caller unless
``[weights] allow_pickle``.

``from_single_file`` and a model's own ``from_pretrained`` load in-process (they take data, not code), but a
pickle checkpoint runs code when it is loaded. The checkpoints here are real ``torch.save`` files, and one is a
pickle that would run a command: a refusal must come before any unpickling, name the file and say what to do.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import safeloader
from safeloader.errors import PickleWeightsRefused
from safeloader.policy.schema import Policy


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def pickle_unet(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny UNet2DModel with its weights saved by ``torch.save`` (diffusers' ``.bin`` name)."""
    folder = tmp_path / "unet-bin"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "unet" / "config.json", folder / "config.json")
    weights = load_file(str(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.save(weights, folder / "diffusion_pytorch_model.bin")
    return folder


@pytest.fixture
def installed() -> Iterator[None]:
    safeloader.install(policy="default")
    yield
    safeloader.uninstall()


def _allowing_pickle() -> Policy:
    policy = Policy()
    return dataclasses.replace(policy, weights=dataclasses.replace(policy.weights, allow_pickle=True))


def test_a_models_pickle_weights_are_refused_in_the_caller(installed: None, pickle_unet: Path) -> None:
    from diffusers import UNet2DModel

    with pytest.raises(PickleWeightsRefused, match=r"diffusion_pytorch_model\.bin.*allow_pickle = true"):
        UNet2DModel.from_pretrained(pickle_unet)


@pytest.mark.parametrize("loader", ["pipeline", "model"])
def test_a_single_file_pickle_that_runs_a_command_is_refused_before_unpickling(
    installed: None, tiny_sd_dir: Path, tmp_path: Path, loader: str
) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    marker = tmp_path / "command-ran"
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": _RunsCommand(marker)}))
    with pytest.raises(PickleWeightsRefused, match=r"from_single_file.*model\.ckpt"):
        if loader == "pipeline":
            StableDiffusionPipeline.from_single_file(str(checkpoint), config=str(tiny_sd_dir))
        else:
            UNet2DConditionModel.from_single_file(str(checkpoint), config=str(tiny_sd_dir), subfolder="unet")
    assert not marker.exists()


def test_a_transformers_models_pickle_weights_are_refused_in_the_caller(
    installed: None, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    from transformers import CLIPTextModel

    folder = tmp_path / "text-encoder-bin"
    folder.mkdir()
    shutil.copy(tiny_sd_dir / "text_encoder" / "config.json", folder / "config.json")
    torch.save(load_file(str(tiny_sd_dir / "text_encoder" / "model.safetensors")), folder / "pytorch_model.bin")
    with pytest.raises(PickleWeightsRefused, match=r"pytorch_model\.bin"):
        CLIPTextModel.from_pretrained(folder)
    # The safetensors the folder was made from still load in-process.
    assert CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder") is not None


def test_allow_pickle_loads_them_and_uninstall_restores_diffusers(pickle_unet: Path, tiny_model_dir: Path) -> None:
    from diffusers import UNet2DModel
    from diffusers.models import model_loading_utils

    original = model_loading_utils.load_state_dict
    expected = UNet2DModel.from_pretrained(tiny_model_dir, subfolder="unet").state_dict()
    report = safeloader.install(policy=_allowing_pickle())
    try:
        assert any("unpickling a checkpoint" in item for item in report.closed)
        loaded = UNet2DModel.from_pretrained(pickle_unet).state_dict()
        assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    finally:
        safeloader.uninstall()
    assert model_loading_utils.load_state_dict is original
    restored = UNet2DModel.from_pretrained(pickle_unet).state_dict()
    assert torch.equal(restored["conv_in.weight"], expected["conv_in.weight"])
