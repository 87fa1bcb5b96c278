"""Things that must happen caller-side during a worker call: drawing progress bars and step callbacks.

tqdm bars created in the worker (by diffusers or by pipeline code) become ``progress`` messages that the
caller draws with its own tqdm; ``callback_on_step_end`` becomes a ``callback`` message whose reply carries
the updated tensors.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from typing import Any

from safeloader.ipc import protocol

Send = Callable[[dict[str, Any]], None]
_bar_ids = itertools.count(1)


class _NullStream:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


def install_progress_forwarding(send: Send) -> None:
    """Replace tqdm's class everywhere it is reachable with one that reports instead of drawing."""
    import tqdm as tqdm_package
    import tqdm.auto
    import tqdm.std

    base = tqdm.std.tqdm
    originals = (base, tqdm.auto.tqdm, tqdm_package.tqdm)

    class ForwardingTqdm(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = _NullStream()
            kwargs.pop("position", None)
            self._safeloader_bar = next(_bar_ids)
            self._safeloader_last = -1
            super().__init__(*args, **kwargs)
            if not self.disable:
                self._safeloader_send("open")

        def _safeloader_send(self, event: str) -> None:
            send(
                {
                    "op": protocol.PROGRESS,
                    "bar": self._safeloader_bar,
                    "event": event,
                    "n": int(self.n),
                    "total": None if self.total is None else float(self.total),
                    "desc": str(self.desc or ""),
                }
            )

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if getattr(self, "_safeloader_closed", False) or self.disable:
                return True
            if self.n != self._safeloader_last:
                self._safeloader_last = self.n
                self._safeloader_send("update")
            return True

        def close(self) -> None:
            if not self.disable and not getattr(self, "_safeloader_closed", False):
                self._safeloader_closed = True
                self._safeloader_send("close")
            super().close()

    for module in (tqdm_package, tqdm.auto, tqdm.std):
        module.tqdm = ForwardingTqdm
    for name, module in list(sys.modules.items()):
        # The module's own namespace, not getattr: a lazy module's __getattr__ would import on a miss.
        namespace = getattr(module, "__dict__", None)
        if name.startswith("diffusers") and isinstance(namespace, dict) and namespace.get("tqdm") in originals:
            module.tqdm = ForwardingTqdm  # type: ignore[attr-defined]


class StepCallback:
    """Stands in for the caller's ``callback_on_step_end``: asks the caller, returns its tensors."""

    def __init__(self, callback_id: int, ask: Callable[[dict[str, Any]], Any]) -> None:
        self.callback_id = callback_id
        self.ask = ask

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        reply = self.ask(
            {
                "op": protocol.CALLBACK,
                "callback": self.callback_id,
                "pipe": pipe,
                "step": int(step),
                "timestep": timestep,
                "tensors": dict(callback_kwargs),
            }
        )
        if not isinstance(reply, dict):
            raise TypeError("callback_on_step_end must return a dict of tensors")
        return reply
