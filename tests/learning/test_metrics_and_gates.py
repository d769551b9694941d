"""Classification metrics against scikit-learn, and the quality gate's verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from silolearn.learning.metrics import classification_metrics
from silolearn.validation.gates import GateVerdict, no_worse_than_active

# -- classification_metrics ------------------------------------------------------------------


def _labels(seed: int) -> tuple[list[str], list[str]]:
    """Random truth and predictions; predictions also use labels the truth never has."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    truth_space = [f"t{i}" for i in range(int(rng.integers(1, 6)))]
    extra = [f"p{i}" for i in range(int(rng.integers(0, 3)))]
    truth = [truth_space[int(i)] for i in rng.integers(0, len(truth_space), n)]
    predicted = []
    for label in truth:  # right often enough that F1s are not all zero
        if rng.random() < 0.5:
            predicted.append(label)
        else:
            space = truth_space + extra
            predicted.append(space[int(rng.integers(0, len(space)))])
    return truth, predicted


@pytest.mark.parametrize("seed", range(25))
def test_metrics_match_scikit_learn(seed: int) -> None:
    truth, predicted = _labels(seed)
    ours = classification_metrics(truth, predicted)
    union = sorted(set(truth) | set(predicted))
    assert ours["n"] == len(truth)
    assert sorted(ours["per_class"]) == union
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    macro = f1_score(truth, predicted, average="macro", labels=union, zero_division=0)
    assert ours["macro_f1"] == pytest.approx(macro, abs=1e-6)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=union, zero_division=0
    )
    for i, label in enumerate(union):
        row = ours["per_class"][label]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6), label
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6), label
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6), label
        assert row["support"] == support[i] and isinstance(row["support"], int), label


def test_the_random_cases_cover_labels_absent_from_the_truth() -> None:
    cases = [_labels(seed) for seed in range(25)]
    assert sum(bool(set(p) - set(t)) for t, p in cases) >= 5
    assert sum(len(set(t)) == 1 for t, _ in cases) >= 1


def test_a_label_only_predicted_counts_with_f1_zero() -> None:
    truth = ["a", "a", "b", "b"]
    predicted = ["a", "c", "b", "b"]
    ours = classification_metrics(truth, predicted)
    assert ours["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert ours["accuracy"] == 0.75
    # a: p 1, r 0.5, f1 2/3; b: 1; c: 0
    assert ours["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-6)


def test_empty_and_mismatched_inputs() -> None:
    assert classification_metrics([], []) == {
        "n": 0,
        "accuracy": 0.0,
        "macro_f1": 0.0,
        "per_class": {},
    }
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics(["a"], [])


def test_perfect_predictions() -> None:
    truth = ["x", "y", "y", "z"]
    ours = classification_metrics(truth, list(truth))
    assert ours["accuracy"] == 1.0 and ours["macro_f1"] == 1.0
    assert ours["per_class"]["y"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


# -- the quality gate -----------------------------------------------------------------------


def _metrics(macro_f1: float, n: int = 50) -> dict[str, float | int]:
    return {"n": n, "macro_f1": macro_f1, "accuracy": macro_f1}


def _gate(candidate: float, active: float | None, n: int = 50, **kw: float) -> GateVerdict:
    return no_worse_than_active(
        _metrics(candidate, n),
        None if active is None else _metrics(active, n),
        tolerance=kw.get("tolerance", 0.01),
        min_eval_records=int(kw.get("min_eval_records", 10)),
    )


def test_first_version_passes() -> None:
    verdict = _gate(0.2, None)
    assert verdict.passed and verdict.gate == "quality"
    assert "first version" in verdict.reason
    assert verdict.metrics == {"n": 50, "macro_f1": 0.2, "active_macro_f1": None}
    assert verdict.to_dict()["passed"] is True


def test_too_few_eval_records_fail_naming_the_counts() -> None:
    for active in (None, 0.5):
        verdict = _gate(0.9, active, n=7, min_eval_records=10)
        assert not verdict.passed
        assert "7" in verdict.reason and "10" in verdict.reason
        assert verdict.metrics["n"] == 7
        assert verdict.threshold == {"tolerance": 0.01, "min_eval_records": 10}
    assert _gate(0.9, None, n=10, min_eval_records=10).passed
    assert not _gate(0.9, None, n=0, min_eval_records=1).passed


def test_within_tolerance_passes_and_worse_fails() -> None:
    better = _gate(0.85, 0.80)
    assert better.passed and "0.8500" in better.reason and "0.8000" in better.reason
    assert _gate(0.80, 0.80).passed
    assert _gate(0.795, 0.80).passed  # worse, but within 0.01
    worse = _gate(0.78, 0.80)
    assert not worse.passed
    assert "0.7800" in worse.reason and "0.8000" in worse.reason and "0.01" in worse.reason
    assert worse.metrics == {"n": 50, "macro_f1": 0.78, "active_macro_f1": 0.80}
    assert worse.threshold == {"tolerance": 0.01, "min_eval_records": 10}
    assert worse.to_dict()["threshold"] == worse.threshold
    assert not _gate(0.5, 0.8, tolerance=0.25).passed
    assert _gate(0.5, 0.8, tolerance=0.3).passed


def test_exactly_at_the_boundary_passes() -> None:
    """Values whose difference is exact in binary floating point."""
    assert _gate(0.5, 0.75, tolerance=0.25).passed
    assert _gate(0.625, 0.75, tolerance=0.125).passed
    assert not _gate(0.5, 0.75, tolerance=0.125).passed
    assert _gate(0.0, 0.0, tolerance=0.0).passed
    assert not _gate(0.5, 0.5 + 2**-20, tolerance=0.0).passed


def _boundary_cases(tolerance: float) -> list[tuple[float, float]]:
    """Macro-F1 pairs on the metrics' 6-decimal grid that are exactly ``tolerance`` apart."""
    step = round(tolerance * 1e6)
    return [(round((k - step) / 1e6, 6), round(k / 1e6, 6)) for k in range(step, 1_000_001, 997)]


def test_exactly_at_a_decimal_boundary_passes() -> None:
    assert _gate(0.7, 0.8, tolerance=0.1).passed
    failing = [
        (after, before)
        for tolerance in (0.01, 0.02, 0.05)
        for after, before in _boundary_cases(tolerance)
        if not _gate(after, before, tolerance=tolerance).passed
    ]
    assert failing == []
