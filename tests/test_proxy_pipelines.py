"""Benign pipelines through the real sandboxed worker give the same bits as in-process diffusers."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline

from safeloader._demo.tiny_model import ONE_STEP_PIPELINE_SOURCE
from safeloader.errors import IntegrityError, RemoteError, UnsupportedValueError, WorkerCrashed
from safeloader.policy.schema import Policy
from safeloader.proxy import RemoteObject, RemotePipeline, WorkerSession, load_remote_pipeline

CALLBACK_PIPELINE = b"""\
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .helpers import initial_noise


class CallbackPipeline(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, generator=None, num_inference_steps=2, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs=("latents",)):
        latents = initial_noise(self.unet.config.sample_size, generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self.unet(latents, t).sample
            latents = self.scheduler.step(model_output, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents})
                latents = outputs.pop("latents", latents)
        return ImagePipelineOutput(images=latents.numpy())

    def ramp(self, count):
        return torch.arange(count, dtype=torch.float32)
"""
HELPERS = b"""\
import torch


def initial_noise(size, generator):
    return torch.randn((1, 3, size, size), generator=generator)
"""
CUSTOM_UNET = b"""\
from diffusers import UNet2DModel


class MyUNet(UNet2DModel):
    pass
"""


def hashed(code: dict[str, bytes]) -> dict[str, str]:
    return {relpath: hashlib.sha256(data).hexdigest() for relpath, data in code.items()}


def load(
    model_dir: Path, code: dict[str, bytes], entry: str | None, restricted_python: str = "off", **kwargs: Any
) -> RemotePipeline:
    return load_remote_pipeline(
        Policy(),
        model_dir=model_dir,
        code=code,
        code_hashes=hashed(code),
        entry=entry,
        from_pretrained_kwargs=kwargs,
        restricted_python=restricted_python,
    )


@pytest.fixture(scope="module")
def remote_ddpm(tiny_model_dir: Path) -> Iterator[RemotePipeline]:
    pipe = load(tiny_model_dir, {}, None)
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def local_ddpm(tiny_model_dir: Path) -> DDPMPipeline:
    pipe = DDPMPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_ddpm_is_bit_identical_to_in_process(
    remote_ddpm: RemotePipeline, local_ddpm: DDPMPipeline, output_type: str
) -> None:
    remote = remote_ddpm(generator=torch.Generator().manual_seed(7), num_inference_steps=2, output_type=output_type)
    local = local_ddpm(generator=torch.Generator().manual_seed(7), num_inference_steps=2, output_type=output_type)
    assert type(remote) is type(local)
    assert len(remote.images) == len(local.images)
    for remote_image, local_image in zip(remote.images, local.images, strict=True):
        assert type(remote_image) is type(local_image)
        assert np.asarray(remote_image).tobytes() == np.asarray(local_image).tobytes()
    as_tuple = remote_ddpm(
        generator=torch.Generator().manual_seed(7), num_inference_steps=2, output_type=output_type, return_dict=False
    )
    assert isinstance(as_tuple, tuple) and np.asarray(as_tuple[0][0]).tobytes() == np.asarray(local.images[0]).tobytes()


def test_pipeline_shape_as_data(remote_ddpm: RemotePipeline, tiny_model_dir: Path) -> None:
    components = remote_ddpm.components
    assert set(components) == {"unet", "scheduler"} and all(isinstance(c, RemoteObject) for c in components.values())
    assert "UNet2DModel" in repr(components["unet"]) and "DDPMScheduler" in repr(components["scheduler"])
    assert remote_ddpm.config["unet"] == ("diffusers", "UNet2DModel")
    assert remote_ddpm.device == torch.device("cpu") and remote_ddpm.dtype == torch.float32
    assert remote_ddpm.to("cpu") is remote_ddpm
    remote_ddpm.disable_attention_slicing()
    assert remote_ddpm.sandbox_report.all_active, remote_ddpm.sandbox_report.format_text()
    assert remote_ddpm.safeloader.sandbox is remote_ddpm.sandbox_report
    assert remote_ddpm.safeloader.audit is None and remote_ddpm.safeloader.manifest is None


def test_remote_objects_are_handles_with_data_results(remote_ddpm: RemotePipeline, local_ddpm: DDPMPipeline) -> None:
    unet = remote_ddpm.unet
    assert isinstance(unet, RemoteObject) and "UNet2DModel" in repr(unet)
    assert unet.config["sample_size"] == local_ddpm.unet.config.sample_size
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = local_ddpm.unet(sample, 5).sample
    result = unet(sample, 5)
    assert type(result).__name__ == "UNet2DOutput" and torch.equal(result.sample, expected)
    unet.note_from_the_caller = [1, "two"]  # writes go to the worker object; reads come back as data
    assert unet.note_from_the_caller == [1, "two"]
    with pytest.raises(UnsupportedValueError, match="pass data only"):
        remote_ddpm(generator=object())


def test_progress_bars_are_forwarded_to_caller_tqdm(
    remote_ddpm: RemotePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tqdm.auto

    drawn: list[Any] = []

    class RecordingTqdm(tqdm.auto.tqdm):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            drawn.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingTqdm)
    remote_ddpm(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    assert len(drawn) == 1 and drawn[0].total == 3 and drawn[0].n == 3
    remote_ddpm.set_progress_bar_config(disable=True)
    remote_ddpm(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    remote_ddpm.set_progress_bar_config(disable=False)
    assert len(drawn) == 1


def test_one_step_demo_pipeline_matches_in_process(tiny_model_dir: Path) -> None:
    code = {"one_step.py": ONE_STEP_PIPELINE_SOURCE.encode()}
    namespace: dict[str, Any] = {}
    exec(compile(ONE_STEP_PIPELINE_SOURCE, "one_step.py", "exec"), namespace)  # our own demo source, as reference
    local = namespace["UnetSchedulerOneForwardPipeline"].from_pretrained(tiny_model_dir)
    with load(tiny_model_dir, code, "one_step.py") as remote:
        assert {name: repr(c).split()[1] for name, c in remote.components.items()} == {
            "unet": "UNet2DModel",
            "scheduler": "DDPMScheduler",
        }
        remote.manual_seed(1234)
        remote_output = remote()
        worker = remote.session.worker
    torch.manual_seed(1234)
    local_output = local()
    assert torch.equal(remote_output, local_output.detach())
    assert worker.poll() is not None  # the context manager closed the worker


@pytest.fixture(scope="module")
def callback_pipeline(tiny_model_dir: Path) -> Iterator[RemotePipeline]:
    pipe = load(tiny_model_dir, {"pipeline.py": CALLBACK_PIPELINE, "helpers.py": HELPERS}, "pipeline.py")
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def local_callback_pipeline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusionPipeline:
    root = tmp_path_factory.mktemp("local-package")
    package = root / "local_callback_package"
    package.mkdir()
    (package / "__init__.py").write_bytes(b"")
    (package / "pipeline.py").write_bytes(CALLBACK_PIPELINE)
    (package / "helpers.py").write_bytes(HELPERS)
    sys.path.insert(0, str(root))
    try:
        from local_callback_package.pipeline import CallbackPipeline  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    pipe = CallbackPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_callback_on_step_end_runs_caller_side(
    callback_pipeline: RemotePipeline, local_callback_pipeline: DiffusionPipeline
) -> None:
    seen: list[tuple[Any, int, float]] = []

    def halve(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append((pipe, step, float(timestep)))
        assert isinstance(tensors["latents"], torch.Tensor)
        return {"latents": tensors["latents"] * 0.5}

    remote = callback_pipeline(
        generator=torch.Generator().manual_seed(11), num_inference_steps=2, callback_on_step_end=halve
    )
    remote_seen, seen[:] = list(seen), []
    local = local_callback_pipeline(
        generator=torch.Generator().manual_seed(11), num_inference_steps=2, callback_on_step_end=halve
    )
    assert remote.images.tobytes() == local.images.tobytes()
    assert [step for _, step, _ in remote_seen] == [0, 1]
    assert remote_seen[0][0] is callback_pipeline
    assert [t for *_, t in remote_seen] == [t for *_, t in seen]


def test_callback_exception_is_re_raised_and_worker_survives(callback_pipeline: RemotePipeline) -> None:
    def broken(*_args: Any) -> dict[str, Any]:
        raise KeyError("from the caller's callback")

    with pytest.raises(KeyError, match="caller's callback"):
        callback_pipeline(generator=torch.Generator().manual_seed(0), callback_on_step_end=broken)
    assert callback_pipeline.ramp(3).tolist() == [0.0, 1.0, 2.0]


def test_large_tensor_crosses_through_shared_memory(callback_pipeline: RemotePipeline) -> None:
    ramp = callback_pipeline.ramp(3_000_000)  # 12 MB: travels in a sealed memfd
    assert ramp.shape == (3_000_000,) and ramp[-1].item() == 2_999_999.0
    ramp[0] = 5.0  # the caller's private copy-on-write mapping is writable


def test_custom_component_resolves_to_verified_bytes(tiny_model_copy: Path, local_ddpm: DDPMPipeline) -> None:
    (tiny_model_copy / "unet" / "my_unet.py").write_bytes(CUSTOM_UNET)
    index = json.loads((tiny_model_copy / "model_index.json").read_text())
    index["unet"] = ["my_unet", "MyUNet"]
    (tiny_model_copy / "model_index.json").write_text(json.dumps(index))
    with load(tiny_model_copy, {"unet/my_unet.py": CUSTOM_UNET}, None) as pipe:
        assert "MyUNet" in repr(pipe.components["unet"])
        remote = pipe(generator=torch.Generator().manual_seed(2), num_inference_steps=2, output_type="np")
    local = local_ddpm(generator=torch.Generator().manual_seed(2), num_inference_steps=2, output_type="np")
    assert remote.images.tobytes() == local.images.tobytes()
    with pytest.raises(RemoteError, match="not among the verified pipeline files"):
        load(tiny_model_copy, {}, None)  # the .py on disk is not verified code: refused, never imported


def test_pre_started_session_and_integrity_checks(tiny_model_dir: Path) -> None:
    session = WorkerSession.start(Policy(), model_dir=tiny_model_dir)
    try:
        with pytest.raises(IntegrityError):
            session.load_pipeline(
                code={"pipeline.py": b"x = 1"},
                code_hashes={"pipeline.py": "0" * 64},
                entry=None,
                from_pretrained_kwargs={},
            )
        pipe = session.load_pipeline(
            code={}, code_hashes={}, entry=None, from_pretrained_kwargs={"torch_dtype": torch.float64}
        )
        assert pipe.dtype == torch.float64
        with pytest.raises(RemoteError, match="already holds"):
            session.load_pipeline(code={}, code_hashes={}, entry=None, from_pretrained_kwargs={})
    finally:
        session.close()
    assert session.worker.poll() is not None
    with pytest.raises(WorkerCrashed, match="closed"):
        pipe(num_inference_steps=1)


def test_restricted_python_enforce_runs_the_guarded_module(tiny_model_dir: Path) -> None:
    code = {"one_step.py": ONE_STEP_PIPELINE_SOURCE.encode()}
    with load(tiny_model_dir, code, "one_step.py", restricted_python="enforce") as remote:
        remote.manual_seed(0)
        assert remote().shape == (1, 3, 8, 8)
    sneaky = {"one_step.py": ONE_STEP_PIPELINE_SOURCE.encode() + b"\nLEAK = ().__class__.__mro__\n"}
    with pytest.raises(RemoteError) as caught:
        load(tiny_model_dir, sneaky, "one_step.py", restricted_python="enforce")
    assert caught.value.type_name == "AuditDenied"
