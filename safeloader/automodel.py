"""``safeloader.AutoModel`` and the shared loader behind ``safeloader.transformers``: auto_map code, sandboxed.

The sequence is the drop-in's: resolve the repository at one commit → find the code its ``auto_map`` names →
resolve and verify those files (pins, lockfile, signatures, ``[sources]``) → audit them → build the object in
the sandboxed worker with diffusers' or transformers' own ``from_pretrained``. The caller gets a
:class:`~safeloader.remote_models.RemoteModel` (or ``RemoteConfig``); the model can be handed to
``DiffusionPipeline.from_pretrained`` of the same repository, which then loads in the same worker.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from safeloader.errors import InvalidSpecError, RemoteCodeNotTrusted
from safeloader.ipc import protocol
from safeloader.model_source import ModelSource, resolve_model
from safeloader.policy import Policy, load_policy

logger = logging.getLogger("safeloader")

#: Arguments the caller uses to download; they never reach the worker.
_CALLER_SIDE = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
#: Loaders that build torch modules: pickle weights stay off unless the policy allows them.
_MODEL_KINDS = ("AutoModel", "pipeline")


def library_for(model: ModelSource, subfolder: str | None) -> str:
    """diffusers or transformers, as ``diffusers.AutoModel`` decides it for this folder."""
    entry = model.model_index.get(subfolder) if subfolder else None
    if isinstance(entry, list) and entry and entry[0] == "transformers":
        return "transformers"
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    try:
        config = json.loads((model.directory / prefix / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    if isinstance(config, dict) and "_class_name" in config:
        return "diffusers"
    return "transformers"


def shared_session(worker: Any, model: ModelSource) -> Any:
    from safeloader.ipc.session import RemoteReference

    if worker is None:
        return None
    if not isinstance(worker, RemoteReference):
        raise InvalidSpecError("worker= must be a model or pipeline safeloader returned; pass one of those or omit it.")
    session = object.__getattribute__(worker, "_session")
    source = getattr(getattr(worker, "safeloader", None), "model", None)
    held = Path(source.directory).resolve() if isinstance(source, ModelSource) else None
    if held != Path(model.directory).resolve():
        raise InvalidSpecError(
            f"the worker given in worker= serves {held}, not {model.directory}; "
            "objects of one worker must come from the same repository — omit worker= to start another."
        )
    return session


def load_remote(
    pretrained_model_name_or_path: str | os.PathLike[str],
    *,
    library: str,
    kind: str,
    task: str | None = None,
    subfolder: str | None = None,
    trust_remote_code: bool = False,
    policy: str | os.PathLike[str] | Policy | None = None,
    lockfile: str | os.PathLike[str] | None = None,
    worker: Any = None,
    **kwargs: Any,
) -> Any:
    """Resolve → verify → audit → build ``library.kind`` in the worker; returns its remote stand-in.

    ``library`` is ``"diffusers"``, ``"transformers"`` or ``"auto"`` (decided as ``diffusers.AutoModel`` does).
    """
    from safeloader.auto_map import code_entries
    from safeloader.dropin import audit_foreign_code, give_hub_access, worker_kwargs
    from safeloader.foreign_code import foreign_code_of, resolve_repo_code
    from safeloader.proxy import WorkerSession
    from safeloader.remote_models import RemoteConfig, RemoteModel

    resolved_policy = load_policy(policy)
    caller = {name: kwargs.pop(name) for name in _CALLER_SIDE if name in kwargs}
    local_files_only = bool(caller.get("local_files_only", False))
    model = resolve_model(
        pretrained_model_name_or_path,
        policy=resolved_policy,
        revision=caller.get("revision"),
        token=caller.get("token"),
        cache_dir=caller.get("cache_dir"),
        local_files_only=local_files_only,
        pipeline=False,
    )
    label = model.repo_id or str(model.directory)
    if library == "auto":
        library = library_for(model, subfolder)
    entries = code_entries(model, subfolder)
    if entries and not trust_remote_code:
        raise RemoteCodeNotTrusted(
            f"{label} ships code that {library}.{kind} would run ({', '.join(entries)}); "
            "read it with `safeloader audit`, then pass trust_remote_code=True to run it sandboxed."
        )
    shared = shared_session(worker, model)
    session = shared or WorkerSession.start(resolved_policy, model_dir=model.directory, wait=False)
    give_hub_access(session, caller)
    try:
        manifests = []
        if entries:
            manifests.append(
                resolve_repo_code(
                    model,
                    entries,
                    policy=resolved_policy,
                    token=caller.get("token"),
                    local_files_only=local_files_only,
                    lockfile=lockfile,
                )
            )
        foreign = foreign_code_of(manifests, None, [f"{entry} in {label}" for entry in entries])
        audit_report = audit_foreign_code(foreign, resolved_policy)
        encoded = worker_kwargs(kwargs, resolved_policy)
        if kind not in _MODEL_KINDS and not kind.startswith("AutoModel"):
            encoded.pop("use_safetensors", None)  # tokenizers, configs and processors take no such argument
        info = session.request(
            {
                "op": protocol.LOAD_MODEL,
                "model_dir": str(session.worker.model_dir),
                "library": library,
                "kind": kind,
                "task": task,
                "subfolder": subfolder,
                "code": dict(foreign.code),
                "hashes": dict(foreign.hashes),
                "kwargs": encoded,
                "restricted_python": "enforce" if resolved_policy.audit.restricted_python == "enforce" else "off",
                "package": "model",
            },
            timeout_s=resolved_policy.sandbox.load_timeout_s,
            doing=f"loading {library}.{kind}",
        )
        remote_class = RemoteConfig if kind == "AutoConfig" else RemoteModel
        remote = remote_class(session, info)
    except BaseException:
        if shared is None:
            session.close()
        raise
    remote.safeloader.audit = audit_report
    remote.safeloader.manifests = foreign.manifests
    remote.safeloader.manifest = foreign.manifests[-1] if foreign.manifests else None
    remote.safeloader.policy = resolved_policy
    remote.safeloader.model = model
    return remote


class RemoteLoader:
    """A loader class whose ``from_pretrained`` builds ``kind`` of ``library`` in the sandboxed worker.

    The drop-ins for diffusers' ``AutoModel`` and modular pipelines and for transformers' Auto classes are
    subclasses that only name what they load; every one goes through :func:`load_remote`.
    """

    library = "auto"
    kind = "AutoModel"
    #: How the error for ``RemoteLoader()`` names the class.
    public_name = "safeloader.AutoModel"

    def __init__(self) -> None:
        raise TypeError(f"{self.public_name} is a loader; call {self.kind}.from_pretrained(...).")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        trust_remote_code: bool = False,
        policy: str | os.PathLike[str] | Policy | None = None,
        lockfile: str | os.PathLike[str] | None = None,
        worker: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The library's ``from_pretrained`` plus ``policy``, ``lockfile`` and ``worker`` (share one)."""
        return load_remote(
            pretrained_model_name_or_path,
            library=cls.library,
            kind=cls.kind,
            subfolder=subfolder,
            trust_remote_code=trust_remote_code,
            policy=policy,
            lockfile=lockfile,
            worker=worker,
            **kwargs,
        )


class AutoModel(RemoteLoader):
    """Drop-in for ``diffusers.AutoModel`` whose ``auto_map`` code runs sandboxed.

    Example::

        from safeloader import AutoModel
        text_encoder = AutoModel.from_pretrained("org/pipeline", subfolder="text_encoder",
                                                 trust_remote_code=True, policy="acme.toml")
        hidden = text_encoder(input_ids).last_hidden_state
    """
