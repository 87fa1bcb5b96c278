"""``safeloader.DiffusionPipeline.from_pretrained``: diffusers' call, with every foreign byte gated.

The sequence is always resolve → verify → audit → sandboxed load, and the result is a
:class:`safeloader.proxy.RemotePipeline` that behaves like the ``DiffusionPipeline`` it stands for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safeloader._compat.diffusers_internals import check_diffusers_version
from safeloader.errors import AuditDenied, InvalidSpecError
from safeloader.foreign_code import ForeignCode, collect_foreign_code
from safeloader.model_source import ModelSource, resolve_model
from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")

#: Keyword arguments the caller consumes itself; they never reach the worker.
CALLER_SIDE_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
#: Plain-data values that may cross into the worker as from_pretrained arguments.
_DATA_TYPES = (str, int, float, bool, type(None))


#: How deeply a from_pretrained argument may nest (a self-referencing list must not recurse forever).
_MAX_KWARG_DEPTH = 16


def _encode_kwarg(name: str, value: Any, depth: int = 0) -> Any:
    import torch

    from safeloader.ipc.session import RemoteReference

    if depth > _MAX_KWARG_DEPTH:
        raise InvalidSpecError(
            f"from_pretrained argument {name} nests more than {_MAX_KWARG_DEPTH} levels deep; pass plain, flat data."
        )
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, (*_DATA_TYPES, RemoteReference)):
        return value  # a remote object crosses as its handle, to the worker that holds it
    if isinstance(value, (list, tuple)):
        return [_encode_kwarg(name, item, depth + 1) for item in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _encode_kwarg(name, v, depth + 1) for k, v in value.items()}
    if _crosses_as_object(value):
        return value  # the session's encoder sends it as a handle or as the library object's data
    raise InvalidSpecError(
        f"from_pretrained argument {name}={type(value).__name__} is an object and cannot cross into the sandbox; "
        "pass plain data (dtype, strings, numbers), a diffusers scheduler, model or attention processor, "
        "a component of a sandboxed pipeline, or load that component inside the pipeline instead."
    )


def _crosses_as_object(value: Any) -> bool:
    from safeloader.ipc.library_objects import LibraryObjectRefused, library_payload
    from safeloader.ipc.session import RemoteReference

    if isinstance(value, RemoteReference):
        return True
    try:
        return library_payload(value) is not None
    except LibraryObjectRefused:
        return False


def worker_kwargs(kwargs: Mapping[str, Any], policy: Policy) -> dict[str, Any]:
    encoded = {name: _encode_kwarg(name, value) for name, value in kwargs.items()}
    if not policy.weights.allow_pickle:
        # diffusers then never falls back to .bin/.ckpt files, whatever the model folder holds.
        encoded["use_safetensors"] = True
    return encoded


def audit_foreign_code(foreign: ForeignCode, policy: Policy) -> Any:
    """Audit every verified byte that may run; raise :class:`AuditDenied` on a ``deny`` verdict."""
    from safeloader.audit import audit_sources

    if foreign.empty:
        return None
    entry = foreign.pipeline_entry or sorted(foreign.code)[0]
    label = ", ".join(m.source_id for m in foreign.manifests)
    report = audit_sources(foreign.code, policy, entry=entry, label=label)
    if report.verdict == "deny":
        raise AuditDenied(
            f"the audit denied {label} under policy {policy.name!r} "
            f"({len(report.findings)} finding(s), e.g. {report.findings[0].rule_id}: {report.findings[0].message}); "
            "run `safeloader audit` on it to read the report.",
            report=report,
        )
    if report.verdict == "warn":
        logger.warning(
            "audit of %s found %d issue(s) under policy %r; loading anyway (audit mode %r)",
            label,
            len(report.findings),
            policy.name,
            policy.audit.mode,
        )
    return report


def load(
    pretrained_model_name_or_path: str | os.PathLike[str],
    *,
    custom_pipeline: str | os.PathLike[str] | None = None,
    custom_revision: str | None = None,
    trust_remote_code: bool = False,
    policy: str | os.PathLike[str] | Policy | None = None,
    lockfile: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Resolve → verify → audit → sandboxed load; see :meth:`DiffusionPipeline.from_pretrained`."""
    check_diffusers_version()
    resolved_policy = load_policy(policy)
    pipeline_class = kwargs.pop("_pipeline_class_name", None)
    caller = {name: kwargs.pop(name) for name in CALLER_SIDE_KWARGS if name in kwargs}
    remote_session = _session_of_remote_components(kwargs)
    if caller.get("force_download"):
        logger.info("force_download is ignored: safeloader re-verifies cached bytes on every load")
    model: ModelSource = resolve_model(
        pretrained_model_name_or_path,
        policy=resolved_policy,
        revision=caller.get("revision"),
        token=caller.get("token"),
        cache_dir=caller.get("cache_dir"),
        local_files_only=bool(caller.get("local_files_only", False)),
    )
    if remote_session is not None:
        _check_components_model(remote_session, model)
        if remote_session.pipeline is not None:
            # Components of a loaded pipeline: a new pipeline object beside it in the same worker.
            return _load_in_components_worker(remote_session, custom_pipeline, pipeline_class, kwargs, resolved_policy)
    # Models loaded with safeloader.AutoModel (a worker without a pipeline yet) are used in place, through the gate.
    session = remote_session or _early_worker(model, custom_pipeline, resolved_policy)
    if session is not None:
        give_hub_access(session, caller)
    try:
        foreign = collect_foreign_code(
            model,
            custom_pipeline=custom_pipeline,
            custom_revision=custom_revision,
            trust_remote_code=trust_remote_code,
            policy=resolved_policy,
            token=caller.get("token"),
            local_files_only=bool(caller.get("local_files_only", False)),
            lockfile=lockfile,
        )
        audit_report = audit_foreign_code(foreign, resolved_policy)
        from_pretrained_kwargs = worker_kwargs(kwargs, resolved_policy)
        if session is None:
            return _load_in_process(model, pipeline_class, kwargs, resolved_policy)
        pipe = session.load_pipeline(
            code=foreign.code,
            code_hashes=foreign.hashes,
            entry=foreign.pipeline_entry,
            from_pretrained_kwargs=from_pretrained_kwargs,
            restricted_python="enforce" if resolved_policy.audit.restricted_python == "enforce" else "off",
            pipeline_class=None if foreign.pipeline_entry else pipeline_class,
        )
    except BaseException:
        if session is not None and remote_session is None:
            session.close()
        raise
    info = pipe.safeloader
    info.audit = audit_report
    info.manifests = foreign.manifests
    info.manifest = foreign.manifests[-1] if foreign.manifests else None
    info.policy = resolved_policy
    info.model = model
    return pipe


def _session_of_remote_components(kwargs: Mapping[str, Any]) -> Any:
    """The one worker session the sandboxed components among ``kwargs`` belong to, or ``None`` when there are none."""
    from safeloader.ipc.session import RemoteReference

    sessions = {
        id(session): session
        for value in kwargs.values()
        if isinstance(value, RemoteReference)
        for session in (object.__getattribute__(value, "_session"),)
    }
    if len(sessions) > 1:
        raise InvalidSpecError(
            "from_pretrained got components of different sandboxed pipelines; each pipeline has its own worker, so "
            "pass components of one pipeline only (load the others again)."
        )
    return next(iter(sessions.values()), None)


def _check_components_model(session: Any, model: ModelSource) -> None:
    """Objects of one worker come from the one model folder it was started for (the only one it can read)."""
    from pathlib import Path

    worker_model = session.source_model_dir
    if worker_model is None or Path(worker_model).resolve() != Path(model.directory).resolve():
        raise InvalidSpecError(
            f"components of a sandboxed pipeline or model can only be used with the model its worker was started "
            f"for ({worker_model}); load {model.repo_id or model.directory} on its own instead."
        )


def _load_in_components_worker(
    session: Any,
    custom_pipeline: str | os.PathLike[str] | None,
    pipeline_class: str | None,
    kwargs: dict[str, Any],
    policy: Policy,
) -> Any:
    """``from_pretrained(model, unet=pipe.unet)``: build the pipeline in the worker that holds the components."""
    from safeloader.proxy import build_remote_pipeline

    if custom_pipeline is not None:
        raise InvalidSpecError(
            "components of a sandboxed pipeline cannot be combined with custom_pipeline code; load the custom "
            "pipeline on its own, then set its components (pipe.unet = other.unet) within one worker."
        )
    return build_remote_pipeline(
        session, pipeline_class or "DiffusionPipeline", worker_kwargs(kwargs, policy), from_pretrained=True
    )


def _early_worker(model: ModelSource, custom_pipeline: str | os.PathLike[str] | None, policy: Policy) -> Any:
    """Start the sandboxed worker now, unless this load runs in-process.

    The worker boots (imports torch and diffusers) while this process resolves, verifies and audits the
    code; it receives code only once the audit allowed it, and is killed if anything refuses the load.
    """
    from safeloader.foreign_code import model_repo_entries
    from safeloader.proxy import WorkerSession

    spec = None if custom_pipeline is None else os.fspath(custom_pipeline)
    has_foreign_code = spec is not None or bool(model_repo_entries(model, spec)[0])
    if not has_foreign_code and not policy.sandbox.isolate_plain_pipelines:
        return None
    return WorkerSession.start(policy, model_dir=model.directory, wait=False)


def give_hub_access(session: Any, caller: Mapping[str, Any]) -> None:
    """Assets and brokered downloads of this pipeline use the caller's token and cache (never the worker's)."""
    from safeloader.assets.broker import broker_for
    from safeloader.assets.resolve import HubAccess

    cache_dir = caller.get("cache_dir")
    broker_for(session).access = HubAccess(
        token=caller.get("token"),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        local_files_only=bool(caller.get("local_files_only", False)),
    )


def _load_in_process(model: ModelSource, pipeline_class: str | None, kwargs: dict[str, Any], policy: Policy) -> Any:
    logger.warning(
        "policy %r sets [sandbox] isolate_plain_pipelines = false: loading %s IN-PROCESS, without the sandbox",
        policy.name,
        model.repo_id or model.directory,
    )
    import diffusers

    from safeloader.patch import original_from_pretrained

    in_process_class = getattr(diffusers, pipeline_class) if pipeline_class else diffusers.DiffusionPipeline
    return original_from_pretrained(in_process_class)(model.directory, **{**kwargs, **_safetensors(policy)})


def _safetensors(policy: Policy) -> dict[str, Any]:
    return {} if policy.weights.allow_pickle else {"use_safetensors": True}


class DiffusionPipeline:
    """Drop-in for ``diffusers.DiffusionPipeline`` whose ``from_pretrained`` runs foreign code sandboxed.

    Example::

        from safeloader import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained("org/model", custom_pipeline="one_step_unet",
                                                 custom_revision="<sha>", trust_remote_code=True,
                                                 policy="acme.toml")
        image = pipe(num_inference_steps=20).images[0]
        pipe.close()
    """

    def __init__(self) -> None:
        raise TypeError("safeloader.DiffusionPipeline is a loader; call DiffusionPipeline.from_pretrained(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        custom_pipeline: str | os.PathLike[str] | None = None,
        custom_revision: str | None = None,
        trust_remote_code: bool = False,
        policy: str | os.PathLike[str] | Policy | None = None,
        lockfile: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Same signature and semantics as diffusers, plus ``policy`` and ``lockfile``.

        ``token``, ``revision``, ``cache_dir`` and ``local_files_only`` are used by the caller to
        download; the token never reaches the worker. ``policy`` is a built-in name, a path or a
        :class:`~safeloader.policy.Policy`; without one, ``$SAFELOADER_POLICY`` or ``default``.
        """
        return load(
            pretrained_model_name_or_path,
            custom_pipeline=custom_pipeline,
            custom_revision=custom_revision,
            trust_remote_code=trust_remote_code,
            policy=policy,
            lockfile=lockfile,
            **kwargs,
        )

    @classmethod
    def from_pipe(cls, pipeline: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pipe`` for a sandboxed pipeline: built in its worker, components shared.

        ``custom_pipeline`` goes through the same gate as in :meth:`from_pretrained` (``trust_remote_code``,
        ``policy``, ``lockfile``).
        """
        from safeloader.remote_pipelines import from_pipe

        return from_pipe(pipeline, **kwargs)
