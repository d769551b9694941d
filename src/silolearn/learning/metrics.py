"""Classification metrics of a version on a tenant's eval records: accuracy, macro-F1 and
per-class precision, recall, F1 and support. Pure functions of labels and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_metrics(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Macro-F1 averages over every label that occurs in ``truth`` or ``predicted``; a label
    the adapter cannot predict (one it never saw in training) still counts, with F1 0."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    n = len(truth)
    labels = sorted(set(truth) | set(predicted))
    per_class: dict[str, dict[str, float | int]] = {}
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": tp + fn,
        }
    correct = sum(1 for t, p in zip(truth, predicted, strict=True) if t == p)
    macro = sum(float(c["f1"]) for c in per_class.values()) / len(labels) if labels else 0.0
    return {
        "n": n,
        "accuracy": round(correct / n, 6) if n else 0.0,
        "macro_f1": round(macro, 6),
        "per_class": per_class,
    }
