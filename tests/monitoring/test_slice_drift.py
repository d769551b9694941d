"""A slice window's tests stop permuting once they cannot reject: the decision is the full
test's, on windows that reject and windows that do not, and a stopped test's p-value is
above its level."""

from __future__ import annotations

import numpy as np

from silolearn.monitoring.drift import label_test, mmd_test


def test_a_test_stopped_early_decides_as_the_full_test() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(120, 8))
    labels = [str(x) for x in rng.integers(0, 4, 120)]
    decisions = []
    for seed in range(12):
        shift = 0.0 if seed % 2 else 0.6
        window = rng.normal(shift, size=(30, 8))
        predicted = [str(x) for x in rng.integers(0, 4 if seed % 2 else 2, 30)]
        for test, args in ((mmd_test, (reference, window)), (label_test, (labels, predicted))):
            full = test(*args, alpha=0.002, permutations=3000, seed=seed)  # type: ignore[operator]
            quick = test(*args, alpha=0.002, permutations=3000, seed=seed, decide_only=True)  # type: ignore[operator]
            assert quick.drift == full.drift
            if full.drift:  # a rejecting window runs every permutation: the same p-value
                assert quick.p_value == full.p_value
            else:
                assert quick.p_value > quick.alpha
            decisions.append(full.drift)
    # both kinds of windows were met: shifted ones rejected, in-control ones not
    assert any(decisions) and not all(decisions)
