"""The messages caller and worker exchange: every message is a msgpack map with an ``op`` key.

Caller → worker: ``load``, ``getattr``, ``setattr``, ``call``, ``build``, ``describe``, ``seed``, ``release``,
``close``, and, while a call is
waiting on a callback, ``callback_result`` / ``callback_error``. Worker → caller: ``hello`` once at start,
then for each request exactly one ``result`` or ``error``, possibly preceded by ``progress`` and
``callback`` messages. Requests nest only through callbacks, so the exchange is strictly last-in first-out.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
#: How long each side polls for the other's next message before it sleeps, while the other answers within
#: it (see :class:`safeloader.ipc.channel.Channel`). A sleep and wake-up cost about 50 µs each way on the
#: virtual machines measured, as much as the rest of a small call; 200 µs covers a small call's answer.
SPIN_S = 0.0002
#: The handle of the loaded pipeline object in the worker.
PIPELINE_HANDLE = 0

HELLO = "hello"
LOAD = "load"
GETATTR = "getattr"
CALL = "call"
#: ``obj.name = value`` on a worker object (any non-dunder name: writing cannot make the caller run anything).
SETATTR = "setattr"
#: Build a diffusers pipeline class in the worker from handles and data: ``cls(**kwargs)`` or
#: ``cls.from_pretrained(model, **kwargs)``; replies ``{"pipeline": <handle>, "info": describe(...)}``.
BUILD = "build"
DESCRIBE = "describe"
RELEASE = "release"
SEED = "seed"
CLOSE = "close"
RESULT = "result"
ERROR = "error"
PROGRESS = "progress"
CALLBACK = "callback"
CALLBACK_RESULT = "callback_result"
CALLBACK_ERROR = "callback_error"
#: Asset calls (safeloader.assets): caller → worker, ``stage`` hands files over into a private folder,
#: ``output_dir`` makes a private folder for a method to write, ``collect`` reads it back, ``discard``
#: removes a folder.
STAGE = "stage"
OUTPUT_DIR = "output_dir"
COLLECT = "collect"
DISCARD = "discard"
#: Brokered Hub downloads: worker → caller inside a call, answered by one ``broker_result``.
BROKER = "broker"
BROKER_RESULT = "broker_result"

#: ``kind`` of an ``error`` message: an exception raised by pipeline code, a refusal by the worker
#: (hash mismatch, forbidden name), or a result that broke the IPC limits.
ERROR_EXCEPTION = "exception"
ERROR_REFUSED = "refused"
ERROR_LIMIT = "limit"


def is_public_name(name: object) -> bool:
    """Names the caller may ask for by attribute or method: no dunder or private protocol names."""
    return isinstance(name, str) and name.isidentifier() and not name.startswith("_")


def is_writable_name(name: object) -> bool:
    """Names the caller may *set* on a worker object: any identifier but dunders (``pipe._interrupt = True``)."""
    return isinstance(name, str) and name.isidentifier() and not (name.startswith("__") and name.endswith("__"))


#: Model loads (issue 11), served by :mod:`safeloader.worker.model_loaders`: ``load_model`` builds a diffusers or
#: transformers object from verified ``auto_map`` code and answers its handle; ``model_call`` calls a held
#: object and answers library output classes as plain fields; ``from_pipe`` builds a pipeline from a held one.
LOAD_MODEL = "load_model"
MODEL_CALL = "model_call"
FROM_PIPE = "from_pipe"
#: Key marking a library output container (``ModelOutput``, ``BatchEncoding``) answered as plain fields.
OUTPUT_MARK = "__safeloader_output__"
