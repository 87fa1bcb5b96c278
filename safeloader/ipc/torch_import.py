"""The caller's own ``import torch``, started beside the worker's imports when the script has not imported it.

Every session decodes torch objects as soon as the worker has loaded (the pipeline's ``device`` and ``dtype``),
so a script that calls ``from_pretrained`` before ``import torch`` (or never imports it) would pay a cold
import of torch — about a second here — on the critical path, after the worker's own imports. Started when
the worker is spawned, it runs on the other core while the worker imports torch and diffusers.

The one hazard of a background import is a half-initialised module in ``sys.modules``: the caller's code
that asks whether torch is loaded goes through :func:`loaded`, which first waits for the import to finish.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
from typing import Any

#: Seconds the interpreter's exit waits for an unfinished background import (exiting under it can crash).
_EXIT_WAIT_S = 60.0

_pending: threading.Thread | None = None
_lock = threading.Lock()


def _import_torch() -> None:
    with contextlib.suppress(Exception):  # a broken torch fails where the session needs it, with its own error
        import torch  # noqa: F401


def start_beside_worker() -> None:
    """Import torch in a daemon thread, unless it is imported (or being imported here) already."""
    global _pending
    with _lock:
        if _pending is not None or "torch" in sys.modules:
            return
        _pending = threading.Thread(target=_import_torch, name="safeloader-import-torch", daemon=True)
        _pending.start()


def wait() -> None:
    """Return once the background import (if any) has finished."""
    global _pending
    thread = _pending
    if thread is None or thread is threading.current_thread():
        return
    thread.join()
    _pending = None


def loaded() -> Any:
    """The torch module if it is imported (waiting for a background import to finish), else ``None``."""
    if _pending is not None:
        wait()
    return sys.modules.get("torch")


@atexit.register
def _finish_before_exit() -> None:
    thread = _pending
    if thread is not None:
        thread.join(_EXIT_WAIT_S)
