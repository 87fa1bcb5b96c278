"""Modular diffusers with custom blocks: the blocks run in the worker; the caller drives the documented workflow
(``init_pipeline``, ``load_components``, calling it, reading outputs by name), equal to in-process diffusers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import safeloader
from safeloader.errors import RemoteCodeNotTrusted
from tests.fixtures.modular_blocks import build_modular_blocks


def _in_process(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of blocks.init_pipeline(), output of ModularPipeline.from_pretrained + load_components)."""
    from diffusers.modular_pipelines import ModularPipeline, ModularPipelineBlocks

    bare = ModularPipelineBlocks.from_pretrained(str(path), trust_remote_code=True).init_pipeline()
    loaded = ModularPipeline.from_pretrained(str(path), trust_remote_code=True)
    loaded.load_components()
    return bare(seed=3, size=5, output="noise"), loaded(seed=3, size=5, output="noise")


def test_custom_blocks_run_in_the_worker_and_match_in_process(tmp_path: Path) -> None:
    import diffusers

    marker = tmp_path / "sandboxed-marker"
    repo = build_modular_blocks(tmp_path / "blocks", marker)
    bare_expected, loaded_expected = _in_process(
        build_modular_blocks(tmp_path / "reference", tmp_path / "reference-marker")
    )
    assert not torch.equal(bare_expected, loaded_expected), "load_components must change the output"
    with pytest.raises(RemoteCodeNotTrusted, match=r"block\.py"):
        safeloader.ModularPipelineBlocks.from_pretrained(repo)
    blocks = safeloader.ModularPipelineBlocks.from_pretrained(repo, trust_remote_code=True)
    try:
        assert blocks.safeloader.audit.verdict == "allow" and "block.py" in blocks.safeloader.manifest.files
        pipe = blocks.init_pipeline()
        torch.testing.assert_close(pipe(seed=3, size=5, output="noise"), bare_expected, rtol=0, atol=0)
        state = pipe(seed=3, size=5)
        torch.testing.assert_close(state.get("noise"), bare_expected, rtol=0, atol=0)
    finally:
        blocks.close()
    # Under install(), diffusers' own ModularPipeline.from_pretrained is routed into a worker of its own.
    safeloader.install(policy="default")
    try:
        routed = diffusers.ModularPipeline.from_pretrained(str(repo), trust_remote_code=True)
    finally:
        safeloader.uninstall()
    try:
        assert type(routed).__name__ == "RemoteModel"
        assert routed.scheduler is None
        routed.load_components()
        assert type(routed.scheduler).__name__ == "RemoteObject"
        torch.testing.assert_close(routed(seed=3, size=5, output="noise"), loaded_expected, rtol=0, atol=0)
    finally:
        routed.close()
    assert not marker.exists(), "repository code ran in the caller"
