"""The worker's serve loop: answer the caller's requests over fd 3 until it closes the connection.

Results are data; any other object stays in the worker behind a numbered handle. Exceptions become
``error`` messages with the type name and traceback as text. The worker only ever answers: it never
initiates anything except progress and callback messages inside a call the caller made.
"""

from __future__ import annotations

import gc
import inspect
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from safeloader.ipc import protocol
from safeloader.ipc.channel import Channel
from safeloader.ipc.codec import CodecError, Decoder, Encoder, Ext, available_device
from safeloader.ipc.framing import PeerClosed
from safeloader.ipc.library_objects import LibraryObjectRefused, rebuild_library_object
from safeloader.ipc.rng import AGREED, RngStateError, checked_state, generator_state
from safeloader.sandbox.report import LayerStatus
from safeloader.worker.assets import WorkerAssets
from safeloader.worker.audit_hook import EventRecorder, install_recorder
from safeloader.worker.bridges import StepCallback, install_progress_forwarding
from safeloader.worker.code_loader import CodeRefused, VerifiedPackage
from safeloader.worker.dynamic_modules import defined_pipeline_class, route_dynamic_modules
from safeloader.worker.hub_broker import HubBroker, install_hub_broker
from safeloader.worker.model_loaders import HANDLERS as MODEL_HANDLERS
from safeloader.worker.model_loaders import LoadRefused
from safeloader.worker.pipeline_derivation import HANDLERS as DERIVATION_HANDLERS

IPC_FD = 3
#: Replies whose bulk buffers fit in this many bytes go through one reusable, pre-faulted transfer buffer
#: that the caller copies out of; larger ones in fresh sealed memfds the caller maps (see SECURITY.md).
TRANSFER_MAX_BYTES = 512 * 1024 * 1024
#: from_pretrained arguments that would fetch or run code other than the verified files.
_REFUSED_KWARGS = frozenset(
    {
        "custom_pipeline",
        "custom_revision",
        "trust_remote_code",
        "token",
        "cache_dir",
        "proxies",
        "force_download",
        "local_files_only",
        "mirror",
    }
)


class Refused(Exception):
    """The worker refuses a request (forbidden name, unknown handle, second load)."""


class CallbackFailed(Exception):
    """The caller's callback_on_step_end raised; the caller re-raises its own exception."""


class Worker:
    def __init__(self, sock: socket.socket, layers: Sequence[LayerStatus]) -> None:
        self.layers = list(layers)
        self.objects: dict[int, object] = {}
        self.handle_of: dict[int, int] = {}
        self.next_handle = protocol.PIPELINE_HANDLE + 1
        self.recorder: EventRecorder | None = None
        self.closing = False
        #: Private folders for files the caller hands over and for what methods write (safeloader.assets).
        self.assets = WorkerAssets()
        self.model_dir: Path | None = None
        #: The global CPU RNG state both sides agreed on after the last call, as bytes and as a checked tensor.
        self.agreed_global: tuple[bytes, Any] | None = None
        #: Requests handled so far, and their count when the global state was last agreed: when the agreeing
        #: call was the last request, nothing has drawn from the generator since and it need not be set again.
        self.requests_handled = 0
        self.agreed_after_request = -1
        self.channel = Channel(
            sock,
            Encoder(fallback=self._encode_handle, transfer_max=TRANSFER_MAX_BYTES),
            Decoder(
                on_handle=self._decode_handle,
                on_callback=self._decode_callback,
                on_library=self._decode_library_object,
                tensor_device=available_device,
            ),
        )

        self.channel.spin_s = protocol.SPIN_S

    # handles ------------------------------------------------------------------------------------------
    def _register(self, obj: object, handle: int | None = None) -> int:
        known = self.handle_of.get(id(obj))
        if known is not None and self.objects.get(known) is obj:
            return known
        if handle is None:
            handle, self.next_handle = self.next_handle, self.next_handle + 1
        self.objects[handle] = obj
        self.handle_of[id(obj)] = handle
        return handle

    def _encode_handle(self, obj: object) -> msgpack.ExtType:
        handle = self._register(obj)
        payload = msgpack.packb([handle, type(obj).__name__[:100]], use_bin_type=True)
        return msgpack.ExtType(Ext.HANDLE, payload)

    def _decode_handle(self, _code: int, payload: Any) -> object:
        handle = payload[0] if isinstance(payload, list) and payload else payload
        if not isinstance(handle, int) or handle not in self.objects:
            raise CodecError(f"handle {handle!r} does not name a live worker object")
        return self.objects[handle]

    def _decode_callback(self, _code: int, payload: Any) -> object:
        if not isinstance(payload, int):
            raise CodecError("a callback marker is malformed")
        return StepCallback(payload, self.ask)

    def _decode_library_object(self, _code: int, payload: Any) -> object:
        try:
            return rebuild_library_object(payload)
        except LibraryObjectRefused:
            raise
        except Exception as exc:  # the caller's data did not fit the class: refuse the request, keep serving
            raise LibraryObjectRefused(f"{type(exc).__name__}: {str(exc)[:1000]}") from None

    def _target(self, handle: object) -> object:
        if not isinstance(handle, int) or handle not in self.objects:
            raise Refused(f"handle {handle!r} does not name a live worker object")
        return self.objects[handle]

    # for the op handlers in their own modules (model_loaders, ...)
    register = _register
    target = _target

    # messaging ----------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    def ask(self, message: dict[str, Any]) -> Any:
        """Send a callback request, serving nested requests until its reply comes."""
        self.send(message)
        while True:
            request = self.receive()
            if request is None:
                continue
            if request["op"] == protocol.CALLBACK_RESULT:
                return request.get("tensors")
            if request["op"] == protocol.CALLBACK_ERROR:
                raise CallbackFailed(str(request.get("message", "the caller's callback failed")))
            self.dispatch(request)

    def receive(self, deadline: float | None = None) -> dict[str, Any] | None:
        """The next request, or ``None`` when it named a library object that cannot be rebuilt (answered here).

        The worker waits for its caller without a deadline; ``deadline`` (``time.monotonic()``) is for harnesses.
        """
        try:
            return self.channel.recv(deadline)
        except LibraryObjectRefused as exc:
            self.refuse(exc)
            return None

    def refuse(self, exc: Exception) -> None:
        self.send(
            {
                "op": protocol.ERROR,
                "kind": protocol.ERROR_REFUSED,
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": "",
                "events": self.events(),
            }
        )

    def events(self) -> list[dict[str, Any]]:
        return self.recorder.take() if self.recorder is not None else []

    def dispatch(self, request: dict[str, Any]) -> None:
        try:
            value = self.handle(request)
        except (CodeRefused, Refused, LoadRefused) as exc:
            self.refuse(exc)
            return
        except Exception as exc:  # every pipeline exception reaches the caller as text
            self.send(
                {
                    "op": protocol.ERROR,
                    "kind": protocol.ERROR_EXCEPTION,
                    "type": type(exc).__name__,
                    "message": str(exc)[:4000],
                    "traceback": traceback.format_exc()[-20000:],
                    "events": self.events(),
                }
            )
            return
        try:
            self.send({"op": protocol.RESULT, "value": value, "events": self.events()})
        except CodecError as exc:
            self.send(
                {
                    "op": protocol.ERROR,
                    "kind": protocol.ERROR_LIMIT,
                    "type": "CodecError",
                    "message": str(exc),
                    "traceback": "",
                    "events": self.events(),
                }
            )

    def serve(self) -> None:
        # A random cookie the caller tries to read out of this process: if it can, large tensors and arrays
        # cross by their address (safeloader.ipc.remote_read), else through the transfer buffer.
        self.probe_cookie = np.frombuffer(bytearray(os.urandom(16)), dtype=np.uint8)
        self.send(
            {
                "op": protocol.HELLO,
                "version": protocol.PROTOCOL_VERSION,
                "pid": os.getpid(),
                "layers": [layer.to_dict() for layer in self.layers],
                "probe": {"address": self.probe_cookie.ctypes.data, "cookie": self.probe_cookie.tobytes()},
            }
        )
        while not self.closing:
            try:
                request = self.receive()
            except PeerClosed:
                return
            if request is not None:
                self.dispatch(request)

    # requests -----------------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> Any:
        self.requests_handled += 1
        op = request["op"]
        self.release(request.get("release"))
        transport = request.get("transport")
        if isinstance(transport, dict):  # the caller's first request says how it reads large buffers
            self.channel.encoder.remote_read = transport.get("remote_read") is True
        if op == protocol.LOAD:
            return self.load(request)
        if op == protocol.GETATTR:
            return self.get_attribute(self._target(request.get("target")), request.get("name"))
        if op == protocol.CALL:
            return self.call(request)
        if op == protocol.SETATTR:
            name = request.get("name")
            if not protocol.is_writable_name(name):
                raise Refused(f"attribute {name!r} is a protocol name and is never set")
            setattr(self._target(request.get("target")), str(name), request.get("value"))
            return None
        if op == protocol.BUILD:
            return self.build(request)
        if op == protocol.DESCRIBE:
            return describe(self._target(request.get("target")))
        if op == protocol.SEED:
            import torch

            seed = request.get("seed")
            if not isinstance(seed, int) or not 0 <= seed < 2**64:
                raise Refused("a seed must be an integer in [0, 2**64)")
            torch.manual_seed(seed)
            return None
        handler = MODEL_HANDLERS.get(op) or DERIVATION_HANDLERS.get(op)
        if handler is not None:
            return handler(self, request)
        if op == protocol.RELEASE:
            return None
        if op in WorkerAssets.OPS:
            return self.assets.handle(request)
        if op == protocol.CLOSE:
            self.closing = True
            return None
        raise Refused(f"unknown request {op!r}")

    def release(self, handles: object) -> None:
        for handle in handles if isinstance(handles, list) else []:
            if type(handle) is int and handle != protocol.PIPELINE_HANDLE and handle in self.objects:
                self.handle_of.pop(id(self.objects.pop(handle)), None)

    def load(self, request: dict[str, Any]) -> Any:
        if protocol.PIPELINE_HANDLE in self.objects:
            raise Refused("this worker already holds a pipeline; start a new session for another load")
        model_dir = Path(str(request["model_dir"]))
        self.model_dir = model_dir
        kwargs = dict(request.get("kwargs") or {})
        refused = sorted(_REFUSED_KWARGS & set(kwargs))
        if refused:
            raise Refused(f"from_pretrained arguments {refused} are decided by safeloader, not passed through")
        code = request.get("code") or {}
        hashes = request.get("hashes") or {}
        if not isinstance(code, dict) or not isinstance(hashes, dict):
            raise Refused("the code and hash tables must be maps")
        package = VerifiedPackage(
            code,
            hashes,
            label=str(request.get("package", "remote")),
            restricted_python=str(request.get("restricted_python", "off")),
        )
        route_dynamic_modules(package, model_dir)
        if self.recorder is None:
            self.recorder = install_recorder(
                [str(model_dir), package.virtual_root], [tempfile.gettempdir()], code_root=package.virtual_root
            )
        entry = request.get("entry")
        if entry is not None:
            pipeline_class: Any = defined_pipeline_class(package.import_relpath(str(entry)))
        else:
            pipeline_class = diffusers_pipeline_class(request.get("pipeline_class"))
        pipeline = pipeline_class.from_pretrained(str(model_dir), **kwargs)
        self._register(pipeline, protocol.PIPELINE_HANDLE)
        return describe(pipeline)

    def get_attribute(self, target: object, name: object) -> Any:
        if not protocol.is_public_name(name):
            raise Refused(f"attribute {name!r} is not public; only public names cross the boundary")
        value = getattr(target, str(name))
        if inspect.ismethod(value) or inspect.isbuiltin(value) or inspect.isfunction(value):
            return {"kind": "method"}
        return {"kind": "value", "value": value}

    def build(self, request: dict[str, Any]) -> Any:
        """A diffusers pipeline built here from handles and data (``from_pipe``, ``Pipeline(**components)``)."""
        pipeline_class = diffusers_pipeline_class(request.get("class_name"))
        kwargs = request.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise Refused("the components of a pipeline to build must be a map")
        if request.get("from_pretrained") is True:
            refused = sorted(_REFUSED_KWARGS & set(kwargs))
            if refused or self.model_dir is None:
                raise Refused(f"from_pretrained arguments {refused} are decided by safeloader, not passed through")
            pipeline = pipeline_class.from_pretrained(str(self.model_dir), **kwargs)
        else:
            pipeline = pipeline_class(**kwargs)
        self._register(pipeline)
        return {"pipeline": pipeline, "info": describe(pipeline)}

    def call(self, request: dict[str, Any]) -> Any:
        # The generators decoded from this request, by slot; their states go back with the result.
        generators = list(self.channel.decoder.generators)
        sources = list(self.channel.decoder.generator_sources)
        rng = request.get("rng")
        if not isinstance(rng, dict):
            return self.invoke(request)
        import torch

        if rng.get("generators") != len(generators):
            raise Refused("the request's generator count does not match its generators")
        carried = rng.get("global")
        # What both sides agree on for this call; kept for the next one only when the call succeeds, as the
        # caller keeps it only then.
        agreed = self.agreed_global
        untouched = carried is AGREED and self.agreed_after_request == self.requests_handled - 1
        if carried is AGREED:
            # The caller's state is the one agreed after the last call: undo any drift since (see ipc.rng).
            if agreed is None:
                raise Refused("the request refers to an agreed global RNG state before any was exchanged")
        elif carried is not None:
            try:
                agreed = (carried, checked_state(carried, "cpu"))
            except RngStateError as exc:
                raise Refused(str(exc)) from None
        if carried is not None and agreed is not None and not untouched:
            torch.default_generator.set_state(agreed[1])
        value = self.invoke(request)
        global_after: bytes | bool | None = None
        if carried is not None and agreed is not None:
            state = generator_state(torch.default_generator)
            if state == agreed[0]:
                global_after = AGREED
            else:
                global_after, agreed = state, (state, checked_state(state, "cpu"))
            self.agreed_global = agreed
            self.agreed_after_request = self.requests_handled
        return {
            "value": value,
            # None when the generator lives on another kind of device than the caller's (no common state).
            "generators": [
                generator_state(generator) if generator.device.type == source.split(":")[0] else None
                for generator, source in zip(generators, sources, strict=True)
            ],
            "global": global_after,
        }

    def invoke(self, request: dict[str, Any]) -> Any:
        target = self._target(request.get("target"))
        method = request.get("method")
        if method is not None:
            if not protocol.is_public_name(method):
                raise Refused(f"method {method!r} is not public; only public names cross the boundary")
            function = getattr(target, str(method))
        else:
            function = target
        if not callable(function):
            raise Refused(f"{type(target).__name__}.{method} is not callable")
        args = request.get("args") or []
        kwargs = request.get("kwargs") or {}
        return function(*args, **kwargs)


def diffusers_pipeline_class(name: object) -> Any:
    """``DiffusionPipeline``, or the diffusers pipeline class the caller named (never foreign code)."""
    import diffusers

    if name is None:
        return diffusers.DiffusionPipeline
    candidate = getattr(diffusers, name, None) if isinstance(name, str) and protocol.is_public_name(name) else None
    if not (isinstance(candidate, type) and issubclass(candidate, diffusers.DiffusionPipeline)):
        raise Refused(f"{name!r} is not a pipeline class of diffusers")
    return candidate


def describe(target: object) -> dict[str, Any]:
    """A pipeline's shape as data: type, config, components (name → class name), device and dtype."""
    config = getattr(target, "config", None)
    components = getattr(target, "components", None)
    info: dict[str, Any] = {"type": type(target).__name__, "config": dict(config) if isinstance(config, dict) else None}
    if isinstance(components, dict):
        info["components"] = {
            str(name): None if value is None else type(value).__name__ for name, value in components.items()
        }
    for attribute in ("device", "dtype"):
        try:
            info[attribute] = getattr(target, attribute)
        except Exception:  # a pipeline without modules has no device: report None
            info[attribute] = None
    return info


def run_worker(layers: Sequence[LayerStatus]) -> int:
    """Import the heavy libraries, then serve fd 3 until the caller closes it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_MODULES_CACHE"] = os.path.join(tempfile.gettempdir(), "hf_modules")
    # Brokered downloads land in the worker's Hub cache: inside its private TMPDIR, where writes are expected.
    os.environ["HF_HUB_CACHE"] = os.path.join(tempfile.gettempdir(), "hf_hub")
    os.environ["DIFFUSERS_NO_ADVISORY_WARNINGS"] = "1"
    sock = socket.socket(fileno=IPC_FD)
    # Imported before hello so a pre-started worker is ready to load. The collector stays off while they import
    # (python -m safeloader.worker turned it off): each full collection during the import walks every object
    # torch and diffusers have made so far, 0.7 s in all, measured. What they made lives as long as the worker,
    # so it is frozen out of the collector's reach before the collector comes back.
    import diffusers.pipelines.pipeline_utils  # noqa: F401
    import torch  # noqa: F401

    gc.freeze()
    gc.enable()

    worker = Worker(sock, layers)
    install_progress_forwarding(worker.send)
    install_hub_broker(HubBroker(worker.send, worker.channel.recv, worker.dispatch))
    try:
        worker.serve()
    except (BrokenPipeError, ConnectionResetError, PeerClosed):
        return 0
    finally:
        sys.stdout.flush()
    return 0
