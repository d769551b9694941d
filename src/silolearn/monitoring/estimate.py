"""Performance without labels: what a version's served probabilities say its accuracy and
macro-F1 are, for when feedback is scarce (the idea behind NannyML's confidence-based
performance estimation, CBPE).

If a model is calibrated, a prediction whose probabilities are ``p`` is right with
probability ``p[predicted]`` and its true label is ``k`` with probability ``p[k]``. Summed
over what a version served, the probabilities give an expected confusion matrix (rows: the
label served, columns: the true label); its trace over the count is the expected accuracy
and its per-class counts give an expected macro-F1 (the F1 of expected counts). The
promise holds only as far as the model is calibrated: the estimate carries the version's
expected calibration error, measured out of fold on its own training records when it was
fitted (``lineage.fit.tuning.ece``), and is marked unreliable above ``max_ece``. It is always
reported as an estimate, next to the accuracy measured from feedback when there is any.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Z95 = 1.959964


class ServedProbabilities:
    """Running sums of one version's served probabilities (no text, no single prediction).

    >>> served = ServedProbabilities()
    >>> served.add([{"a": 0.9, "b": 0.1}, {"a": 0.2, "b": 0.8}, {"a": 0.6, "b": 0.4}], day="d")
    >>> round(served.estimate(ece=0.01, max_ece=0.05)["accuracy"], 4)
    0.7667
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.count = int(state.get("count", 0))
        self.confidence = float(state.get("confidence", 0.0))
        """Sum of the served label's probability."""
        self.confidence_sq = float(state.get("confidence_sq", 0.0))
        self.matrix: dict[str, dict[str, float]] = {
            k: dict(v) for k, v in state.get("matrix", {}).items()
        }
        """served label -> true label -> summed probability."""
        self.days: dict[str, list[float]] = {k: list(v) for k, v in state.get("days", {}).items()}
        """day -> [count, summed confidence]."""

    def add(self, probabilities: Sequence[Mapping[str, float]], *, day: str) -> None:
        tally = self.days.setdefault(day, [0, 0.0])
        for proba in probabilities:
            if not proba:
                continue
            served = max(proba, key=lambda k: proba[k])
            top = float(proba[served])
            self.count += 1
            self.confidence += top
            self.confidence_sq += top * top
            tally[0] += 1
            tally[1] += top
            row = self.matrix.setdefault(served, {})
            for label, p in proba.items():
                row[label] = row.get(label, 0.0) + float(p)

    def state(self, *, keep_days: int) -> dict[str, Any]:
        days = dict(sorted(self.days.items())[-keep_days:])
        return {
            "count": self.count,
            "confidence": self.confidence,
            "confidence_sq": self.confidence_sq,
            "matrix": self.matrix,
            "days": days,
        }

    def estimate(self, *, ece: float | None, max_ece: float) -> dict[str, Any]:
        """The estimate with its interval for the accuracy that labels of these served
        predictions would measure, and whether it can be relied on.

        Under calibration the prediction served with confidence ``p`` is right with
        probability ``p``, so the measured accuracy is a mean of independent Bernoulli draws:
        its standard error is ``sqrt(sum p (1 - p)) / n`` (``sampling_sd``). The interval
        is the estimate plus or minus 1.96 of those plus the calibration error, which bounds
        how far the mean confidence can sit from the mean correctness."""
        if self.count == 0:
            return {"estimate": True, "served": 0, "reliable": False, "reason": "nothing served"}
        n = self.count
        accuracy = self.confidence / n
        sampling_sd = math.sqrt(max(0.0, self.confidence - self.confidence_sq)) / n
        sampling = Z95 * sampling_sd
        miscalibration = ece if ece is not None else 0.0
        reliable = ece is not None and ece <= max_ece
        if ece is None:
            reason = "the version records no calibration error"
        elif ece > max_ece:
            reason = f"calibration error {ece:.3f} above {max_ece:.3f}"
        else:
            reason = f"calibration error {ece:.3f} within {max_ece:.3f}"
        return {
            "estimate": True,
            "method": "confidence-based (expected confusion matrix from served probabilities)",
            "served": n,
            "accuracy": accuracy,
            "accuracy_interval": [
                max(0.0, accuracy - sampling - miscalibration),
                min(1.0, accuracy + sampling + miscalibration),
            ],
            "sampling_sd": sampling_sd,
            "macro_f1": expected_macro_f1(self.matrix),
            "ece": ece,
            "reliable": reliable,
            "reason": reason,
            "daily": [
                {"day": day, "served": int(c), "accuracy": s / c}
                for day, (c, s) in sorted(self.days.items())
                if c
            ],
        }


def expected_macro_f1(matrix: Mapping[str, Mapping[str, float]]) -> float | None:
    """Macro-F1 of an expected confusion matrix (served label -> true label -> mass), over
    every label that appears in it."""
    labels = sorted(set(matrix) | {k for row in matrix.values() for k in row})
    if not labels:
        return None
    scores = []
    for label in labels:
        tp = matrix.get(label, {}).get(label, 0.0)
        served = sum(matrix.get(label, {}).values())
        true = sum(row.get(label, 0.0) for row in matrix.values())
        denominator = served + true
        scores.append(2.0 * tp / denominator if denominator > 0 else 0.0)
    return sum(scores) / len(scores)


def version_ece(lineage: Mapping[str, Any]) -> float | None:
    """The calibration error a version recorded when it was fitted, if any."""
    fit = lineage.get("fit")
    tuning = fit.get("tuning") if isinstance(fit, Mapping) else None
    ece = tuning.get("ece") if isinstance(tuning, Mapping) else None
    return float(ece) if isinstance(ece, int | float) else None
