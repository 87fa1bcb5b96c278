"""The caller-side stand-ins for worker objects: ``RemotePipeline`` behaves like the pipeline in the worker.

The transport (requests, replies, limits, callbacks) is :class:`safeloader.ipc.session.WorkerSession`; this
module gives its handles a Python face. Only public names are read or called on the worker's behalf; any
non-dunder name may be *set* (writing data into the worker cannot make the caller run anything).
"""

from __future__ import annotations

import collections
import json
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack

from safeloader.assets.calls import call_with_assets
from safeloader.display import printable
from safeloader.errors import SafeLoaderError
from safeloader.ipc import protocol
from safeloader.ipc import session as _session
from safeloader.ipc.codec import CodecError, Ext, ExtReplacement
from safeloader.ipc.library_objects import LibraryObjectRefused, frozen_dict, library_payload
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
    "build_remote_pipeline",
    "load_remote_pipeline",
]


class WorkerSession(_session.WorkerSession):
    """A worker session whose handles come back as :class:`RemoteObject` and whose pipeline is a proxy.

    It counts the caller-side stand-ins of each handle and tells the worker to drop an object only once none is
    left: a temporary ``pipe.vae`` in ``pipe.vae.decode(x)`` may die while another stand-in for the same object
    (or a request that names it) is still alive. Finalizers only queue the drop (they may run in any thread at any
    allocation); the queue is settled under the request lock.
    """

    def __init__(self, worker: SandboxedWorkerLike, policy: Policy) -> None:
        super().__init__(worker, policy)
        self._holders: dict[int, int] = {}
        self._dropped: collections.deque[int] = collections.deque()
        #: Pipelines built in this worker besides the first (``BUILD``), so their handles come back as themselves.
        self._pipelines: weakref.WeakValueDictionary[int, RemotePipeline] = weakref.WeakValueDictionary()
        self.source_model_dir: Path | None = None

    @classmethod
    def start(
        cls, policy: Policy, *, model_dir: Path, spawner: Spawner | None = None, wait: bool = True
    ) -> WorkerSession:
        session = super().start(policy, model_dir=model_dir, spawner=spawner, wait=wait)
        #: The model folder the worker was started for (its own view of it lives elsewhere).
        session.source_model_dir = Path(model_dir)
        return session

    def make_remote(self, handle: int, type_name: str) -> RemoteReference:
        pipeline = self._pipelines.get(handle)
        if pipeline is not None:
            return pipeline
        self.hold(handle)
        return RemoteObject(self, handle, type_name)

    def hold(self, handle: int) -> None:
        """One more caller-side stand-in for ``handle``; cancels a release not sent yet."""
        with self._lock:
            self._holders[handle] = self._holders.get(handle, 0) + 1
            if handle in self._pending_release:
                self._pending_release.remove(handle)

    def release(self, handle: int) -> None:
        self._dropped.append(handle)  # atomic: safe from a finalizer in any thread

    def _settle_drops(self) -> None:
        while self._dropped:
            handle = self._dropped.popleft()
            left = self._holders.get(handle, 0) - 1
            if left > 0:
                self._holders[handle] = left
                continue
            self._holders.pop(handle, None)
            super().release(handle)

    def request(self, message: dict[str, Any], *, timeout_s: float, doing: str) -> Any:
        with self._lock:
            self._settle_drops()
            return super().request(message, timeout_s=timeout_s, doing=doing)

    def _encode_reference(self, value: object) -> msgpack.ExtType | ExtReplacement:
        if isinstance(value, RemoteReference):
            if object.__getattribute__(value, "_session") is not self:
                raise CodecError(
                    "an object of another sandboxed worker cannot be passed to this one (each pipeline has its "
                    "own worker); use objects of this pipeline, or load the component again"
                )
            return super()._encode_reference(value)
        try:
            payload = library_payload(value)
        except LibraryObjectRefused as exc:
            raise CodecError(str(exc)) from None
        if payload is not None:
            return ExtReplacement(Ext.LIBRARY, payload)
        return super()._encode_reference(value)

    def load_pipeline(self, **kwargs: Any) -> RemotePipeline:
        """Load the verified code in the worker (see :meth:`~safeloader.ipc.session.WorkerSession.load`)."""
        pipeline = RemotePipeline(self, self.load(**kwargs))
        self.pipeline = pipeline
        return pipeline


def build_remote_pipeline(
    session: WorkerSession, class_name: str, components: Mapping[str, Any], *, from_pretrained: bool = False
) -> RemotePipeline:
    """A new diffusers pipeline built in ``session``'s worker from its objects (handles) and data.

    ``from_pretrained=False`` is ``class_name(**components)``; ``True`` is ``class_name.from_pretrained(<the
    worker's model>, **components)``. The pipeline shares the worker (and its components) with the others there.
    """
    reference, info = session.build_pipeline_in_worker(class_name, components, from_pretrained=from_pretrained)
    pipeline = RemotePipeline(session, info, handle=object.__getattribute__(reference, "_handle"))
    first = session.pipeline
    if isinstance(first, RemotePipeline):
        pipeline.safeloader = SimpleNamespace(**vars(first.safeloader))
    return pipeline


def _attribute(owner: RemoteReference, name: str) -> Any:
    session: WorkerSession = object.__getattribute__(owner, "_session")
    kind, value = session.get_attribute(object.__getattribute__(owner, "_handle"), name)
    if kind == "method":
        return RemoteMethod(owner, name)
    return _with_caller_paths(session, value) if name == "config" else value


def _with_caller_paths(session: WorkerSession, config: Any) -> Any:
    """A config whose ``_name_or_path`` names the worker's private view of the model shows the caller's path."""
    name = config.get("_name_or_path") if isinstance(config, Mapping) else None
    view, source = session.worker.model_dir, session.source_model_dir
    if not (isinstance(name, str) and view is not None and source is not None):
        return config
    view_text = str(view)
    if name == view_text or name.startswith(view_text + "/"):
        # In-process, diffusers records the path the caller passed; the worker only knows its private view.
        return frozen_dict({**config, "_name_or_path": str(source) + name[len(view_text) :]})
    return config


class RemoteObject(RemoteReference):
    """A handle to an object that stays in the worker: public attributes and methods by name, writes by name."""

    def __getattr__(self, name: str) -> Any:
        if not protocol.is_public_name(name):
            raise AttributeError(name)
        return _attribute(self, name)

    def __setattr__(self, name: str, value: object) -> None:
        # Writing data (or a handle, or an allow-listed library object) into the worker cannot make the caller run
        # anything; private names are allowed for diffusers' documented ``pipe._interrupt = True`` pattern.
        session: WorkerSession = object.__getattribute__(self, "_session")
        session.set_attribute(object.__getattribute__(self, "_handle"), name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{name} cannot be deleted on a sandboxed object; set it to another value instead")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        session: WorkerSession = object.__getattribute__(self, "_session")
        return call_with_assets(session, object.__getattribute__(self, "_handle"), None, args, kwargs)

    def __reduce_ex__(self, protocol_version: Any) -> Any:
        raise TypeError("a sandboxed object cannot be pickled: it lives in the worker process, not in this one")

    def __repr__(self) -> str:
        return (
            f"<RemoteObject {printable(object.__getattribute__(self, '_type_name'))} "
            f"#{object.__getattribute__(self, '_handle')} in the sandboxed worker>"
        )


class RemoteMethod:
    """A method of a worker object; holds its owner, so the handle stays alive until the call has answered."""

    def __init__(self, owner: RemoteReference, name: str) -> None:
        self.owner = owner
        self.name = name

    @property
    def session(self) -> WorkerSession:
        return object.__getattribute__(self.owner, "_session")

    @property
    def handle(self) -> int:
        return object.__getattribute__(self.owner, "_handle")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_with_assets(self.session, self.handle, self.name, args, kwargs)

    def __reduce_ex__(self, protocol_version: Any) -> Any:
        raise TypeError("a method of a sandboxed object cannot be pickled: its object lives in the worker process")

    def __repr__(self) -> str:
        return f"<RemoteMethod {self.name} of worker object #{self.handle}>"


_REPR_LIMIT = 20_000


class RemotePipeline(RemoteObject):
    """Behaves like the ``DiffusionPipeline`` in the worker; results come back as data."""

    def __init__(
        self, session: WorkerSession, info: Mapping[str, Any], *, handle: int = protocol.PIPELINE_HANDLE
    ) -> None:
        type_name = str(info.get("type", "DiffusionPipeline"))[:100]
        super().__init__(session, handle, type_name if type_name.isidentifier() else "DiffusionPipeline")
        object.__setattr__(self, "_info", dict(info))
        if handle != protocol.PIPELINE_HANDLE:
            session.hold(handle)
            session._pipelines[handle] = self
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
    def config(self) -> Any:
        """The pipeline's config as diffusers' ``FrozenDict`` (read from the worker each time: it can change)."""
        return _attribute(self, "config")

    @property
    def components(self) -> dict[str, Any]:
        """Name → component: worker objects as handles that work as components of another pipeline, data as data."""
        components = _attribute(self, "components")
        return dict(components) if isinstance(components, Mapping) else {}

    @property
    def device(self) -> Any:
        return _attribute(self, "device")

    @property
    def dtype(self) -> Any:
        return _attribute(self, "dtype")

    def to(self, *args: Any, **kwargs: Any) -> RemotePipeline:
        self.session.call(object.__getattribute__(self, "_handle"), "to", args, kwargs)
        return self

    def manual_seed(self, seed: int) -> None:
        """``torch.manual_seed(seed)``: the caller's global RNG is carried to the worker with every call."""
        import torch

        torch.manual_seed(seed)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.session.call(object.__getattribute__(self, "_handle"), "set_progress_bar_config", (), kwargs)

    def from_pipe(self, pipeline: RemotePipeline | None = None, **kwargs: Any) -> RemotePipeline:
        """diffusers' ``from_pipe``, built in this pipeline's worker (see :mod:`safeloader.remote_pipelines`)."""
        from safeloader.remote_pipelines import from_pipe

        return from_pipe(self if pipeline is None else pipeline, **kwargs)

    def close(self) -> None:
        """Stop the worker (shared by every pipeline built from this one's components)."""
        self.session.close()

    def __enter__(self) -> RemotePipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        """As diffusers prints a pipeline: its class and its config as sorted JSON (computed here from data)."""
        type_name = object.__getattribute__(self, "_type_name")
        try:
            config = self.config
        except SafeLoaderError:
            return f"<RemotePipeline {printable(type_name)} (its sandboxed worker is closed)>"
        text = f"{type_name} {config_json(type_name, config if isinstance(config, Mapping) else {})}"
        # The class name and config values are the worker's text: shown with its controls made visible.
        return printable(text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "…", keep="\n")


def config_json(class_name: str, config: Mapping[str, Any]) -> str:
    """``ConfigMixin.to_json_string`` of a config held as data (diffusers' own rules, never its objects)."""
    import diffusers

    def saveable(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [saveable(item) for item in value]
        if isinstance(value, Mapping):
            return {str(key): saveable(item) for key, item in value.items()}
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        if hasattr(value, "tolist") and not isinstance(value, RemoteReference):
            return value.tolist()
        return repr(value)

    data = {str(key): saveable(value) for key, value in config.items()}
    data["_class_name"] = class_name
    data["_diffusers_version"] = diffusers.__version__
    for hidden in ("_ignore_files", "_use_default_values", "_pre_quantization_dtype"):
        data.pop(hidden, None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


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
