"""The OS sandbox around the worker: one module per layer, :func:`spawn_worker` to start a confined process,
:func:`finish_confinement` as the worker's first statement, :func:`probe_host` for ``safeloader doctor``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from safeloader.sandbox.inworker import finish_confinement
    from safeloader.sandbox.probe import probe_host
    from safeloader.sandbox.spawn import SandboxedWorker, spawn_worker

__all__ = ["SandboxedWorker", "finish_confinement", "probe_host", "spawn_worker"]

# Lazy: the launcher and the worker import submodules and must not pay for the rest.
_LAZY = {
    "SandboxedWorker": "safeloader.sandbox.spawn",
    "spawn_worker": "safeloader.sandbox.spawn",
    "finish_confinement": "safeloader.sandbox.inworker",
    "probe_host": "safeloader.sandbox.probe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safeloader.sandbox' has no attribute {name!r}")
