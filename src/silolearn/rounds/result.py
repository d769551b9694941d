"""What a round (or a remediated ``train`` call) ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoundResult:
    tenant: str
    status: str
    """``active`` (promoted), ``rejected``, or ``failed`` (no version was made)."""
    version: int | None = None
    kind: str | None = None
    sha256: str | None = None
    parent: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    divergence: list[dict[str, Any]] = field(default_factory=list)
    """Every other tenant's probe-set comparison after this round."""
    shadow: dict[str, Any] | None = None
    """The isolated-shadow comparison, on a shared-layer member's first round on a shared
    version (``Trainer.shadow``)."""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per label: records the run trained on (``train``), of which new (``new``), and
    labelled eval records it was judged on (``eval``)."""
    warnings: list[dict[str, Any]] = field(default_factory=list)
    """Labels that vanished from the run's training set or whose share collapsed."""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """Every candidate this ``train`` call made: the run as asked, then any remediation."""
    explanation: str | None = None
    """Why no candidate was promoted, and which policy change would allow one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "status": self.status,
            "version": self.version,
            "kind": self.kind,
            "sha256": self.sha256,
            "parent": self.parent,
            "metrics": self.metrics,
            "before": self.before,
            "decision": self.decision,
            "lineage": self.lineage,
            "timings": self.timings,
            "error": self.error,
            "divergence": self.divergence,
            "shadow": self.shadow,
            "labels": self.labels,
            "warnings": self.warnings,
            "attempts": self.attempts,
            "explanation": self.explanation,
        }
