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

import os
from typing import Any

from safeloader.automodel import load_remote
from safeloader.policy import Policy


class _ModularLoader:
    kind = "ModularPipelineBlocks"

    def __init__(self) -> None:
        raise TypeError(f"safeloader.{self.kind} is a loader; call {self.kind}.from_pretrained(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        trust_remote_code: bool = False,
        policy: str | os.PathLike[str] | Policy | None = None,
        lockfile: str | os.PathLike[str] | None = None,
        worker: Any = None,
        **kwargs: Any,
    ) -> Any:
        """diffusers' ``from_pretrained`` plus ``policy``, ``lockfile`` and ``worker`` (share one)."""
        return load_remote(
            pretrained_model_name_or_path,
            library="diffusers",
            kind=cls.kind,
            subfolder=kwargs.pop("subfolder", None),
            trust_remote_code=trust_remote_code,
            policy=policy,
            lockfile=lockfile,
            worker=worker,
            **kwargs,
        )


class ModularPipelineBlocks(_ModularLoader):
    """Drop-in for ``diffusers.ModularPipelineBlocks.from_pretrained`` with custom blocks sandboxed."""

    kind = "ModularPipelineBlocks"


class ModularPipeline(_ModularLoader):
    """Drop-in for ``diffusers.ModularPipeline.from_pretrained`` with custom blocks sandboxed."""

    kind = "ModularPipeline"
