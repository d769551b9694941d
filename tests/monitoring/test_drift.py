"""Acceptance 3 of drift monitoring, on real sentence embeddings of real data: each test
holds its false-alarm rate on shuffled records of one dataset (the measured rate within the
configured one plus a binomial margin) and detects a real shift: a later period of the same
time-ordered dataset (health-news tweets of 2012, then of 2015) and another source (film
reviews). The figures are printed (``pytest -s``)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
from scipy.stats import binom, poisson

from silolearn.datasets import health_tweets, rotten_tomatoes
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.monitoring.drift import OnlineMMD, label_test, level, mmd_test, permutations_for

SHUFFLES = 100
MARGIN = 0.999
"""A measured false-alarm count passes up to this quantile of its binomial (or Poisson)
law at the configured rate: a correct test fails one run in a thousand."""


@pytest.fixture(scope="module")
def data() -> Iterator[dict[str, np.ndarray]]:
    """Embeddings of 700 tweets of 2012, 150 of 2015 and 150 review snippets, and the
    2012 tweets' outlets (their labels)."""
    tweets = health_tweets()
    early = random.Random(0).sample([r for r in tweets if r["timestamp"][:4] == "2012"], 700)
    late = random.Random(1).sample([r for r in tweets if r["timestamp"][:4] == "2015"], 150)
    reviews = random.Random(2).sample(rotten_tomatoes(), 150)
    encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)

    def embed(rows: list[dict[str, str]]) -> np.ndarray:
        return encoder.embed([r["text"] for r in rows], max_length=128).astype(np.float64)

    yield {
        "same": embed(early),
        "labels": np.array([r["label"] for r in early]),
        "later": embed(late),
        "other": embed(reviews),
    }


def _allowed(trials: int, rate: float) -> int:
    return int(binom.ppf(MARGIN, trials, rate))


def test_window_mmd_holds_its_false_alarm_rate_on_shuffled_real_data(
    data: dict[str, np.ndarray],
) -> None:
    alpha = level(100, 2000)  # 0.05: a window of 100 served, 2000 expected between alarms
    rng = np.random.default_rng(0)
    alarms = 0
    for s in range(SHUFFLES):
        order = rng.permutation(len(data["same"]))
        ref, window = data["same"][order[:300]], data["same"][order[300:400]]
        alarms += mmd_test(ref, window, alpha=alpha, permutations=100, seed=s).drift
    allowed = _allowed(SHUFFLES, alpha)
    print(
        f"\nwindow MMD on {SHUFFLES} shuffles: {alarms} alarms ({alarms / SHUFFLES:.3f}), "
        f"configured {alpha:.3f}, allowed up to {allowed}"
    )
    assert alarms <= allowed


def test_window_mmd_detects_a_later_period_and_another_source(
    data: dict[str, np.ndarray],
) -> None:
    alpha = level(100, 2000)
    rng = np.random.default_rng(1)
    found = {}
    for shifted in ("later", "other"):
        hits = []
        for s in range(20):
            ref = data["same"][rng.permutation(len(data["same"]))[:300]]
            window = data[shifted][rng.permutation(len(data[shifted]))[:100]]
            hits.append(mmd_test(ref, window, alpha=alpha, permutations=100, seed=s).p_value)
        found[shifted] = float(np.mean(np.array(hits) <= alpha))
        print(
            f"\nwindow MMD, 2012 tweets vs {shifted}: detected in {found[shifted]:.0%} of 20 "
            f"windows of 100, median p {np.median(hits):.4f}"
        )
    assert found["later"] >= 0.9
    assert found["other"] == 1.0


def _online_run(detector: OnlineMMD, stream: np.ndarray) -> tuple[int, int, list[int]]:
    """Alarms, steps watched with a full window, and the steps at which alarms fired."""
    watched, fired = 0, []
    for step, x in enumerate(stream):
        if detector.update(x):
            fired.append(step)
        watched += detector.ready
    return len(fired), watched, fired


def test_online_mmd_holds_its_expected_run_time_on_shuffled_real_data(
    data: dict[str, np.ndarray],
) -> None:
    ert, runs = 500.0, 30
    rng = np.random.default_rng(2)
    alarms = watched = 0
    for s in range(runs):
        order = rng.permutation(len(data["same"]))
        detector = OnlineMMD(window=50, ert=ert, bootstraps=200, seed=s)
        detector.fit(data["same"][order[:400]])
        a, w, _ = _online_run(detector, data["same"][order[400:]])
        alarms, watched = alarms + a, watched + w
    allowed = int(poisson.ppf(MARGIN, watched / ert))
    print(
        f"\nonline MMD on {runs} shuffled streams: {alarms} alarms in {watched} watched steps "
        f"(one per {watched / max(alarms, 1):.0f}), configured one per {ert:.0f}, "
        f"allowed up to {allowed}"
    )
    assert alarms <= allowed


def test_online_mmd_detects_a_later_period_and_another_source(
    data: dict[str, np.ndarray],
) -> None:
    rng = np.random.default_rng(3)
    order = rng.permutation(len(data["same"]))
    detector = OnlineMMD(window=50, ert=5000.0, bootstraps=200, seed=0)
    detector.fit(data["same"][order[:400]])
    before = data["same"][order[400:500]]
    for shifted in ("later", "other"):
        detector._restart()
        _, _, fired = _online_run(detector, np.vstack([before, data[shifted]]))
        early = [f for f in fired if f < len(before)]
        late = [f - len(before) for f in fired if f >= len(before)]
        delay = late[0] + 1 if late else None
        print(
            f"\nonline MMD, 2012 tweets then {shifted}: alarms before the change {len(early)}, "
            f"detected {delay} items after it (window 50, one false alarm per 5000 expected)"
        )
        assert delay is not None and delay <= len(data[shifted])


def test_label_test_holds_its_false_alarm_rate_on_shuffled_real_labels(
    data: dict[str, np.ndarray],
) -> None:
    alpha = 0.05
    rng = np.random.default_rng(4)
    labels = data["labels"]
    alarms = 0
    for s in range(SHUFFLES):
        order = rng.permutation(len(labels))
        ref, window = labels[order[:300]].tolist(), labels[order[300:400]].tolist()
        alarms += label_test(ref, window, alpha=alpha, permutations=100, seed=s).drift
    allowed = _allowed(SHUFFLES, alpha)
    print(f"\nlabel chi-square on {SHUFFLES} shuffles: {alarms} alarms, allowed up to {allowed}")
    assert alarms <= allowed
    # a window of one outlet only is drift
    top = max(set(labels.tolist()), key=labels.tolist().count)
    assert label_test(labels[:300].tolist(), [top] * 100, alpha=alpha, permutations=100).drift


def test_a_level_below_the_permutations_resolution_can_still_be_reached() -> None:
    # one false alarm per million items in windows of 100: level 1e-4, finer than the
    # smallest p-value of 1,000 permutations (1/1001)
    alpha = level(100, 1e6)
    assert not label_test(["a", "b"] * 150, ["c"] * 100, alpha=alpha, permutations=1000).drift
    permutations = permutations_for(alpha, 1000)
    assert 1 / (permutations + 1) <= alpha / 2
    assert label_test(["a", "b"] * 150, ["c"] * 100, alpha=alpha, permutations=permutations).drift
    assert permutations_for(0.05, 1000) == 1000  # never fewer than configured
