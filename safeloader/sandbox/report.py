"""What the sandbox actually set up, as a value loads, reports and ``safeloader doctor`` can show."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerStatus:
    #: One of :data:`safeloader.policy.SANDBOX_LAYERS`.
    layer: str
    active: bool
    #: What was set up, or why it could not be.
    detail: str
    #: Whether the policy required this layer (a required layer is never inactive in a running worker).
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "active": self.active, "detail": self.detail, "required": self.required}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerStatus:
        return cls(
            layer=str(data["layer"]),
            active=bool(data["active"]),
            detail=str(data["detail"]),
            required=bool(data.get("required", True)),
        )


@dataclass(frozen=True)
class SandboxReport:
    layers: tuple[LayerStatus, ...]
    #: Facts about the confinement (host uid of the worker, paths granted, limits) for reports.
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def all_active(self) -> bool:
        return all(layer.active for layer in self.layers)

    @property
    def missing(self) -> tuple[LayerStatus, ...]:
        return tuple(layer for layer in self.layers if not layer.active)

    def layer(self, name: str) -> LayerStatus | None:
        for status in self.layers:
            if status.layer == name:
                return status
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [layer.to_dict() for layer in self.layers], "facts": dict(self.facts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxReport:
        return cls(
            layers=tuple(LayerStatus.from_dict(item) for item in data.get("layers", [])),
            facts=dict(data.get("facts", {})),
        )

    def format_text(self) -> str:
        lines = ["sandbox:"]
        for status in self.layers:
            mark = "on " if status.active else ("OFF" if not status.required else "MISSING")
            lines.append(f"  [{mark}] {status.layer:<12} {status.detail}")
        return "\n".join(lines)
