"""A PEP 578 audit hook recording what the pipeline code attempted, sent to the caller as data.

It records, it does not enforce: enforcement is the sandbox's job. Audit hooks cannot be removed, so code
loaded later cannot unregister it; it could tamper with the record, which is why the record is evidence
for reports and never a security decision.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

MAX_EVENTS = 256
_MAX_ARG_CHARS = 200
#: Event names recorded whenever they happen (prefix match on the part before the first dot, or exact).
_ALWAYS = frozenset(
    {
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.getaddrinfo",
        "socket.sendto",
        "subprocess.Popen",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.cdata",
        "ctypes.call_function",
        "os.putenv",
        "os.unsetenv",
        "shutil.rmtree",
        "os.remove",
        "os.rename",
        "os.chmod",
        "os.chown",
        "urllib.Request",
        "http.client.connect",
        "sys.setprofile",
        "sys.settrace",
        "import",
    }
)
#: Event name prefixes recorded whenever they happen.
_ALWAYS_PREFIXES = ("ctypes.", "os.exec")
_IMPORT_WATCH = frozenset({"ctypes", "socket", "subprocess", "urllib", "http", "requests", "pty", "multiprocessing"})


#: How far up the stack to look for a frame of the pipeline's own code.
_MAX_FRAMES = 64


class EventRecorder:
    def __init__(
        self, allowed_read_roots: Iterable[str], allowed_write_roots: Iterable[str], code_root: str = ""
    ) -> None:
        #: Filenames of the verified pipeline modules start with this; events raised while one of their
        #: frames is on the stack are attributed to the pipeline, the rest to the libraries it uses.
        self.code_root = os.path.join(code_root, "") if code_root else ""
        self.allowed_read = tuple(os.path.join(os.path.abspath(r), "") for r in allowed_read_roots)
        self.allowed_write = tuple(os.path.join(os.path.abspath(r), "") for r in allowed_write_roots)
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._active = False

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self.events = self.events, []
            if self.dropped:
                events.append({"event": "safeloader.events_dropped", "detail": str(self.dropped), "by": "safeloader"})
                self.dropped = 0
        return events

    def _pipeline_on_stack(self) -> bool:
        if not self.code_root:
            return False
        frame: Any = sys._getframe(2)
        for _ in range(_MAX_FRAMES):
            if frame is None:
                return False
            if frame.f_code.co_filename.startswith(self.code_root):
                return True
            frame = frame.f_back
        return False

    def _record(self, event: str, detail: str, by_pipeline: bool) -> None:
        key = (event, detail)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            if len(self.events) >= MAX_EVENTS:
                self.dropped += 1
                return
            self.events.append({"event": event, "detail": detail, "by": "pipeline" if by_pipeline else "library"})

    def _open_allowed(self, path: str, writing: bool) -> bool:
        full = os.path.join(os.path.abspath(path), "")
        roots = self.allowed_write if writing else self.allowed_read + self.allowed_write
        return full.startswith(roots)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        # Every audit event of the process comes through here (a tiny DDPM call raises ~80 ``builtins.id``
        # and ``object.__getattr__``): leave at once for the ones never recorded.
        if (
            event != "open"
            and event != "import"
            and event not in _ALWAYS
            and event != "ctypes"
            and not event.startswith(_ALWAYS_PREFIXES)
        ):
            return
        if self._active:
            return
        self._active = True
        try:
            if event == "open":
                path, mode = args[0], args[1]
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                if isinstance(path, str):
                    writing = isinstance(mode, str) and any(flag in mode for flag in "wax+")
                    writing = writing or (isinstance(args[2], int) and bool(args[2] & (os.O_WRONLY | os.O_RDWR)))
                    if not self._open_allowed(path, writing):
                        detail = f"{path} ({'write' if writing else 'read'})"
                        self._record("open", detail, self._pipeline_on_stack())
            elif event == "import":
                # torch and diffusers import these lazily themselves; only the pipeline's own imports count.
                if args[0].split(".")[0] in _IMPORT_WATCH and self._pipeline_on_stack():
                    self._record("import", str(args[0]), True)
            else:
                self._record(event, repr(args)[:_MAX_ARG_CHARS], self._pipeline_on_stack())
        except Exception:  # an audit hook must never break the code it watches
            pass
        finally:
            self._active = False


def install_recorder(read_roots: Iterable[str], write_roots: Iterable[str], code_root: str = "") -> EventRecorder:
    roots = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        *sys.path,
        *read_roots,
        "/dev/urandom",
        "/dev/null",
        "/proc/self",
        "/sys/devices/system/cpu",
        "/etc/localtime",
    }
    recorder = EventRecorder([root for root in roots if root], write_roots, code_root)
    sys.addaudithook(recorder)
    return recorder
