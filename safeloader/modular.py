"""Modular diffusers with custom blocks: ``ModularPipelineBlocks`` / ``ModularPipeline`` built in the worker.

A repository's ``modular_config.json`` maps ``ModularPipelineBlocks`` to a class in its own ``.py`` file; that
code goes through the gate and runs only in the sandboxed worker. The caller gets a remote stand-in for the
documented workflow::

    from safeloader import ModularPipelineBlocks
    blocks = ModularPipelineBlocks.from_pretrained("org/blocks", trust_remote_code=True, policy="acme.toml")
    pipe = blocks.init_pipeline()          # a remote ModularPipeline in the same worker
    pipe.load_components()                 # components the blocks name, loaded in the worker
    image = pipe(prompt="a cat", output="images")   # outputs read by name
"""

from __future__ import annotations

from safeloader.automodel import RemoteLoader


class ModularPipelineBlocks(RemoteLoader):
    """Drop-in for ``diffusers.ModularPipelineBlocks.from_pretrained`` with custom blocks sandboxed."""

    library = "diffusers"
    kind = "ModularPipelineBlocks"
    public_name = "safeloader.ModularPipelineBlocks"


class ModularPipeline(RemoteLoader):
    """Drop-in for ``diffusers.ModularPipeline.from_pretrained`` with custom blocks sandboxed."""

    library = "diffusers"
    kind = "ModularPipeline"
    public_name = "safeloader.ModularPipeline"
