"""The canary's statistics (``validation.sequential``): confidence sequences of accuracy and
their difference, and the predicted-label test with its alpha spent over looks. Their
error rates under continuous peeking, measured on real prediction outcomes, are in
tests/operations/test_rollout.py (which has the real models)."""

from __future__ import annotations

import doctest

import numpy as np

from silolearn.validation import sequential
from silolearn.validation.sequential import (
    accuracy_bounds,
    difference_bounds,
    label_drift,
    look_due,
)


def test_the_module_example_runs() -> None:
    assert doctest.testmod(sequential).failed == 0


def test_an_accuracy_sequence_holds_the_observed_accuracy_and_narrows_with_evidence() -> None:
    widths = []
    for n in (10, 100, 1000, 10000):
        lower, upper = accuracy_bounds(0.7 * n, n, 0.05)
        assert lower < 0.7 < upper
        widths.append(float(upper - lower))
    assert widths == sorted(widths, reverse=True)
    # nothing observed yet: everything is possible; all right or all wrong: one side open
    assert tuple(map(float, accuracy_bounds(0, 0, 0.05))) == (0.0, 1.0)
    assert float(accuracy_bounds(20, 20, 0.05)[1]) == 1.0
    assert float(accuracy_bounds(0, 20, 0.05)[0]) == 0.0


def test_a_stricter_alpha_gives_a_wider_sequence_and_arrays_give_one_per_element() -> None:
    narrow = accuracy_bounds(80, 100, 0.10)
    wide = accuracy_bounds(80, 100, 0.01)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    lower, upper = accuracy_bounds(np.array([8, 80, 800]), np.array([10, 100, 1000]), 0.05)
    assert lower.shape == upper.shape == (3,)
    assert float(lower[1]) == float(accuracy_bounds(80, 100, 0.05)[0])


def test_the_difference_sequence_is_the_two_sequences_at_half_alpha() -> None:
    lower, upper = difference_bounds((90, 150), (800, 1000), 0.05)
    canary = accuracy_bounds(90, 150, 0.025)
    stable = accuracy_bounds(800, 1000, 0.025)
    assert float(lower) == float(canary[0] - stable[1])
    assert float(upper) == float(canary[1] - stable[0])
    assert upper < 0  # 60% of 150 against 80% of 1000: shown worse


def test_label_drift_needs_both_significance_and_a_large_change() -> None:
    same = label_drift(
        {"a": 50, "b": 50}, {"a": 500, "b": 500}, look=0, alpha=0.01, min_distance=0.1
    )
    assert not same.abnormal and same.p_value > 0.5
    moved = label_drift(
        {"a": 90, "b": 10}, {"a": 500, "b": 500}, look=0, alpha=0.01, min_distance=0.1
    )
    assert moved.abnormal and moved.alpha == 0.005 and moved.distance > 0.3
    # a small shift on a great deal of traffic is significant, yet not abnormal
    slight = label_drift(
        {"a": 5300, "b": 4700}, {"a": 50000, "b": 50000}, look=0, alpha=0.01, min_distance=0.1
    )
    assert slight.p_value < 0.005 and not slight.abnormal
    # later looks spend less: alpha / 2^(look + 1)
    assert label_drift({"a": 1}, {"a": 1}, look=3, alpha=0.01, min_distance=0.1).alpha == 0.01 / 16


def test_looks_fall_at_doubling_counts() -> None:
    due = [n for n in range(1, 900) if look_due(n, 0, 100)]
    assert due[0] == 100
    assert not look_due(199, 1, 100) and look_due(200, 1, 100) and look_due(400, 2, 100)
