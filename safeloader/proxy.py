"""The caller-side stand-ins for worker objects: ``RemotePipeline`` behaves like the pipeline in the worker.

The transport (requests, replies, limits, callbacks) is :class:`safeloader.ipc.session.WorkerSession`; this
module gives its handles a Python face. Only public names are read or called on the worker's behalf.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from safeloader.assets.calls import call_with_assets
from safeloader.display import printable
from safeloader.ipc import protocol
from safeloader.ipc import session as _session
from safeloader.ipc.session import RemoteReference, SandboxedWorkerLike, Spawner
from safeloader.policy.schema import Policy
from safeloader.sandbox.report import SandboxReport

__all__ = [
    "RemoteMethod",
    "RemoteObject",
    "RemotePipeline",
    "SandboxedWorkerLike",
    "Spawner",
    "WorkerSession",
    "load_remote_pipeline",
]


class WorkerSession(_session.WorkerSession):
    """A worker session whose handles come back as :class:`RemoteObject` and whose pipeline is a proxy."""

    def make_remote(self, handle: int, type_name: str) -> RemoteObject:
        return RemoteObject(self, handle, type_name)

    def load_pipeline(self, **kwargs: Any) -> RemotePipeline:
        """Load the verified code in the worker (see :meth:`~safeloader.ipc.session.WorkerSession.load`)."""
        pipeline = RemotePipeline(self, self.load(**kwargs))
        self.pipeline = pipeline
        return pipeline


def _attribute(session: WorkerSession, handle: int, name: str) -> Any:
    kind, value = session.get_attribute(handle, name)
    return RemoteMethod(session, handle, name) if kind == "method" else value


class RemoteObject(RemoteReference):
    """An opaque handle to an object that stays in the worker; public attributes and methods by name only."""

    def __getattr__(self, name: str) -> Any:
        if not protocol.is_public_name(name):
            raise AttributeError(name)
        return _attribute(object.__getattribute__(self, "_session"), object.__getattribute__(self, "_handle"), name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{name} cannot be set: remote objects are read-only, call a method instead")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        session: WorkerSession = object.__getattribute__(self, "_session")
        return call_with_assets(session, object.__getattribute__(self, "_handle"), None, args, kwargs)

    def __repr__(self) -> str:
        return (
            f"<RemoteObject {printable(object.__getattribute__(self, '_type_name'))} "
            f"#{object.__getattribute__(self, '_handle')} in the sandboxed worker>"
        )


class RemoteMethod:
    def __init__(self, session: WorkerSession, handle: int, name: str) -> None:
        self.session = session
        self.handle = handle
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_with_assets(self.session, self.handle, self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RemoteMethod {self.name} of worker object #{self.handle}>"


class RemotePipeline(RemoteObject):
    """Behaves like the ``DiffusionPipeline`` in the worker; results come back as data."""

    def __init__(self, session: WorkerSession, info: Mapping[str, Any]) -> None:
        super().__init__(session, protocol.PIPELINE_HANDLE, str(info.get("type", "DiffusionPipeline"))[:100])
        object.__setattr__(self, "_info", dict(info))
        #: Filled by the drop-in loader: ``.audit``, ``.sandbox``, ``.manifest``, ``.events``.
        object.__setattr__(
            self,
            "safeloader",
            SimpleNamespace(audit=None, sandbox=session.sandbox_report, manifest=None, events=session.events),
        )

    def __setattr__(self, name: str, value: object) -> None:
        if name == "safeloader":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @property
    def session(self) -> WorkerSession:
        return object.__getattribute__(self, "_session")

    @property
    def sandbox_report(self) -> SandboxReport:
        return self.session.sandbox_report

    @property
    def events(self) -> list[dict[str, str]]:
        return self.session.events

    @property
    def config(self) -> dict[str, Any]:
        return dict(object.__getattribute__(self, "_info").get("config") or {})

    @property
    def components(self) -> dict[str, str | None]:
        return dict(object.__getattribute__(self, "_info").get("components") or {})

    @property
    def device(self) -> Any:
        return _attribute(self.session, protocol.PIPELINE_HANDLE, "device")

    @property
    def dtype(self) -> Any:
        return _attribute(self.session, protocol.PIPELINE_HANDLE, "dtype")

    def to(self, *args: Any, **kwargs: Any) -> RemotePipeline:
        self.session.call(protocol.PIPELINE_HANDLE, "to", args, kwargs)
        return self

    def manual_seed(self, seed: int) -> None:
        """Seed the worker's global torch RNG (pipelines that draw noise without a ``generator`` use it)."""
        self.session.manual_seed(seed)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.session.call(protocol.PIPELINE_HANDLE, "set_progress_bar_config", (), kwargs)

    def from_pipe(self, pipeline: RemotePipeline | None = None, **kwargs: Any) -> RemotePipeline:
        """diffusers' ``from_pipe``, built in this pipeline's worker (see :mod:`safeloader.remote_pipelines`)."""
        from safeloader.remote_pipelines import from_pipe

        return from_pipe(self if pipeline is None else pipeline, **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RemotePipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemotePipeline {printable(object.__getattribute__(self, '_type_name'))} in the sandboxed worker>"


def load_remote_pipeline(
    policy: Policy,
    *,
    model_dir: Path,
    code: Mapping[str, bytes],
    code_hashes: Mapping[str, str],
    entry: str | None,
    from_pretrained_kwargs: Mapping[str, Any],
    restricted_python: str = "off",
    spawner: Spawner | None = None,
    pipeline_class: str | None = None,
) -> RemotePipeline:
    """Start a worker for ``model_dir`` and load the pipeline in it; the pipeline owns the worker."""
    session = WorkerSession.start(policy, model_dir=model_dir, spawner=spawner)
    try:
        return session.load_pipeline(
            code=code,
            code_hashes=code_hashes,
            entry=entry,
            from_pretrained_kwargs=from_pretrained_kwargs,
            restricted_python=restricted_python,
            pipeline_class=pipeline_class,
        )
    except BaseException:
        session.close()
        raise
