"""The label queue's maths (``learning.active``): margin uncertainty, a batch spread by
farthest-first among the uncertain, and the self-confirmed quota of a round."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from silolearn.learning import active
from silolearn.learning.active import pick_for_labelling, self_confirmed_quota, uncertainty


def test_module_examples_run() -> None:
    assert doctest.testmod(active).failed == 0


def test_uncertainty_is_one_minus_the_margin() -> None:
    assert uncertainty([0.5, 0.5]) == 1.0
    assert uncertainty([1.0, 0.0, 0.0]) == 0.0
    assert uncertainty([0.2, 0.7, 0.1]) == pytest.approx(0.5)
    assert uncertainty([1.0]) == 1.0


def test_a_batch_spreads_over_clusters_instead_of_taking_one_cluster() -> None:
    rng = np.random.default_rng(0)
    # three tight clusters; the first holds the ten most uncertain candidates
    centres = np.eye(3, 16, dtype=np.float32)
    embeddings = np.concatenate(
        [c + 0.01 * rng.standard_normal((10, 16)).astype(np.float32) for c in centres]
    )
    scores = np.concatenate([np.full(10, 0.9), np.full(10, 0.8), np.full(10, 0.7)])
    scores = scores + 0.001 * rng.random(30)
    margin_only = list(np.argsort(-scores)[:3])
    assert {i // 10 for i in margin_only} == {0}
    picks = pick_for_labelling(scores, embeddings, 3, pool_factor=10)
    assert picks[0] == int(np.argmax(scores))  # the most uncertain starts
    assert {i // 10 for i in picks} == {0, 1, 2}
    assert pick_for_labelling(scores, embeddings, 3, pool_factor=10) == picks  # deterministic


def test_candidates_without_embeddings_are_taken_by_uncertainty() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    assert pick_for_labelling(scores, None, 2) == [1, 3]
    mixed = [None, np.ones(4, np.float32), None, -np.ones(4, np.float32)]
    assert pick_for_labelling(scores, mixed, 3) == [1, 3, 2]
    assert pick_for_labelling(scores, None, 0) == []
    with pytest.raises(ValueError):
        pick_for_labelling(scores, [None], 2)


@pytest.mark.parametrize("max_share", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_the_quota_keeps_the_share_at_most_the_bound_and_as_close_as_whole_records_allow(
    max_share: float,
) -> None:
    for total in range(1, 80):
        for confirmed in range(total + 1):
            keep = self_confirmed_quota(total, confirmed, max_share)
            assert 0 <= keep <= confirmed
            trained = total - confirmed + keep
            if trained:
                assert keep / trained <= max_share + 1e-12
            if keep < confirmed:  # one more would break the bound
                assert (keep + 1) / (trained + 1) > max_share
    assert self_confirmed_quota(10, 10, 1.0) == 10
