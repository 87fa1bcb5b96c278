"""Which files may cross into the worker as data: checked by content where the format allows it.

Weights cross as safetensors (the header must parse: an 8-byte length, then a JSON object that fits in the
file) and, only under ``[weights] allow_pickle``, as pickle checkpoints, which can run code when loaded —
inside the worker, never here. Code (``.py`` and native modules) never crosses: the bytes executed are the
bytes audited. Other data files (configs, tokenizer vocabularies, images) cross as they are.
"""

from __future__ import annotations

import json
import struct
from pathlib import PurePosixPath

from safeloader.errors import AssetFormatRefused, PickleWeightsRefused
from safeloader.model_source import PICKLE_WEIGHT_SUFFIXES
from safeloader.policy.schema import Policy

SAFETENSORS_SUFFIX = ".safetensors"
#: Executable code: never handed to the worker as data (it would run unaudited).
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".pth_py")
#: Files a loader reads besides weights when it scans a folder: configs and tokenizer files.
CONFIG_SUFFIXES = (".json", ".txt", ".yaml", ".yml", ".model", ".jinja")
#: safetensors headers above this size are refused (the format's own reference limit is 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


def is_pickle(relpath: str) -> bool:
    return relpath.lower().endswith(PICKLE_WEIGHT_SUFFIXES)


def is_weights(relpath: str) -> bool:
    return relpath.lower().endswith(SAFETENSORS_SUFFIX) or is_pickle(relpath)


def is_config(relpath: str) -> bool:
    return relpath.lower().endswith(CONFIG_SUFFIXES)


def refusal(relpath: str, policy: Policy) -> str | None:
    """Why ``relpath`` may not cross by its name alone, or ``None`` (its content is checked by :func:`check`)."""
    lowered = PurePosixPath(relpath).name.lower()
    if lowered.endswith(CODE_SUFFIXES):
        return (
            f"{relpath} is code, which never crosses into the sandbox as data; "
            "load code through custom_pipeline so that it is verified and audited."
        )
    if is_pickle(relpath) and not policy.weights.allow_pickle:
        return (
            f"{relpath} is a pickle checkpoint, which can run code when loaded; convert it to safetensors, "
            "or set [weights] allow_pickle = true to load it inside the sandbox."
        )
    return None


def check_safetensors(relpath: str, data: bytes | memoryview) -> None:
    """Refuse ``data`` unless it starts like a safetensors file: a length, then a JSON object within the file."""
    if len(data) < 8:
        raise AssetFormatRefused(
            f"{relpath} is not a safetensors file (shorter than its 8-byte header); check the file."
        )
    (header_length,) = struct.unpack("<Q", bytes(data[:8]))
    if header_length < 2 or header_length > MAX_SAFETENSORS_HEADER or 8 + header_length > len(data):
        raise AssetFormatRefused(
            f"{relpath} is not a safetensors file (its header length {header_length} does not fit the file); "
            "check the file — a pickle checkpoint renamed to .safetensors is refused too."
        )
    try:
        header = json.loads(bytes(data[8 : 8 + header_length]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise AssetFormatRefused(
            f"{relpath} is not a safetensors file (its header is not a JSON object); check the file."
        )


def check(relpath: str, data: bytes | memoryview, policy: Policy) -> None:
    """Refuse a file that may not cross: code, pickle without ``allow_pickle``, a malformed safetensors file."""
    reason = refusal(relpath, policy)
    if reason is not None:
        raise (PickleWeightsRefused if is_pickle(relpath) else AssetFormatRefused)(reason)
    if relpath.lower().endswith(SAFETENSORS_SUFFIX):
        check_safetensors(relpath, data)
