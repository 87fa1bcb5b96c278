"""Shared fixtures: tiny random DDPM and Stable Diffusion models, an isolated cache, and a loopback Hub."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from safeloader._demo.tiny_model import build_tiny_model
from tests.fixtures.tiny_sd import build_tiny_sd

# Set before anything imports huggingface_hub, which reads these once (nothing above imports it): the suite
# never reads or writes the user's Hugging Face cache, token or modules, and two runs share nothing.
_TEST_HF_HOME = tempfile.mkdtemp(prefix="safeloader-tests-hf-")
os.environ["HF_HOME"] = _TEST_HF_HOME
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)

pytest_plugins = ["tests.fixtures.hub_plugin"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random UNet2DModel + DDPMScheduler saved with save_pretrained (shared, do not modify)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "ddpm")


@pytest.fixture
def tiny_model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the tiny model."""
    dest = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Stable Diffusion pipeline with a real CLIP text encoder and tokenizer (shared, do not modify)."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(autouse=True)
def isolated_safeloader_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Every test gets its own safeloader cache and never touches the user's."""
    cache = tmp_path_factory.mktemp("safeloader-cache")
    monkeypatch.setenv("SAFELOADER_CACHE", str(cache))
    monkeypatch.delenv("SAFELOADER_POLICY", raising=False)
    yield cache


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    # Tests must never reach a real Hub: a loopback endpoint is set per test by the hub fixture.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TEST_HF_HOME, ignore_errors=True)
