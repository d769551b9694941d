"""Classification metrics against scikit-learn (the quality gate's verdicts are tested in
tests/validation/test_gate_rules.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from silolearn.learning.metrics import classification_metrics

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
