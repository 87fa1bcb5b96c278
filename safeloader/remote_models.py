"""Caller-side stand-ins for models, tokenizers, configs and transformers pipelines held by the worker.

A :class:`RemoteModel` is called like the model (tensors in, tensors out), and answers ``.config``, ``.dtype``
and ``.device`` from data the worker sent; ``.to()`` moves the model in the worker. Library output classes
(``ModelOutput``, ``BatchEncoding``) come back as :class:`~safeloader.ipc.codec.GenericOutput`: fields by
name, attribute or index. Nothing the worker sends is imported or unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from safeloader.errors import ProtocolError
from safeloader.ipc import protocol
from safeloader.ipc.codec import GenericOutput, PublicFieldMapping
from safeloader.proxy import RemoteObject, WorkerSession


def from_data(value: Any, depth: int = 0) -> Any:
    """Rebuild output containers the worker sent as marked fields; everything else is already data."""
    if depth > 32:
        return value
    if isinstance(value, dict):
        type_name = value.get(protocol.OUTPUT_MARK)
        fields = value.get("fields")
        if (
            isinstance(type_name, str)
            and isinstance(fields, dict)
            and len(value) == 2
            and all(protocol.is_public_name(key) for key in fields)
        ):
            # Only public identifier field names: an output must never answer a protocol attribute.
            return GenericOutput(type_name[:100], {str(k): from_data(v, depth + 1) for k, v in fields.items()})
        return {key: from_data(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [from_data(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(from_data(item, depth + 1) for item in value)
    return value


def model_call(session: WorkerSession, handle: int, method: str | None, args: Any, kwargs: Mapping[str, Any]) -> Any:
    value = session.request(
        {"op": protocol.MODEL_CALL, "target": handle, "method": method, "args": list(args), "kwargs": dict(kwargs)},
        timeout_s=session.policy.sandbox.call_timeout_s,
        doing="calling the model" if method is None else f"calling {method}()",
    )
    return from_data(value)


class ConfigView(PublicFieldMapping):
    """A model's configuration as data: keys, and attribute access for public names."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


class _ModelMethod:
    def __init__(self, session: WorkerSession, handle: int, name: str) -> None:
        self.session = session
        self.handle = handle
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return model_call(self.session, self.handle, self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self.name} of worker object #{self.handle}>"


def check_info(info: object, doing: str) -> dict[str, Any]:
    if not isinstance(info, dict) or not isinstance(info.get("handle"), int) or isinstance(info.get("handle"), bool):
        raise ProtocolError(
            f"the worker answered {doing} with a malformed reply; the repository code is misbehaving — do not trust it."
        )
    return info


class RemoteModel(RemoteObject):
    """A model (or tokenizer, processor, transformers pipeline) that lives in the sandboxed worker."""

    def __init__(self, session: WorkerSession, info: Mapping[str, Any]) -> None:
        info = check_info(info, "the load")
        super().__init__(session, int(info["handle"]), str(info.get("type", "Model"))[:100])
        object.__setattr__(self, "_info", dict(info))
        object.__setattr__(
            self,
            "safeloader",
            SimpleNamespace(audit=None, manifests=(), sandbox=session.sandbox_report, events=session.events),
        )

    def __setattr__(self, name: str, value: object) -> None:
        if name == "safeloader":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if not protocol.is_public_name(name):
            raise AttributeError(name)
        kind, value = self.session.get_attribute(object.__getattribute__(self, "_handle"), name)
        if kind == "method":
            return _ModelMethod(self.session, object.__getattribute__(self, "_handle"), name)
        return from_data(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return model_call(self.session, object.__getattribute__(self, "_handle"), None, args, kwargs)

    @property
    def session(self) -> WorkerSession:
        return object.__getattribute__(self, "_session")

    @property
    def config(self) -> ConfigView:
        return ConfigView(object.__getattribute__(self, "_info").get("config") or {})

    @property
    def dtype(self) -> Any:
        return object.__getattribute__(self, "_info").get("dtype")

    @property
    def device(self) -> Any:
        return object.__getattribute__(self, "_info").get("device")

    def to(self, *args: Any, **kwargs: Any) -> RemoteModel:
        """Move or cast the model in the worker (``model.to("cuda")``, ``model.to(torch.float16)``)."""
        info = model_call(self.session, object.__getattribute__(self, "_handle"), "to", args, kwargs)
        if isinstance(info, dict):
            object.__getattribute__(self, "_info").update(
                {key: info[key] for key in ("dtype", "device", "config") if key in info}
            )
        return self

    def close(self) -> None:
        """Stop the worker (and everything it holds, pipelines sharing it included)."""
        self.session.close()

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteModel {object.__getattribute__(self, '_type_name')} in the sandboxed worker>"


class RemoteConfig(RemoteModel):
    """A configuration loaded with its repository's own class; its values are data (``to_dict()``, attributes)."""

    def __getattr__(self, name: str) -> Any:
        config = object.__getattribute__(self, "_info").get("config") or {}
        if name in config and protocol.is_public_name(name):
            return from_data(config[name])
        return super().__getattr__(name)

    def to_dict(self) -> dict[str, Any]:
        return dict(object.__getattribute__(self, "_info").get("config") or {})

    def __repr__(self) -> str:
        return f"<RemoteConfig {object.__getattribute__(self, '_type_name')} in the sandboxed worker>"
