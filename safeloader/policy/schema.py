"""The policy as typed, immutable values.

The key names mirror the TOML tables one to one (see ``policies/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")
AuditMode = Literal["enforce", "warn", "off"]
RestrictedPythonMode = Literal["off", "report", "enforce"]

#: Every sandbox layer, in the order the worker sets them up.
SANDBOX_LAYERS: tuple[str, ...] = (
    "environment",
    "privileges",
    "network",
    "processes",
    "filesystem",
    "syscalls",
    "resources",
    "cgroup",
)
#: Required when a policy does not say: every layer except ``cgroup``, which needs root (or a delegated
#: cgroup v2 subtree) — without it memory is still bounded by rlimits, only not shared memory and stack.
DEFAULT_REQUIRED_LAYERS: tuple[str, ...] = tuple(layer for layer in SANDBOX_LAYERS if layer != "cgroup")


def severity_rank(severity: str) -> int:
    """Order severities so that ``info`` < ``low`` < … < ``critical``."""
    return SEVERITIES.index(severity)  # type: ignore[arg-type,unused-ignore]


@dataclass(frozen=True)
class SourcesPolicy:
    #: fnmatch patterns over source ids: ``org/name`` for Hub repos, ``community:name``,
    #: ``local:/abs/path`` for local directories and files.
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    require_pinned_revision: bool = False
    require_signature: bool = False
    #: Ed25519 public keys: ``ed25519:<base64 raw key>`` or absolute paths to PEM files.
    trusted_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditPolicy:
    mode: AuditMode = "enforce"
    fail_on: Severity = "high"
    #: ``None`` means every import not in ``deny_imports`` is allowed.
    allow_imports: tuple[str, ...] | None = None
    deny_imports: tuple[str, ...] = ()
    restricted_python: RestrictedPythonMode = "report"
    #: Rule id → ``"off"`` or a severity overriding the rule's default.
    rules: tuple[tuple[str, str], ...] = ()

    def rule_override(self, rule_id: str) -> str | None:
        for rid, value in self.rules:
            if rid == rule_id:
                return value
        return None


@dataclass(frozen=True)
class SandboxPolicy:
    network: bool = False
    memory_limit_mb: int = 8192
    #: Ceiling on the bytes of arrays, tensors, images and strings in one reply of the worker; the caller
    #: checks it (and each buffer against its descriptor) before it maps or copies anything.
    max_result_mb: int = 4096
    call_timeout_s: float = 600.0
    load_timeout_s: float = 300.0
    gpu: bool = False
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()
    env_allow: tuple[str, ...] = ()
    #: Layers that must be active; a layer missing on the host and listed here is an error.
    require: tuple[str, ...] = DEFAULT_REQUIRED_LAYERS
    #: Number of torch intra-op threads in the worker (0: the number of CPUs, at most 8).
    threads: int = 0
    isolate_plain_pipelines: bool = True
    #: Most bytes one ``save_pretrained`` (or ``output_dir``) may copy back from the worker into the caller's folder.
    max_output_mb: int = 16384
    #: Size of the tmpfs holding the worker's HOME and TMPDIR (its only writable space), in MiB.
    tmp_size_mb: int = 1024


@dataclass(frozen=True)
class WeightsPolicy:
    allow_pickle: bool = False


@dataclass(frozen=True)
class Policy:
    name: str = "default"
    description: str = ""
    #: Files this policy was read from, most specific first (for error messages and reports).
    origin: tuple[str, ...] = ()
    sources: SourcesPolicy = field(default_factory=SourcesPolicy)
    audit: AuditPolicy = field(default_factory=AuditPolicy)
    sandbox: SandboxPolicy = field(default_factory=SandboxPolicy)
    weights: WeightsPolicy = field(default_factory=WeightsPolicy)

    @property
    def path(self) -> Path | None:
        return Path(self.origin[0]) if self.origin else None
