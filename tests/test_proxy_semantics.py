"""The proxy keeps diffusers' semantics for what users do *to* a pipeline (issue 9, items 1-8).

Every test runs the same thing on the sandboxed tiny Stable Diffusion pipeline and on the in-process one, with
the same seeds, and compares the arrays bit for bit. One sandboxed pipeline is shared by the module; tests that
change it put it back.
"""

from __future__ import annotations

import gc
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)
from diffusers.configuration_utils import FrozenDict
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextModel

import safeloader
from safeloader.errors import RemoteError, UnsupportedValueError
from safeloader.ipc.codec import Decoder, Encoder, Ext
from safeloader.proxy import RemoteMethod, RemoteObject, RemotePipeline
from tests.fixtures.tiny_sd import PROMPT

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}


@pytest.fixture(scope="module")
def remote(tiny_sd_dir: Path) -> Iterator[RemotePipeline]:
    pipe = safeloader.DiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    assert isinstance(pipe, RemotePipeline)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def local(tiny_sd_dir: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: Any, seed: int = 0, **kwargs: Any) -> Any:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs})


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


# 1. chained calls on temporary handles --------------------------------------------------------------------
def test_chained_calls_on_temporary_handles(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    with torch.no_grad():
        expected = local.vae.decode(latents()).sample
    for _ in range(3):  # each round drops the temporaries of the one before; the handles must stay usable
        assert torch.equal(remote.vae.decode(latents()).sample, expected)
        gc.collect()
    vae = remote.vae
    del vae
    gc.collect()
    assert torch.equal(remote.vae.decode(latents()).sample, expected)

    remote.scheduler.set_timesteps(5)
    local.scheduler.set_timesteps(5)
    assert torch.equal(remote.scheduler.timesteps, local.scheduler.timesteps)
    remote.vae.enable_slicing()
    assert remote.vae.use_slicing is True
    remote.vae.disable_slicing()
    assert remote.vae.use_slicing is False
    method = remote.unet.forward
    assert isinstance(method, RemoteMethod) and method.handle == object.__getattribute__(method.owner, "_handle")


# 2. generator state both ways, and the caller's global RNG ----------------------------------------------
def test_one_generator_advances_across_calls_as_in_process(
    remote: RemotePipeline, local: StableDiffusionPipeline
) -> None:
    remote_generator, local_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = remote(PROMPT, generator=remote_generator, **SMALL).images
    second = remote(PROMPT, generator=remote_generator, **SMALL).images
    assert not np.array_equal(first, second)  # the generator advanced, as in diffusers
    assert np.array_equal(first, local(PROMPT, generator=local_generator, **SMALL).images)
    assert np.array_equal(second, local(PROMPT, generator=local_generator, **SMALL).images)
    assert torch.equal(remote_generator.get_state(), local_generator.get_state())


def test_lists_of_generators_and_one_generator_twice(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    for make in (
        lambda: [torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)],
        lambda: [torch.Generator().manual_seed(6)] * 2,  # the same generator twice stays one generator
    ):
        remote_generators, local_generators = make(), make()
        remote_images = remote([PROMPT, PROMPT], generator=remote_generators, **SMALL).images
        local_images = local([PROMPT, PROMPT], generator=local_generators, **SMALL).images
        assert np.array_equal(remote_images, local_images)
        for remote_generator, local_generator in zip(remote_generators, local_generators, strict=True):
            assert torch.equal(remote_generator.get_state(), local_generator.get_state())


def test_global_rng_is_the_callers(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    torch.manual_seed(0)
    remote_images = [remote(PROMPT, **SMALL).images for _ in range(2)]
    remote_state = torch.default_generator.get_state()
    torch.manual_seed(0)
    local_images = [local(PROMPT, **SMALL).images for _ in range(2)]
    assert np.array_equal(remote_images[0], local_images[0]) and np.array_equal(remote_images[1], local_images[1])
    assert torch.equal(remote_state, torch.default_generator.get_state())
    remote.manual_seed(9)  # the proxy's manual_seed is torch.manual_seed: carried with the next call
    assert torch.equal(torch.default_generator.get_state(), torch.manual_seed(9).get_state())


# 3. thread safety ------------------------------------------------------------------------------------------
def test_concurrent_calls_are_serialized(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for _ in range(2):
                results[seed] = run(remote, seed).images
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (10, 11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    for seed, images in results.items():
        assert np.array_equal(images, run(local, seed).images)


# 4. setting attributes -------------------------------------------------------------------------------------
def test_setting_the_scheduler_from_its_config(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    original = local.scheduler
    try:
        remote.scheduler = DDIMScheduler.from_config(remote.scheduler.config)
        local.scheduler = DDIMScheduler.from_config(local.scheduler.config)
        assert "DDIMScheduler" in repr(remote.scheduler)
        assert remote.config["scheduler"] == local.config["scheduler"]
        assert np.array_equal(run(remote).images, run(local).images)
        remote.scheduler = EulerDiscreteScheduler.from_config(remote.scheduler.config)
        local.scheduler = EulerDiscreteScheduler.from_config(local.scheduler.config)
        assert np.array_equal(run(remote).images, run(local).images)
    finally:
        remote.scheduler = PNDMScheduler.from_config(original.config)
        local.scheduler = original


def test_private_writes_in_callbacks_as_documented(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    def dynamic_cfg(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        # diffusers' documented pattern: turn classifier-free guidance off after the first step.
        if step == 0:
            pipe._guidance_scale = 0.0
            tensors["prompt_embeds"] = tensors["prompt_embeds"].chunk(2)[-1]
        return tensors

    def interrupt(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if step == 0:
            pipe._interrupt = True
        return tensors

    for callback, inputs in ((dynamic_cfg, ["prompt_embeds"]), (interrupt, ["latents"])):
        kwargs = {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": inputs}
        assert np.array_equal(run(remote, 2, **kwargs).images, run(local, 2, **kwargs).images)
    with pytest.raises(AttributeError):
        _ = remote._guidance_scale  # reading private names stays refused
    with pytest.raises(UnsupportedValueError, match="protocol name"):
        remote.__class__ = object  # type: ignore[assignment]
    remote.vae.some_flag = [1, 2]
    assert remote.vae.some_flag == [1, 2]


# 5. the caller's library objects cross as data ------------------------------------------------------------
def test_attention_processors_and_models_cross_as_data(
    remote: RemotePipeline, local: StableDiffusionPipeline, tiny_sd_dir: Path
) -> None:
    try:
        for processor in (AttnProcessor(), AttnProcessor2_0()):
            remote.unet.set_attn_processor(processor)
            local.unet.set_attn_processor(type(processor)())
            assert all(type(processor).__name__ in repr(p) for p in remote.unet.attn_processors.values())
            assert np.array_equal(run(remote).images, run(local).images)
        # A model the caller loaded: its class, config and tensors cross; the worker rebuilds it.
        vae = AutoencoderKL.from_pretrained(tiny_sd_dir / "vae")
        with torch.no_grad():
            vae.decoder.conv_out.bias.add_(0.25)
        remote.vae = vae
        assert torch.equal(remote.vae.decode(latents()).sample, vae.decode(latents()).sample.detach())
        text_encoder = CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder")
        with torch.no_grad():
            next(iter(text_encoder.parameters())).add_(0.5)
            ids = local.tokenizer(PROMPT, return_tensors="pt").input_ids
            expected = text_encoder(ids).last_hidden_state
        remote.text_encoder = text_encoder
        assert torch.equal(remote.text_encoder(ids).last_hidden_state, expected)
    finally:
        remote.unet.set_attn_processor(AttnProcessor2_0())
        local.unet.set_attn_processor(AttnProcessor2_0())
        remote.vae = AutoencoderKL.from_pretrained(tiny_sd_dir / "vae")
        remote.text_encoder = CLIPTextModel.from_pretrained(tiny_sd_dir / "text_encoder")
    with pytest.raises(UnsupportedValueError, match="pass data only"):
        remote.unet.set_attn_processor(object())


def test_the_worker_rebuilds_only_allow_listed_classes(remote: RemotePipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    import safeloader.proxy as proxy

    class Forged:
        pass

    for forged in (["scheduler", "os", {}], ["processor", "Attention", {"query_dim": 4}], ["model", "torch", "x"]):
        monkeypatch.setattr(proxy, "library_payload", lambda value, f=forged: f if isinstance(value, Forged) else None)
        with pytest.raises(RemoteError) as caught:
            remote.unet.set_attn_processor(Forged())
        assert caught.value.type_name == "LibraryObjectRefused"
    monkeypatch.undo()
    assert remote.unet.config.sample_size == 16  # the worker kept serving


def test_from_pretrained_with_a_scheduler_object(tiny_sd_dir: Path, local: StableDiffusionPipeline) -> None:
    scheduler = DDIMScheduler.from_config(local.scheduler.config)
    in_process = StableDiffusionPipeline.from_pretrained(str(tiny_sd_dir), scheduler=scheduler)
    in_process.set_progress_bar_config(disable=True)
    with safeloader.DiffusionPipeline.from_pretrained(str(tiny_sd_dir), scheduler=scheduler) as sandboxed:
        assert "DDIMScheduler" in repr(sandboxed.scheduler)
        sandboxed.set_progress_bar_config(disable=True)
        assert np.array_equal(run(sandboxed).images, run(in_process).images)


# 6. components work as components, in the same worker ------------------------------------------------------
def test_components_build_new_pipelines_in_the_same_worker(
    remote: RemotePipeline, local: StableDiffusionPipeline, tiny_sd_dir: Path
) -> None:
    import diffusers

    components = remote.components
    assert set(components) == set(local.components)
    for name, value in local.components.items():
        assert (components[name] is None) if value is None else isinstance(components[name], RemoteObject)
    safeloader.install(policy="default")
    try:
        rebuilt = diffusers.StableDiffusionPipeline(**components)
        assert isinstance(rebuilt, RemotePipeline) and rebuilt.session is remote.session
        # Without sandboxed components, construction stays diffusers' own.
        assert isinstance(StableDiffusionPipeline(**local.components), StableDiffusionPipeline)
    finally:
        safeloader.uninstall()
    assert isinstance(StableDiffusionPipeline(**local.components), StableDiffusionPipeline)  # after uninstall too
    rebuilt.set_progress_bar_config(disable=True)
    expected = run(local).images
    assert np.array_equal(run(rebuilt).images, expected)

    from_components = safeloader.DiffusionPipeline.from_pretrained(str(tiny_sd_dir), unet=remote.unet)
    assert isinstance(from_components, RemotePipeline) and from_components.session is remote.session
    from_components.set_progress_bar_config(disable=True)
    assert np.array_equal(run(from_components).images, expected)

    seen: list[Any] = []

    def record(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(pipe)
        return tensors

    run(rebuilt, callback_on_step_end=record)
    assert seen and all(pipe is rebuilt for pipe in seen)  # callbacks get the pipeline that was called


# 7. configs, dtype, device ---------------------------------------------------------------------------------
def test_configs_are_frozen_dicts(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    assert isinstance(remote.unet.config, FrozenDict)
    assert remote.unet.config.sample_size == local.unet.config.sample_size
    assert remote.vae.config.scaling_factor == local.vae.config.scaling_factor
    assert remote.unet.config == local.unet.config
    # diffusers' own repr() adds _class_name and _diffusers_version to the in-process config: compare the rest.
    added = {"_class_name", "_diffusers_version"}
    assert isinstance(remote.config, FrozenDict)
    assert {k: v for k, v in remote.config.items() if k not in added} == {
        k: v for k, v in local.config.items() if k not in added
    }
    assert remote.config._name_or_path == local.config._name_or_path
    assert (remote.dtype, remote.device) == (local.dtype, local.device)
    assert (remote.unet.dtype, remote.vae.device) == (local.unet.dtype, local.vae.device)


def test_config_keys_never_become_protocol_attributes() -> None:
    import msgpack

    fields = {"sample_size": 8, "_class_name": "X", "__array_interface__": {"data": [4096, False]}, "_repr_html_": 1}
    body = msgpack.packb({"op": "result", "value": msgpack.ExtType(Ext.CONFIG, msgpack.packb(fields))})
    config = Decoder().decode(body, [])["value"]
    assert isinstance(config, FrozenDict) and dict(config) == fields
    assert config.sample_size == 8 and config._class_name == "X"
    assert "__array_interface__" not in vars(config) and "_repr_html_" not in vars(config)
    body, fds = Encoder().encode({"config": config})
    assert Decoder().decode(body, fds)["config"] == config


# 8. outputs keep their shape, repr, pickling ----------------------------------------------------------------
def test_outputs_keep_their_shape(remote: RemotePipeline, local: StableDiffusionPipeline) -> None:
    ids = local.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = local.text_encoder(ids)
    output = remote.text_encoder(ids)
    assert type(output) is type(expected)
    assert torch.equal(output[0], expected[0]) and torch.equal(output.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(output.pooler_output, expected.pooler_output)

    remote_output, local_output = run(remote), run(local)
    assert type(remote_output) is type(local_output)
    assert remote_output.nsfw_content_detected is None and local_output.nsfw_content_detected is None
    as_tuple = run(remote, return_dict=False)
    expected_tuple = run(local, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected_tuple) == 2
    assert np.array_equal(as_tuple[0], expected_tuple[0]) and as_tuple[1] is expected_tuple[1] is None
    assert repr(remote) == repr(local)


def test_proxies_refuse_pickling(remote: RemotePipeline) -> None:
    for value in (remote, remote.unet, remote.unet.forward):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(value)
