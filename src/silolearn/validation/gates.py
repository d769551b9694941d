"""The gates a candidate passes before it serves.

The first gate is quality against the active version: the candidate's macro-F1 on the
tenant's eval window must be at least the active version's on the same records, minus a
tolerance, and the window must hold enough labelled records to judge at all. Verdicts are
numbers, never record text; they are stored with the version and audited with the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class GateVerdict:
    gate: str
    passed: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "reason": self.reason,
            "metrics": self.metrics,
            "threshold": self.threshold,
        }


def no_worse_than_active(
    candidate: dict[str, Any],
    active: dict[str, Any] | None,
    *,
    tolerance: float,
    min_eval_records: int,
) -> GateVerdict:
    """``candidate`` and ``active`` are metrics on the same eval records."""
    n = int(candidate.get("n", 0))
    threshold = {"tolerance": tolerance, "min_eval_records": min_eval_records}
    after = float(candidate.get("macro_f1", 0.0))
    before = None if active is None else float(active.get("macro_f1", 0.0))
    metrics = {"n": n, "macro_f1": after, "active_macro_f1": before}
    if n < min_eval_records:
        return GateVerdict(
            "quality",
            False,
            f"only {n} labelled eval records in the window, {min_eval_records} needed to judge",
            metrics,
            threshold,
        )
    if before is None:
        return GateVerdict("quality", True, "first version: nothing to be worse than", metrics)
    # metrics carry 6 decimals: compare the shortfall at that precision, so a candidate
    # exactly `tolerance` below is within it whatever binary rounding does
    if round(before - after, 6) <= tolerance:
        return GateVerdict(
            "quality",
            True,
            f"macro-F1 {after:.4f} vs active {before:.4f} (tolerance {tolerance})",
            metrics,
            threshold,
        )
    return GateVerdict(
        "quality",
        False,
        f"macro-F1 {after:.4f} is below the active version's {before:.4f} by more than {tolerance}",
        metrics,
        threshold,
    )
