"""Modular diffusers with custom blocks: the blocks run in the worker; the caller drives the documented workflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import safeloader
from safeloader.errors import RemoteCodeNotTrusted
from tests.fixtures.modular_blocks import build_modular_blocks


def _in_process(path: Path) -> torch.Tensor:
    from diffusers.modular_pipelines import ModularPipelineBlocks

    blocks = ModularPipelineBlocks.from_pretrained(str(path), trust_remote_code=True)
    pipe = blocks.init_pipeline()
    pipe.load_components()
    return pipe(seed=3, size=5, output="noise")


def test_custom_blocks_run_in_the_worker_and_match_in_process(tmp_path: Path) -> None:
    import diffusers

    marker = tmp_path / "sandboxed-marker"
    repo = build_modular_blocks(tmp_path / "blocks", marker)
    expected = _in_process(build_modular_blocks(tmp_path / "reference", tmp_path / "reference-marker"))
    with pytest.raises(RemoteCodeNotTrusted, match=r"block\.py"):
        safeloader.ModularPipelineBlocks.from_pretrained(repo)
    blocks = safeloader.ModularPipelineBlocks.from_pretrained(repo, trust_remote_code=True)
    try:
        assert blocks.safeloader.audit.verdict == "allow" and "block.py" in blocks.safeloader.manifest.files
        pipe = blocks.init_pipeline()
        pipe.load_components()
        noise = pipe(seed=3, size=5, output="noise")
        torch.testing.assert_close(noise, expected, rtol=0, atol=0)
        state = pipe(seed=3, size=5)
        torch.testing.assert_close(state.get("noise"), expected, rtol=0, atol=0)
        # Under install(), diffusers' own call is routed the same way, into a worker of its own.
        safeloader.install(policy="default")
        try:
            routed = diffusers.ModularPipeline.from_pretrained(str(repo), trust_remote_code=True)
            try:
                torch.testing.assert_close(routed(seed=3, size=5, output="noise"), expected, rtol=0, atol=0)
            finally:
                routed.close()
        finally:
            safeloader.uninstall()
    finally:
        blocks.close()
    assert not marker.exists(), "repository code ran in the caller"
