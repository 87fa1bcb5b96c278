"""One remote call of an asset-taking or folder-writing method, end to end.

Before the call, every path or repo argument (see :mod:`.registry`) is resolved by the caller
(:mod:`.resolve`) and its verified bytes staged in a fresh read-only folder in the worker's private
``TMPDIR``; the argument then names that folder or file, and the Hub keywords (token, revision, cache)
are consumed here. Every destination folder is replaced by a fresh private folder in the worker; after the
call succeeds, its files are copied into the caller's folder (:mod:`.outputs`). Staged and private
folders are removed after the call either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from safeloader.assets import broker as _broker
from safeloader.assets.outputs import copy_back
from safeloader.assets.registry import HUB_KWARGS, OUTPUT_KWARGS, AssetMethod, AssetParameter, asset_method
from safeloader.assets.resolve import ResolvedAsset, Selection, resolve_argument
from safeloader.errors import SafeLoaderError, UnsupportedValueError
from safeloader.ipc import protocol
from safeloader.userpath import expand_user

#: Files per stage request (each file of 1 MiB or more travels in its own memfd; a frame carries 64).
_FILES_PER_STAGE = 32
_BYTES_PER_STAGE = 1 << 30


def _is_path(value: object) -> bool:
    return isinstance(value, str | os.PathLike)


class _Arguments:
    """Positional and keyword arguments of one call, addressable by (name, position)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = list(args)
        self.kwargs = dict(kwargs)

    def get(self, name: str, position: int | None) -> tuple[bool, Any]:
        if name in self.kwargs:
            return True, self.kwargs[name]
        if position is not None and position < len(self.args):
            return True, self.args[position]
        return False, None

    def set(self, name: str, position: int | None, value: Any) -> None:
        if name in self.kwargs or position is None or position >= len(self.args):
            self.kwargs[name] = value
        else:
            self.args[position] = value


def _element(value: object, index: int) -> Any:
    return value[index] if isinstance(value, list | tuple) else value


class AssetCall:
    def __init__(self, session: Any, handle: int, method: str | None, spec: AssetMethod | None) -> None:
        self.session = session
        self.handle = handle
        self.method = method
        self.spec = spec
        self.staged: list[int] = []
        self.outputs: list[tuple[int, Path]] = []
        self.timeout_s = float(session.policy.sandbox.call_timeout_s)

    # inputs -------------------------------------------------------------------------------------------
    def _stage(self, asset: ResolvedAsset) -> str:
        """Hand ``asset``'s bytes to the worker; returns the worker path the argument must name."""
        folder_id: int | None = None
        root = ""
        batch: dict[str, Any] = {}
        size = 0
        items = list(asset.files.items())
        for index, (relpath, data) in enumerate(items):
            batch[relpath] = np.frombuffer(data, dtype=np.uint8)
            size += len(data)
            if len(batch) >= _FILES_PER_STAGE or size >= _BYTES_PER_STAGE or index == len(items) - 1:
                reply = self.session.request(
                    {"op": protocol.STAGE, "id": folder_id, "files": batch},
                    timeout_s=self.timeout_s,
                    doing=f"handing {asset.label} to the worker",
                )
                if folder_id is None:
                    if not isinstance(reply, dict) or not isinstance(reply.get("id"), int):
                        raise UnsupportedValueError("the worker did not accept the files; load the pipeline again.")
                    folder_id, root = reply["id"], str(reply.get("path", ""))
                    self.staged.append(folder_id)
                batch, size = {}, 0
        if folder_id is None:  # an empty folder: still a folder
            reply = self.session.request(
                {"op": protocol.STAGE, "id": None, "files": {}}, timeout_s=self.timeout_s, doing="staging"
            )
            folder_id, root = reply["id"], str(reply.get("path", ""))
            self.staged.append(folder_id)
        return f"{root}/{asset.target}" if asset.target else root

    def _resolve_inputs(self, arguments: _Arguments) -> None:
        assert self.spec is not None
        spec = self.spec
        policy = self.session.policy
        access = _broker.broker_for(self.session).access_with(
            arguments.kwargs.get(spec.hub_token),
            arguments.kwargs.get("cache_dir"),
            arguments.kwargs.get("local_files_only"),
        )
        revision = arguments.kwargs.get("revision")
        weight_names = arguments.get(*spec.weight_name)[1] if spec.weight_name else None
        subfolders = arguments.get(*spec.subfolder)[1] if spec.subfolder else None
        extra: Any = None
        if spec.extra_folder is not None:
            given, extra = arguments.get(spec.extra_folder[0], None)
            extra = extra if given else spec.extra_folder[1]
        for parameter in spec.parameters:
            if parameter.role == "output":
                continue
            present, value = arguments.get(parameter.name, parameter.position)
            if not present or value is None:
                continue
            values = value if isinstance(value, list | tuple) else [value]
            if not any(_is_path(item) for item in values):
                continue  # state dicts and tensors cross as data
            replaced: list[Any] = []
            for index, item in enumerate(values):
                if not _is_path(item):
                    replaced.append(item)
                    continue
                selection = Selection(
                    role=parameter.role,
                    weight_name=_element(weight_names, index) if parameter.role != "config" else None,
                    subfolder=_element(subfolders, index) if parameter.role != "config" else None,
                    extra_folder=extra if isinstance(extra, str) and parameter.role == "weights" else None,
                )
                if parameter.name != spec.parameters[0].name and parameter.role == "single_file":
                    selection = Selection(role="single_file")
                asset = resolve_argument(item, selection, policy, access, revision=revision)
                replaced.append(self._stage(asset))
            new_value: Any = replaced if isinstance(value, list | tuple) else replaced[0]
            arguments.set(parameter.name, parameter.position, new_value)
        for name in (*HUB_KWARGS, spec.hub_token):
            arguments.kwargs.pop(name, None)

    # outputs ------------------------------------------------------------------------------------------
    def _map_output(self, arguments: _Arguments, parameter: AssetParameter) -> None:
        present, value = arguments.get(parameter.name, parameter.position)
        if not present or not _is_path(value):
            return
        if arguments.kwargs.get("push_to_hub"):
            raise UnsupportedValueError(
                "push_to_hub is not available from the sandbox (the worker has no network and never holds a "
                "token); save to a folder, then upload it with huggingface_hub yourself."
            )
        reply = self.session.request(
            {"op": protocol.OUTPUT_DIR}, timeout_s=self.timeout_s, doing="making a private output folder"
        )
        if (
            not isinstance(reply, dict)
            or not isinstance(reply.get("id"), int)
            or not isinstance(reply.get("path"), str)
        ):
            raise UnsupportedValueError("the worker could not make an output folder; load the pipeline again.")
        self.outputs.append((reply["id"], expand_user(value)))
        arguments.set(parameter.name, parameter.position, reply["path"])

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        arguments = _Arguments(args, kwargs)
        try:
            if self.spec is not None:
                self._resolve_inputs(arguments)
                for parameter in self.spec.parameters:
                    if parameter.role == "output":
                        self._map_output(arguments, parameter)
            for name in OUTPUT_KWARGS:
                self._map_output(arguments, AssetParameter(name, None, "output"))
            result = self.session.call(self.handle, self.method, tuple(arguments.args), arguments.kwargs)
            cap = int(self.session.policy.sandbox.max_output_mb) << 20
            for folder_id, dest in self.outputs:
                copy_back(self.session, folder_id, dest, cap_bytes=cap, timeout_s=self.timeout_s)
            return result
        finally:
            self._discard()

    def _discard(self) -> None:
        for folder_id in [*self.staged, *(folder_id for folder_id, _ in self.outputs)]:
            if self.session.closed:
                return
            with contextlib.suppress(SafeLoaderError):
                self.session.request(
                    {"op": protocol.DISCARD, "id": folder_id}, timeout_s=self.timeout_s, doing="removing a folder"
                )


def needs_assets(method: str | None, kwargs: dict[str, Any]) -> bool:
    return asset_method(method) is not None or any(_is_path(kwargs.get(name)) for name in OUTPUT_KWARGS)


def call_with_assets(
    session: Any, handle: int, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``session.call(handle, method, args, kwargs)``, with asset arguments resolved and outputs copied back."""
    if not needs_assets(method, kwargs):
        return session.call(handle, method, args, kwargs)
    return AssetCall(session, handle, method, asset_method(method)).run(args, kwargs)
