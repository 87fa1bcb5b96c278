"""Read policies from TOML: built-in names, paths, ``extends`` chains, strict validation."""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from safeloader.errors import PolicyError
from safeloader.policy.schema import (
    SANDBOX_LAYERS,
    SEVERITIES,
    AuditPolicy,
    Policy,
    SandboxPolicy,
    SourcesPolicy,
    WeightsPolicy,
)
from safeloader.userpath import expand_user

# policies/ of the checkout (also an editable install); an installed wheel carries them as data files.
_CHECKOUT_POLICY_DIR = Path(__file__).resolve().parent.parent.parent / "policies"
BUILTIN_POLICY_DIR = (
    _CHECKOUT_POLICY_DIR
    if (_CHECKOUT_POLICY_DIR / "default.toml").is_file()
    else Path(sys.prefix) / "share" / "safeloader" / "policies"
)
BUILTIN_NAMES = ("default", "strict", "permissive")
_MAX_EXTENDS_DEPTH = 16

# Expected type of every key; tuples of str are written as lists in TOML.
_STR = "str"
_BOOL = "bool"
_INT = "int"
_NUM = "number"
_STRLIST = "list[str]"
_TABLE = "table"

_SCHEMA: dict[str, dict[str, str]] = {
    "policy": {"name": _STR, "description": _STR, "extends": _STR},
    "sources": {
        "allow": _STRLIST,
        "deny": _STRLIST,
        "require_pinned_revision": _BOOL,
        "require_signature": _BOOL,
        "trusted_keys": _STRLIST,
    },
    "audit": {
        "mode": _STR,
        "fail_on": _STR,
        "allow_imports": _STRLIST,
        "deny_imports": _STRLIST,
        "restricted_python": _STR,
        "rules": _TABLE,
    },
    "sandbox": {
        "network": _BOOL,
        "memory_limit_mb": _INT,
        "tmp_size_mb": _INT,
        "max_result_mb": _INT,
        "call_timeout_s": _NUM,
        "load_timeout_s": _NUM,
        "gpu": _BOOL,
        "read_paths": _STRLIST,
        "write_paths": _STRLIST,
        "env_allow": _STRLIST,
        "require": _STRLIST,
        "threads": _INT,
        "isolate_plain_pipelines": _BOOL,
        "max_output_mb": _INT,
    },
    "weights": {"allow_pickle": _BOOL},
}

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("audit", "mode"): ("enforce", "warn", "off"),
    ("audit", "fail_on"): SEVERITIES,
    ("audit", "restricted_python"): ("off", "report", "enforce"),
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _STRLIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _TABLE:
        return isinstance(value, dict)
    raise AssertionError(kind)


def _validate(data: Mapping[str, Any], origin: str) -> None:
    for table, body in data.items():
        if table not in _SCHEMA:
            raise PolicyError(
                f"{origin}: unknown table [{table}]; use one of {', '.join(_SCHEMA)} (see policies/README.md)."
            )
        if not isinstance(body, dict):
            raise PolicyError(f"{origin}: [{table}] must be a table; write it as a [{table}] section.")
        for key, value in body.items():
            kind = _SCHEMA[table].get(key)
            if kind is None:
                raise PolicyError(f"{origin}: unknown key '{table}.{key}'; valid keys are {', '.join(_SCHEMA[table])}.")
            if not _type_ok(kind, value):
                raise PolicyError(f"{origin}: '{table}.{key}' must be a {kind}, got {type(value).__name__}.")
            choices = _CHOICES.get((table, key))
            if choices is not None and value not in choices:
                raise PolicyError(f"{origin}: '{table}.{key}' = {value!r}; use one of {', '.join(choices)}.")
    sandbox = data.get("sandbox", {})
    for layer in sandbox.get("require", []):
        if layer not in SANDBOX_LAYERS:
            raise PolicyError(
                f"{origin}: 'sandbox.require' names unknown layer {layer!r}; use any of {', '.join(SANDBOX_LAYERS)}."
            )
    for key, upper in (
        ("memory_limit_mb", 1 << 30),
        ("tmp_size_mb", 1 << 30),
        ("max_result_mb", 1 << 30),
        ("call_timeout_s", 7 * 86400),
        ("load_timeout_s", 7 * 86400),
        ("max_output_mb", 1 << 30),
    ):
        if key in sandbox and not (math.isfinite(sandbox[key]) and 0 < sandbox[key] <= upper):
            raise PolicyError(f"{origin}: 'sandbox.{key}' must be a positive number up to {upper}, got {sandbox[key]}.")
    if "threads" in sandbox and not 0 <= sandbox["threads"] <= 256:
        raise PolicyError(f"{origin}: 'sandbox.threads' must be between 0 and 256, got {sandbox['threads']}.")
    from safeloader.audit.rules import RULES  # lazily: the audit package imports the policy package

    for rule_id, value in data.get("audit", {}).get("rules", {}).items():
        if rule_id not in RULES:
            raise PolicyError(
                f"{origin}: 'audit.rules.{rule_id}' names no rule; use a rule id listed in policies/README.md."
            )
        if not isinstance(value, str) or (value != "off" and value not in SEVERITIES):
            raise PolicyError(
                f"{origin}: 'audit.rules.{rule_id}' = {value!r}; use \"off\" or one of {', '.join(SEVERITIES)}."
            )


def _locate(ref: str, base_dir: Path | None) -> Path:
    if ref in BUILTIN_NAMES or (os.sep not in ref and "/" not in ref and not ref.endswith(".toml")):
        candidate = BUILTIN_POLICY_DIR / f"{ref}.toml"
        if candidate.is_file():
            return candidate
        raise PolicyError(
            f"unknown built-in policy {ref!r}; use one of {', '.join(BUILTIN_NAMES)} or a path to a .toml file."
        )
    path = expand_user(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist; check the path or use a built-in policy name.")
    return path.resolve()


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}; check its permissions.") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy file {path} is not UTF-8 text; save it as UTF-8 TOML.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML ({exc}); fix the syntax.") from exc
    except RecursionError as exc:
        raise PolicyError(f"policy file {path} nests arrays or tables too deeply; flatten it.") from exc
    _validate(data, str(path))
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = {table: dict(body) for table, body in base.items()}
    for table, body in override.items():
        target = merged.setdefault(table, {})
        for key, value in body.items():
            if table == "audit" and key == "rules":
                rules = dict(target.get("rules", {}))
                rules.update(value)
                target["rules"] = rules
            else:
                target[key] = value
    return merged


def _resolve_keys(keys: list[str], base_dir: Path) -> list[str]:
    resolved = []
    for key in keys:
        if key.startswith("ed25519:"):
            resolved.append(key)
        else:
            path = expand_user(key)
            resolved.append(str(path if path.is_absolute() else (base_dir / path).resolve()))
    return resolved


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], tuple[str, ...]]:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise PolicyError(f"policy 'extends' forms a cycle ({chain}); remove one of the links.")
    if len(seen) >= _MAX_EXTENDS_DEPTH:
        raise PolicyError(f"policy {path} extends more than {_MAX_EXTENDS_DEPTH} levels deep; flatten the chain.")
    data = _read(path)
    if "trusted_keys" in data.get("sources", {}):
        data["sources"]["trusted_keys"] = _resolve_keys(data["sources"]["trusted_keys"], path.parent)
    parent_ref = data.get("policy", {}).get("extends")
    if parent_ref is None:
        return data, (str(path),)
    parent_path = _locate(parent_ref, path.parent)
    parent, parent_origin = _load_chain(parent_path, (*seen, path))
    merged = _merge(parent, data)
    merged.setdefault("policy", {}).pop("extends", None)
    # Name and description belong to the most specific file only.
    merged["policy"] = {k: v for k, v in data.get("policy", {}).items() if k != "extends"}
    return merged, (str(path), *parent_origin)


def _build(data: Mapping[str, Any], origin: tuple[str, ...], fallback_name: str) -> Policy:
    def tuples(body: Mapping[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}

    audit_body = tuples(data.get("audit", {}))
    audit_body["rules"] = tuple(sorted(data.get("audit", {}).get("rules", {}).items()))
    sandbox_body = tuples(data.get("sandbox", {}))
    for key in ("call_timeout_s", "load_timeout_s"):
        if key in sandbox_body:
            sandbox_body[key] = float(sandbox_body[key])
    meta = data.get("policy", {})
    return Policy(
        name=meta.get("name", fallback_name),
        description=meta.get("description", ""),
        origin=origin,
        sources=SourcesPolicy(**tuples(data.get("sources", {}))),
        audit=AuditPolicy(**audit_body),
        sandbox=SandboxPolicy(**sandbox_body),
        weights=WeightsPolicy(**data.get("weights", {})),
    )


def load_policy(ref: str | os.PathLike[str] | Policy | None = None) -> Policy:
    """Load a policy by built-in name, by path, or pass a :class:`Policy` through.

    ``None`` means ``$SAFELOADER_POLICY`` when set, else the built-in ``default``.
    """
    if isinstance(ref, Policy):
        return ref
    if ref is not None and not isinstance(ref, (str, os.PathLike)):
        raise PolicyError(
            f"a policy is given by built-in name, path or Policy object, not {type(ref).__name__}; pass one of those."
        )
    if ref is None:
        ref = os.environ.get("SAFELOADER_POLICY") or "default"
    path = _locate(os.fspath(ref), Path.cwd())
    data, origin = _load_chain(path, ())
    return _build(data, origin, fallback_name=path.stem)


def policy_from_mapping(data: Mapping[str, Any], *, origin: str = "<mapping>") -> Policy:
    """Build a policy from an already-parsed TOML mapping (used by tests and the fuzzer)."""
    _validate(data, origin)
    body = {table: dict(value) for table, value in data.items()}
    parent_ref = body.get("policy", {}).get("extends")
    if parent_ref is not None:
        parent_data, parent_origin = _load_chain(_locate(parent_ref, Path.cwd()), ())
        body = _merge(parent_data, body)
        body["policy"] = {k: v for k, v in data.get("policy", {}).items() if k != "extends"}
        return _build(body, (origin, *parent_origin), fallback_name=origin)
    return _build(body, (origin,), fallback_name=origin)


def _is_hub_id(source_id: str) -> bool:
    return not source_id.startswith(("community:", "local:"))


def _source_matches(source_id: str, pattern: str) -> bool:
    """fnmatch, case-insensitive for Hub repo ids: the Hub treats ``ACME/X`` and ``acme/x`` as one repo."""
    if _is_hub_id(source_id):
        return fnmatch.fnmatchcase(source_id.lower(), pattern.lower())
    return fnmatch.fnmatchcase(source_id, pattern)


def source_allowed(policy: Policy, source_id: str) -> bool:
    """Whether ``source_id`` (``org/name``, ``community:name``, ``local:/path``) passes ``[sources]``.

    Hub repo ids match case-insensitively (so ``deny = ["acme/experimental-*"]`` also stops
    ``ACME/Experimental-x``); community names and local paths are case-sensitive, like the files they name.
    """
    if any(_source_matches(source_id, pattern) for pattern in policy.sources.deny):
        return False
    return any(_source_matches(source_id, pattern) for pattern in policy.sources.allow)


def with_overrides(policy: Policy, **sections: Mapping[str, Any]) -> Policy:
    """Return ``policy`` with some keys of some sections replaced (for tests and CLI flags)."""
    updated = policy
    for section, values in sections.items():
        current = getattr(updated, section)
        allowed = {f.name for f in fields(current)}
        unknown = set(values) - allowed
        if unknown:
            raise PolicyError(f"unknown key(s) {sorted(unknown)} for [{section}]; valid keys are {sorted(allowed)}.")
        updated = replace(updated, **{section: replace(current, **values)})
    return updated
