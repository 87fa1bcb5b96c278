"""safeloader: load diffusers custom pipelines from untrusted sources — pinned, verified, audited, sandboxed.

The public API is small; everything else is internal and may change::

    from safeloader import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("org/model", custom_pipeline="one_step_unet",
                                             trust_remote_code=True, policy="strict")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from safeloader.display import protect_logger
from safeloader.errors import SafeLoaderError
from safeloader.policy import Policy, load_policy

if TYPE_CHECKING:
    from safeloader.automodel import AutoModel
    from safeloader.dropin import DiffusionPipeline
    from safeloader.modular import ModularPipeline, ModularPipelineBlocks
    from safeloader.patch import install, uninstall

__version__ = "0.1.0"

# Log messages interpolate repo ids, paths and worker text: every record is made printable first.
protect_logger(logging.getLogger("safeloader"))
protect_logger(logging.getLogger("safeloader.audit"))

__all__ = [
    "AutoModel",
    "DiffusionPipeline",
    "ModularPipeline",
    "ModularPipelineBlocks",
    "Policy",
    "SafeLoaderError",
    "__version__",
    "install",
    "load_policy",
    "uninstall",
]

# Heavy modules (torch, diffusers) load only when these are first used.
_LAZY = {
    "AutoModel": ("safeloader.automodel", "AutoModel"),
    "ModularPipeline": ("safeloader.modular", "ModularPipeline"),
    "ModularPipelineBlocks": ("safeloader.modular", "ModularPipelineBlocks"),
    "DiffusionPipeline": ("safeloader.dropin", "DiffusionPipeline"),
    "install": ("safeloader.patch", "install"),
    "uninstall": ("safeloader.patch", "uninstall"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'safeloader' has no attribute {name!r}")
