"""``from_pipe`` on a sandboxed pipeline: the new pipeline is built in the same worker, sharing its components.

``DiffusionPipeline.from_pipe(remote_pipe, custom_pipeline=...)`` (safeloader's, or diffusers' under
``install()``) and ``remote_pipe.from_pipe(...)`` resolve, verify and audit the ``custom_pipeline`` code exactly
as ``from_pretrained`` does, then ask the worker that holds ``remote_pipe`` to build the new pipeline with
diffusers' own ``from_pipe``; the modules are shared in place, nothing is reloaded or copied.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from safeloader.errors import InvalidSpecError, RemoteCodeNotTrusted
from safeloader.ipc import protocol
from safeloader.policy import Policy, load_policy
from safeloader.proxy import RemotePipeline, WorkerSession


class DerivedRemotePipeline(RemotePipeline):
    """A pipeline ``from_pipe`` built in the worker of another; it shares that worker (and its components)."""

    def __init__(self, session: WorkerSession, info: dict[str, Any]) -> None:
        handle = info.get("handle")
        if not isinstance(handle, int) or isinstance(handle, bool):
            from safeloader.errors import ProtocolError

            raise ProtocolError("the worker answered from_pipe with a malformed reply; do not trust the pipeline code.")
        RemotePipeline.__init__(self, session, info)
        object.__setattr__(self, "_handle", handle)

    @property
    def device(self) -> Any:
        return self.session.get_attribute(object.__getattribute__(self, "_handle"), "device")[1]

    @property
    def dtype(self) -> Any:
        return self.session.get_attribute(object.__getattribute__(self, "_handle"), "dtype")[1]

    def to(self, *args: Any, **kwargs: Any) -> DerivedRemotePipeline:
        self.session.call(object.__getattribute__(self, "_handle"), "to", args, kwargs)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.session.call(object.__getattribute__(self, "_handle"), "set_progress_bar_config", (), kwargs)

    def __repr__(self) -> str:
        return f"<RemotePipeline {object.__getattribute__(self, '_type_name')} (from_pipe) in the sandboxed worker>"


def from_pipe(
    pipeline: Any,
    *,
    custom_pipeline: str | os.PathLike[str] | None = None,
    custom_revision: str | None = None,
    trust_remote_code: bool = False,
    policy: str | os.PathLike[str] | Policy | None = None,
    lockfile: str | os.PathLike[str] | None = None,
    _pipeline_class_name: str | None = None,
    **kwargs: Any,
) -> DerivedRemotePipeline:
    """Gate ``custom_pipeline`` (if any), then build the new pipeline from ``pipeline`` in its worker."""
    from pathlib import Path

    from safeloader.dropin import audit_foreign_code, worker_kwargs
    from safeloader.foreign_code import foreign_code_of
    from safeloader.resolve import resolve_pipeline

    if not isinstance(pipeline, RemotePipeline):
        raise InvalidSpecError(
            "from_pipe needs a pipeline safeloader loaded (a RemotePipeline); load the source pipeline with "
            "safeloader.DiffusionPipeline.from_pretrained first."
        )
    info = pipeline.safeloader
    resolved_policy = load_policy(policy) if policy is not None else info.policy or load_policy(None)
    model = getattr(info, "model", None)
    session = pipeline.session
    manifests = []
    if custom_pipeline is not None:
        spec = os.fspath(custom_pipeline)
        if not trust_remote_code:
            raise RemoteCodeNotTrusted(
                f"from_pipe with custom_pipeline {spec!r} would run code that is not part of diffusers; read it with "
                "`safeloader fetch`/`safeloader audit`, then pass trust_remote_code=True to run it sandboxed."
            )
        manifests.append(
            resolve_pipeline(
                spec,
                revision=custom_revision,
                policy=resolved_policy,
                model_repo=getattr(model, "repo_id", None),
                model_revision=getattr(model, "commit", None),
                lockfile=None if lockfile is None else Path(lockfile),
            )
        )
    entry = manifests[0].entry if manifests else None
    foreign = foreign_code_of(manifests, entry, [f"custom_pipeline {m.source_id}" for m in manifests])
    audit_report = audit_foreign_code(foreign, resolved_policy)
    encoded = worker_kwargs(kwargs, resolved_policy)
    encoded.pop("use_safetensors", None)  # from_pipe loads no weights
    reply = session.request(
        {
            "op": protocol.FROM_PIPE,
            "source": object.__getattribute__(pipeline, "_handle"),
            "model_dir": str(session.worker.model_dir),
            "entry": entry,
            "code": dict(foreign.code),
            "hashes": dict(foreign.hashes),
            "pipeline_class": None if entry else _pipeline_class_name,
            "kwargs": encoded,
            "restricted_python": "enforce" if resolved_policy.audit.restricted_python == "enforce" else "off",
        },
        timeout_s=resolved_policy.sandbox.load_timeout_s,
        doing="building the pipeline with from_pipe",
    )
    derived = DerivedRemotePipeline(session, reply if isinstance(reply, dict) else {})
    derived.safeloader = SimpleNamespace(
        audit=audit_report,
        sandbox=session.sandbox_report,
        manifests=foreign.manifests,
        manifest=foreign.manifests[-1] if foreign.manifests else None,
        events=session.events,
        policy=resolved_policy,
        model=model,
    )
    return derived
