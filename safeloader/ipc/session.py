"""The caller's transport session with one sandboxed worker: requests, replies, progress, callbacks, limits.

Only data crosses: requests and results go through :mod:`safeloader.ipc.codec`; any worker object that is
not data stays there behind an opaque handle, which :mod:`safeloader.proxy` wraps in a remote object. The
session never calls dunder or protocol methods on the worker's behalf, never unpickles, evaluates or imports
anything the worker sends, and kills the worker on any timeout or protocol violation.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, Self

import msgpack

from safeloader.display import printable
from safeloader.errors import (
    IntegrityError,
    ProtocolError,
    RemoteError,
    SafeLoaderError,
    UnsupportedValueError,
    WorkerCrashed,
    WorkerTimeout,
)
from safeloader.ipc import protocol, torch_import
from safeloader.ipc.channel import Channel
from safeloader.ipc.codec import (
    CodecError,
    Decoder,
    Encoder,
    Ext,
    MessageTooLarge,
    available_device,
)
from safeloader.ipc.framing import FrameError, FrameTimeout, PeerClosed
from safeloader.ipc.limits import DEFAULT_LIMITS
from safeloader.ipc.remote_read import RemoteMemory, open_remote_memory
from safeloader.ipc.rng import CallRng
from safeloader.ipc.shm import TransferMappings
from safeloader.policy.schema import Policy
from safeloader.sandbox.report import LayerStatus, SandboxReport

#: Events kept per pipeline; the worker deduplicates and caps its own record too.
MAX_EVENTS = 1000
_MAX_PROGRESS_BARS = 32
_CLOSE_GRACE_S = 2.0


class SandboxedWorkerLike(Protocol):
    """What :func:`safeloader.sandbox.spawn.spawn_worker` returns."""

    sock: Any
    pid: int
    report: SandboxReport
    model_dir: Path | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int | None: ...
    def kill(self) -> None: ...
    def stderr_tail(self, lines: int = 20) -> str: ...
    def close(self) -> None: ...


Spawner = Callable[..., SandboxedWorkerLike]
_live_sessions: weakref.WeakSet[WorkerSession] = weakref.WeakSet()


@atexit.register
def _close_live_sessions() -> None:
    for session in list(_live_sessions):
        session.close()


def _default_spawner() -> Spawner:
    from safeloader.sandbox.spawn import spawn_worker

    return spawn_worker


def _text(value: object) -> str | None:
    """A string the worker sent, or ``None``: comparisons on other decoded types (arrays) can raise."""
    return value if isinstance(value, str) else None


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "is not responding"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class RemoteReference:
    """Base of every caller-side stand-in for a worker object: its session sends it back as its handle."""

    def __init__(self, session: WorkerSession, handle: int, type_name: str) -> None:
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type_name", type_name)

    def __del__(self) -> None:
        try:
            handle = object.__getattribute__(self, "_handle")
            if handle != protocol.PIPELINE_HANDLE:
                object.__getattribute__(self, "_session").release(handle)
        except Exception:  # finalizers must not raise
            pass


class _CallbackRef:
    def __init__(self, callback_id: int) -> None:
        self.callback_id = callback_id


class WorkerSession:
    """One sandboxed worker process and the channel to it; holds at most one pipeline."""

    def __init__(self, worker: SandboxedWorkerLike, policy: Policy) -> None:
        self.worker = worker
        self.policy = policy
        self.events: list[dict[str, str]] = []
        #: The caller-side stand-in for the loaded pipeline (set by :mod:`safeloader.proxy`).
        self.pipeline: RemoteReference | None = None
        self.closed = False
        self._pending_release: list[int] = []
        self._callbacks: dict[int, Callable[..., Any]] = {}
        self._callback_exception: BaseException | None = None
        self._bars: dict[int, Any] = {}
        #: Caller-side Hub access and caches for assets and brokered downloads (safeloader.assets.broker).
        self.hub_broker: Any = None
        # One request at a time on the channel; re-entrant because a callback (run by the thread that holds it)
        # may call back into the pipeline.
        self._lock = threading.RLock()
        self._call_depth = 0
        #: The global RNG state caller and worker agreed on after the last top-level call (see ipc.rng).
        self._agreed_global: bytes | None = None
        #: Callbacks of the caller run so far in this session: a call during which none ran left the caller's
        #: global RNG where it was (see CallRng.apply).
        self._callbacks_run = 0
        # One reply may announce at most max_result_mb of arrays, tensors, images and strings: checked
        # before the caller maps or copies any of it.
        reply_limits = dataclasses.replace(DEFAULT_LIMITS, max_total_bytes=policy.sandbox.max_result_mb * 1024 * 1024)
        self._transfer = TransferMappings()
        self.channel = Channel(
            worker.sock,
            Encoder(fallback=self._encode_reference),
            Decoder(
                limits=reply_limits,
                on_handle=self._decode_handle,
                tensor_device=available_device,
                transfer=self._transfer,
            ),
        )
        self.channel.spin_s = protocol.SPIN_S
        self.sandbox_report = worker.report
        self._ready = False
        #: Reads large buffers out of the worker (safeloader.ipc.remote_read) once its probe passed.
        self._remote: RemoteMemory | None = None
        self._transport_sent = False
        self._hello_deadline = time.monotonic() + policy.sandbox.load_timeout_s
        _live_sessions.add(self)

    @classmethod
    def start(cls, policy: Policy, *, model_dir: Path, spawner: Spawner | None = None, wait: bool = True) -> Self:
        """Spawn a confined worker for ``model_dir``; with ``wait``, also wait for its hello.

        ``wait=False`` returns at once, so the caller can go on with its own imports while the worker
        imports torch and diffusers; the hello (within ``load_timeout_s`` of the spawn) is then awaited by
        :meth:`load_pipeline`.
        """
        spawn = spawner if spawner is not None else _default_spawner()
        worker = spawn(policy.sandbox, model_dir=Path(model_dir))
        # After the spawn, never before: the launcher is forked without this thread. The worker's first reply
        # holds torch objects, so a script that has not imported torch would otherwise import it only then.
        torch_import.start_beside_worker()
        session = cls(worker, policy)
        if wait:
            session.wait_until_ready()
        return session

    def wait_until_ready(self) -> None:
        """Receive and check the worker's hello (once); kill the worker if it is late or malformed."""
        if self._ready:
            return
        limit_s = self.policy.sandbox.load_timeout_s
        try:
            with self._hostile_data_guard("starting the worker"):
                hello = self._receive(self._hello_deadline, "starting the worker", limit_s)
        except BaseException:
            self.close()
            raise
        version = hello.get("version")
        if (
            _text(hello.get("op")) != protocol.HELLO
            or not isinstance(version, int)
            or isinstance(version, bool)
            or version != protocol.PROTOCOL_VERSION
        ):
            self._abort()
            raise ProtocolError(
                "the worker did not start with a valid hello message and was killed; "
                "check that safeloader is installed identically for the worker."
            )
        self.sandbox_report = self._merge_report(hello.get("layers"))
        self._enable_remote_read(hello.get("probe"))
        self._ready = True

    def _enable_remote_read(self, probe: object) -> None:
        """Read large buffers out of the worker when its hello cookie can be read back (else the transfer buffer)."""
        if not isinstance(probe, dict) or self._remote is not None:
            return
        remote = open_remote_memory(self.worker.pid)
        if remote is None:
            return
        if not remote.probe(probe.get("address"), probe.get("cookie")):
            remote.close()
            return
        self._remote = remote
        self.channel.decoder.remote = remote

    def _merge_report(self, layers: object) -> SandboxReport:
        by_name = {status.layer: status for status in self.worker.report.layers}
        for item in layers if isinstance(layers, list) else []:
            try:
                status = LayerStatus.from_dict(item)
            except (KeyError, TypeError, AttributeError, ValueError, RuntimeError):  # e.g. bool() of an array
                continue
            by_name[status.layer] = status
        return SandboxReport(layers=tuple(by_name.values()), facts=dict(self.worker.report.facts))

    # codec hooks --------------------------------------------------------------------------------------
    def _encode_reference(self, value: object) -> msgpack.ExtType:
        if isinstance(value, RemoteReference) and object.__getattribute__(value, "_session") is self:
            handle = object.__getattribute__(value, "_handle")
            return msgpack.ExtType(Ext.HANDLE, msgpack.packb(handle))
        if isinstance(value, _CallbackRef):
            return msgpack.ExtType(Ext.CALLBACK, msgpack.packb(value.callback_id))
        raise CodecError(f"a value of type {type(value).__name__} cannot cross to the worker; pass data only")

    def _decode_handle(self, _code: int, payload: Any) -> object:
        if (
            not isinstance(payload, list)
            or len(payload) != 2
            or not isinstance(payload[0], int)
            or not isinstance(payload[1], str)
        ):
            raise CodecError("a handle extension is malformed")
        if payload[0] == protocol.PIPELINE_HANDLE and self.pipeline is not None:
            return self.pipeline
        return self.make_remote(payload[0], payload[1][:100])

    def make_remote(self, handle: int, type_name: str) -> RemoteReference:
        """The caller-side stand-in for a worker object the worker answered with."""
        return RemoteReference(self, handle, type_name)

    # transport ----------------------------------------------------------------------------------------
    def _abort(self) -> None:
        """Kill the worker at once (timeouts, protocol violations) and release everything."""
        self.closed = True
        self._kill_and_release()

    def _kill_and_release(self) -> None:
        """Kill and reap the worker, then release the caller's side of it (bars, transfer mappings, socket)."""
        try:
            self.worker.kill()
            self.worker.wait(_CLOSE_GRACE_S)
        finally:
            self._release_transport()
            self.worker.close()
            _live_sessions.discard(self)

    def _release_transport(self) -> None:
        self._close_bars()
        self._transfer.close()
        self.channel.decoder.pages.clear()
        if self._remote is not None:
            self._remote.close()

    def _crashed(self, doing: str) -> WorkerCrashed:
        returncode = self.worker.wait(_CLOSE_GRACE_S)
        if returncode is None:
            self.worker.kill()
            self.worker.wait(_CLOSE_GRACE_S)
        tail = self.worker.stderr_tail(20)
        # Why the kernel ended it (the memory cgroup's OOM kill, a stack overflow), read before close().
        exit_cause = getattr(self.worker, "exit_cause", lambda: None)()
        self.closed = True
        self._release_transport()
        self.worker.close()
        _live_sessions.discard(self)
        last = tail.strip().splitlines()[-1] if tail.strip() else "no stderr output"
        return WorkerCrashed(
            f"the sandboxed worker {_exit_description(returncode)} while {doing} "
            f"({exit_cause + '; ' if exit_cause else ''}last stderr line: {last}); "
            "check the pipeline code, or raise [sandbox] memory_limit_mb if it ran out of memory.",
            returncode=returncode,
            stderr_tail=tail,
        )

    def _receive(self, deadline: float, doing: str, limit_s: float) -> dict[str, Any]:
        try:
            return self.channel.recv(deadline)
        except FrameTimeout:
            self._abort()
            raise WorkerTimeout(
                f"the sandboxed worker did not answer within {limit_s:g} s while {doing} and was killed; "
                "raise [sandbox] load_timeout_s or call_timeout_s if the work is legitimately slow."
            ) from None
        except (PeerClosed, ConnectionError):
            raise self._crashed(doing) from None
        except MessageTooLarge:
            self._abort()
            raise ProtocolError(
                f"the sandboxed worker's reply while {doing} announced more than [sandbox] max_result_mb = "
                f"{self.policy.sandbox.max_result_mb} MiB of data and was killed before any of it was read; "
                "raise max_result_mb if the pipeline legitimately returns that much."
            ) from None
        except (FrameError, CodecError) as exc:
            self._abort()
            raise ProtocolError(
                f"the sandboxed worker sent an invalid message while {doing} ({exc}) and was killed; "
                "the pipeline code is misbehaving — do not trust its output."
            ) from None

    def _send(self, message: dict[str, Any], doing: str, *, timeout_s: float) -> None:
        # A worker that stops reading must not block the caller forever: the frame is sent against a deadline
        # (non-blocking sends, select only when the socket buffer is full — no timeout syscalls per send).
        try:
            self.channel.send(message, time.monotonic() + timeout_s)
        except (FrameTimeout, TimeoutError):
            self._abort()
            raise WorkerTimeout(
                f"the sandboxed worker stopped reading while {doing} and was killed after {timeout_s:g} s; "
                "the pipeline code is misbehaving, or raise [sandbox] call_timeout_s."
            ) from None
        except CodecError as exc:
            raise UnsupportedValueError(
                f"an argument cannot be sent to the sandboxed worker while {doing} ({exc}); "
                "pass data (numbers, strings, lists, dicts, arrays, tensors, images, generators), objects of this "
                "pipeline, or diffusers schedulers, attention processors and models."
            ) from None
        except (BrokenPipeError, ConnectionError):
            raise self._crashed(doing) from None

    def request(self, message: dict[str, Any], *, timeout_s: float, doing: str) -> Any:
        """Send one request and serve progress and callbacks until its result; returns the result's value.

        Requests from several threads are serialized: each waits for the one before it to finish.
        """
        with self._lock:
            return self._request(message, timeout_s=timeout_s, doing=doing)

    def _request(self, message: dict[str, Any], *, timeout_s: float, doing: str) -> Any:
        if self.closed:
            raise WorkerCrashed(f"the sandboxed worker is closed, so {doing} is impossible; load the pipeline again.")
        self.wait_until_ready()
        if self._pending_release:
            message["release"], self._pending_release = self._pending_release, []
        if not self._transport_sent:
            # The first request tells the worker how large buffers may come back (a request the worker refuses
            # before reading it leaves it on the transfer buffer: slower, never unsafe).
            message["transport"] = {"remote_read": self._remote is not None}
        started = time.monotonic()
        deadline = started + timeout_s
        # Time spent in the caller's own callbacks does not count against the worker, but only up to one
        # more timeout: a worker cannot keep a call alive forever by asking for callbacks.
        latest_deadline = started + 2 * timeout_s
        self._send(message, doing, timeout_s=timeout_s)
        self._transport_sent = True
        while True:
            with self._hostile_data_guard(doing):
                reply = self._receive(deadline, doing, timeout_s)
                op = _text(reply.get("op"))
                if op == protocol.RESULT:
                    self._record_events(reply.get("events"))
                    return reply.get("value")
                if op == protocol.ERROR:
                    self._record_events(reply.get("events"))
                elif op == protocol.PROGRESS:
                    self._draw_progress(reply)
                    continue
                elif op == protocol.CALLBACK:
                    callback_started = time.monotonic()
                    self._run_callback(reply, doing)
                    deadline = min(deadline + time.monotonic() - callback_started, latest_deadline)
                    continue
                elif op == protocol.BROKER:
                    # A download the pipeline asked for: the caller's time, bounded like a callback's.
                    broker_started = time.monotonic()
                    self._answer_broker(reply, doing)
                    deadline = min(deadline + time.monotonic() - broker_started, latest_deadline)
                    continue
                else:
                    self._abort()
                    raise ProtocolError(
                        f"the sandboxed worker sent an unexpected {str(op)[:40]!r} message while {doing} and was "
                        "killed; the pipeline code is misbehaving — do not trust its output."
                    )
            # Outside the guard: this re-raises a caller callback's own exception unchanged.
            self._raise_error(reply, doing)

    @contextlib.contextmanager
    def _hostile_data_guard(self, doing: str) -> Iterator[None]:
        """Whatever the worker sent, handling it ends in a SafeLoaderError: anything else kills the worker."""
        try:
            yield
        except SafeLoaderError:
            raise
        except Exception as exc:
            self._abort()
            raise ProtocolError(
                f"the sandboxed worker sent a message safeloader could not handle while {doing} "
                f"({type(exc).__name__}) and was killed; the pipeline code is misbehaving — do not trust its output."
            ) from None

    def _raise_error(self, reply: dict[str, Any], doing: str) -> None:
        kind = _text(reply.get("kind"))
        type_name = str(reply.get("type", "Exception"))[:100]
        text = str(reply.get("message", ""))[:4000]
        if self._callback_exception is not None:
            exception, self._callback_exception = self._callback_exception, None
            raise exception
        if kind == protocol.ERROR_LIMIT:
            self._abort()
            raise ProtocolError(
                f"the worker's result broke the IPC limits while {doing} ({printable(text)}) and the worker was "
                "killed; return smaller or less deeply nested data from the pipeline."
            )
        raise RemoteError(
            f"{type_name} was raised in the sandboxed worker while {doing}: {text} "
            "(see .traceback_text for where; fix the arguments or the pipeline code).",
            type_name=type_name,
            traceback_text=str(reply.get("traceback", ""))[:20000],
            raw_message=text,
        )

    def _record_events(self, events: object) -> None:
        if not isinstance(events, list):
            return
        for event in events:
            if len(self.events) >= MAX_EVENTS:
                return
            if isinstance(event, dict):
                by = _text(event.get("by"))
                self.events.append(
                    {
                        "event": printable(str(event.get("event", ""))[:100]),
                        "detail": printable(str(event.get("detail", ""))[:500]),
                        # Who raised it, as the worker saw it: evidence for reports, never a decision.
                        "by": by if by in ("pipeline", "library", "safeloader") else "unknown",
                    }
                )

    def _draw_progress(self, message: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        bar_id, event, count = message.get("bar"), _text(message.get("event")), message.get("n")
        if not isinstance(bar_id, int) or not isinstance(count, int):
            return
        bar = self._bars.get(bar_id)
        if bar is None and event == "open" and len(self._bars) < _MAX_PROGRESS_BARS:
            total = message.get("total")
            if isinstance(total, float) and total.is_integer():
                total = int(total)  # drawn as "2/2", as diffusers' own bars are
            bar = tqdm(
                total=total if isinstance(total, int | float) else None,
                desc=printable(str(message.get("desc", ""))[:80]) or None,
            )
            self._bars[bar_id] = bar
        if bar is None:
            return
        if count > bar.n:
            bar.update(count - bar.n)
        if event == "close":
            bar.close()
            del self._bars[bar_id]

    def _close_bars(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def _run_callback(self, message: dict[str, Any], doing: str) -> None:
        self._callbacks_run += 1
        callback_id = message.get("callback")
        callback = self._callbacks.get(callback_id) if isinstance(callback_id, int) else None
        if callback is None:
            self._abort()
            raise ProtocolError(
                f"the sandboxed worker asked for a callback that was not passed while {doing} and was killed; "
                "the pipeline code is misbehaving — do not trust its output."
            )
        pipeline = message.get("pipe")
        if not isinstance(pipeline, RemoteReference):
            pipeline = self.pipeline
        try:
            result = callback(pipeline, message.get("step"), message.get("timestep"), message.get("tensors") or {})
            call_timeout = self.policy.sandbox.call_timeout_s
            self._send({"op": protocol.CALLBACK_RESULT, "tensors": result}, doing, timeout_s=call_timeout)
        except (WorkerCrashed, UnsupportedValueError) as exc:
            if isinstance(exc, WorkerCrashed):
                raise
            self._callback_exception = exc
            self._send(
                {"op": protocol.CALLBACK_ERROR, "message": str(exc)[:1000]},
                doing,
                timeout_s=self.policy.sandbox.call_timeout_s,
            )
        except Exception as exc:  # re-raised caller-side once the worker has unwound
            self._callback_exception = exc
            self._send(
                {"op": protocol.CALLBACK_ERROR, "message": f"{type(exc).__name__}: {exc}"[:1000]},
                doing,
                timeout_s=self.policy.sandbox.call_timeout_s,
            )

    def _answer_broker(self, message: dict[str, Any], doing: str) -> None:
        """Answer a worker's Hub download with files or a refusal (see :mod:`safeloader.assets.broker`)."""
        from safeloader.assets.broker import broker_for

        answer = broker_for(self).answer(message)
        self._send({"op": protocol.BROKER_RESULT, **answer}, doing, timeout_s=self.policy.sandbox.call_timeout_s)

    # operations ---------------------------------------------------------------------------------------
    def call(self, handle: int, method: str | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        if method is not None and not protocol.is_public_name(method):
            raise UnsupportedValueError(
                f"method {method!r} is not public and is never called on the worker's behalf;"
                " call a public method instead."
            )
        arguments = dict(kwargs)
        registered: list[int] = []
        for key in ("callback_on_step_end",):
            value = arguments.get(key)
            if callable(value) and not isinstance(value, RemoteReference):
                callback_id = id(value)
                self._callbacks[callback_id] = value
                registered.append(callback_id)
                arguments[key] = _CallbackRef(callback_id)
        label = "calling the pipeline" if method is None else f"calling {method}()"
        message = {"op": protocol.CALL, "target": handle, "method": method, "args": list(args), "kwargs": arguments}
        with self._lock:
            # Generators (and the global RNG, for calls not nested in a callback) go with their state and come back.
            rng = CallRng.for_call(args, arguments, nested=self._call_depth > 0, agreed=self._agreed_global)
            if rng is not None:
                message["rng"] = rng.message()
            callbacks_before = self._callbacks_run
            self._call_depth += 1
            try:
                reply = self.request(message, timeout_s=self.policy.sandbox.call_timeout_s, doing=label)
            finally:
                self._call_depth -= 1
                for callback_id in registered:
                    self._callbacks.pop(callback_id, None)
            if rng is None:
                return reply
            value = rng.apply(
                reply,
                lambda problem: self._violation(problem, label),
                callbacks_ran=self._callbacks_run != callbacks_before,
            )
            if rng.carry_global:
                self._agreed_global = rng.agreed
            return value

    def _violation(self, problem: str, doing: str) -> ProtocolError:
        """Kill the worker for a reply that breaks the protocol; returns the error to raise."""
        self._abort()
        return ProtocolError(
            f"the sandboxed worker answered with an invalid reply while {doing} ({problem}) and was killed; "
            "the pipeline code is misbehaving — do not trust its output."
        )

    def set_attribute(self, handle: int, name: str, value: object) -> None:
        """``obj.name = value`` on a worker object; ``value`` is data, a handle or an allow-listed library object."""
        if not protocol.is_writable_name(name):
            raise UnsupportedValueError(
                f"attribute {name!r} is a protocol name and is never set on the worker's objects; set another name."
            )
        self.request(
            {"op": protocol.SETATTR, "target": handle, "name": name, "value": value},
            timeout_s=self.policy.sandbox.call_timeout_s,
            doing=f"setting .{name}",
        )

    def build_pipeline_in_worker(
        self, class_name: str, components: Mapping[str, Any], *, from_pretrained: bool = False
    ) -> tuple[RemoteReference, dict[str, Any]]:
        """Build a diffusers pipeline class in this worker from handles and data (``BUILD``); returns it and its info.

        ``from_pretrained=False`` calls ``class_name(**components)``; ``True`` calls
        ``class_name.from_pretrained(<this worker's model>, **components)``. The class is looked up in diffusers.
        """
        reply = self.request(
            {
                "op": protocol.BUILD,
                "class_name": class_name,
                "from_pretrained": from_pretrained,
                "kwargs": dict(components),
            },
            timeout_s=self.policy.sandbox.load_timeout_s,
            doing=f"building a {class_name[:100]}",
        )
        if (
            not isinstance(reply, dict)
            or not isinstance(reply.get("pipeline"), RemoteReference)
            or not isinstance(reply.get("info"), dict)
        ):
            raise self._violation("a built pipeline is not a handle with its info", "building a pipeline")
        return reply["pipeline"], reply["info"]

    def get_attribute(self, handle: int, name: str) -> tuple[str, Any]:
        """``("method", None)`` when ``name`` is a method of the worker object, else ``("value", value)``."""
        reply = self.request(
            {"op": protocol.GETATTR, "target": handle, "name": name},
            timeout_s=self.policy.sandbox.call_timeout_s,
            doing=f"reading .{name}",
        )
        if isinstance(reply, dict) and _text(reply.get("kind")) == "method":
            return "method", None
        if isinstance(reply, dict) and _text(reply.get("kind")) == "value":
            return "value", reply.get("value")
        self._abort()
        raise ProtocolError(
            f"the worker answered .{name} with a malformed reply and was killed; "
            "the pipeline code is misbehaving — do not trust its output."
        )

    def manual_seed(self, seed: int) -> None:
        """Seed the worker's global torch RNG, as ``torch.manual_seed`` would in-process."""
        self.request(
            {"op": protocol.SEED, "seed": int(seed)},
            timeout_s=self.policy.sandbox.call_timeout_s,
            doing="seeding the worker",
        )

    def release(self, handle: int) -> None:
        if not self.closed:
            self._pending_release.append(handle)

    def load(
        self,
        *,
        code: Mapping[str, bytes],
        code_hashes: Mapping[str, str],
        entry: str | None,
        from_pretrained_kwargs: Mapping[str, Any],
        restricted_python: str = "off",
        package_label: str = "remote",
        pipeline_class: str | None = None,
    ) -> dict[str, Any]:
        """Send the verified code and build the pipeline in the worker with ``from_pretrained``; returns its info.

        ``pipeline_class`` names a class of diffusers itself (e.g. ``"DDPMPipeline"``) to load with,
        as ``DDPMPipeline.from_pretrained`` would; it is looked up in diffusers, never in foreign code.
        """
        for relpath, data in code.items():
            if hashlib.sha256(data).hexdigest() != code_hashes.get(relpath):
                raise IntegrityError(
                    f"{relpath} does not match its verified sha256; re-resolve the pipeline before loading it."
                )
        if entry is not None and entry not in code:
            raise IntegrityError(f"entry file {entry} is not among the verified files; re-resolve the pipeline.")
        info = self.request(
            {
                "op": protocol.LOAD,
                "model_dir": str(self.worker.model_dir),
                "code": dict(code),
                "hashes": dict(code_hashes),
                "entry": entry,
                "kwargs": dict(from_pretrained_kwargs),
                "restricted_python": restricted_python,
                "package": package_label,
                "pipeline_class": pipeline_class,
            },
            timeout_s=self.policy.sandbox.load_timeout_s,
            doing="loading the pipeline",
        )
        if not isinstance(info, dict):
            self._abort()
            raise ProtocolError(
                "the worker answered the load with a malformed reply and was killed; "
                "the pipeline code is misbehaving — do not trust it."
            )
        return info

    def close(self) -> None:
        """Ask the worker to exit, then make sure it has; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        _live_sessions.discard(self)
        # The worker holds nothing worth flushing, and a graceful interpreter exit after torch costs most of a
        # second: say goodbye, then kill it and reap it. While another thread is mid-request the goodbye would
        # interleave with its frames, so then the worker is only killed (that thread gets WorkerCrashed).
        if self._lock.acquire(blocking=False):
            try:
                with contextlib.suppress(OSError):
                    self.worker.sock.settimeout(_CLOSE_GRACE_S)  # a worker that stops reading cannot block close()
                    self.channel.send({"op": protocol.CLOSE})
            finally:
                self._lock.release()
        self._kill_and_release()
