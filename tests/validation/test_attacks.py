"""The attack statistics behind the release gates, checked against brute force, scipy and
simulation: AUC/TPR against pairwise and per-threshold counts, the vectorised bootstrap
against a naive loop over the same draws, exposure against its sampling distribution, and
the one-run epsilon bound for soundness and power on exact randomised response."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats

from silolearn.validation.attacks import (
    attack_metrics,
    exposure,
    exposure_from_rank,
    lira_offline_scores,
    logit_confidence,
    loss_threshold_scores,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    roc_auc,
    tpr_at_fpr,
)

# ------------------------------------------------------------------ brute-force references


def _pairwise_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    wins = 0.0
    for s in members:
        for t in nonmembers:
            wins += 1.0 if s > t else 0.5 if s == t else 0.0
    return wins / (members.size * nonmembers.size)


def _threshold_tpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """Every threshold t in the data (and +inf), member iff score >= t."""
    best = 0.0
    for t in [*np.unique(np.concatenate([members, nonmembers])), np.inf]:
        if np.mean(nonmembers >= t) <= fpr + 1e-12:
            best = max(best, float(np.mean(members >= t)))
    return best


def _p_value(eps: float, m: int, r: int, v: int, delta: float) -> float:
    """The main theorem of Steinke et al. 2023, written out term by term."""
    q = math.exp(eps) / (1.0 + math.exp(eps))

    def f(u: int) -> float:
        return float(stats.binom.sf(u - 1, r, q))  # P[Binomial(r, q) >= u]

    extra = max(((f(v - i) - f(v)) / i for i in range(1, m + 1)), default=0.0)
    return min(1.0, f(v) + 2 * m * delta * extra)


# ------------------------------------------------------------------ AUC and TPR


def test_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        members = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)
        nonmembers = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)
        assert roc_auc(members, nonmembers) == pytest.approx(
            _pairwise_auc(members, nonmembers), abs=1e-12
        )


def test_auc_extremes() -> None:
    assert roc_auc([3.0, 4.0, 5.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [3.0, 4.0, 5.0]) == 0.0
    assert roc_auc([2.0, 2.0, 2.0], [2.0, 2.0]) == 0.5


@pytest.mark.parametrize(
    ("members", "nonmembers"),
    [([], [1.0]), ([1.0], []), ([np.nan], [1.0]), ([1.0], [np.inf]), ([[1.0]], [1.0])],
)
def test_auc_rejects_bad_scores(members: list[float], nonmembers: list[float]) -> None:
    with pytest.raises(ValueError):
        roc_auc(members, nonmembers)


def test_tpr_at_fpr_hand_cases() -> None:
    members, nonmembers = [5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0, 10.0]
    # 0.1 * 5 < 1: no false positive allowed, so the threshold must exceed 10
    assert tpr_at_fpr(members, nonmembers, 0.1) == 0.0
    assert tpr_at_fpr(members, nonmembers, 0.0) == 0.0
    assert tpr_at_fpr(members, nonmembers, 0.2) == 1.0  # the 10 may be a false positive
    assert tpr_at_fpr(members, nonmembers, 1.0) == 1.0
    # ties: admitting the members at 3 admits both non-members at 3
    members, nonmembers = [3.0, 3.0, 5.0], [3.0, 3.0, 1.0, 0.0]
    assert tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(1 / 3)
    assert tpr_at_fpr(members, nonmembers, 0.25) == pytest.approx(1 / 3)
    assert tpr_at_fpr(members, nonmembers, 0.5) == 1.0
    with pytest.raises(ValueError):
        tpr_at_fpr(members, nonmembers, 1.5)


def test_tpr_at_fpr_matches_threshold_scan() -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        members = rng.integers(0, 12, size=int(rng.integers(1, 30))).astype(float)
        nonmembers = rng.integers(0, 10, size=int(rng.integers(1, 30))).astype(float)
        for fpr in (0.0, 0.01, 0.1, 0.3, 0.5, 1.0):
            assert tpr_at_fpr(members, nonmembers, fpr) == pytest.approx(
                _threshold_tpr(members, nonmembers, fpr)
            )


# ------------------------------------------------------------------ bootstrap


def test_attack_metrics_point_estimates_and_ci() -> None:
    rng = np.random.default_rng(3)
    members, nonmembers = rng.normal(0.7, 1.0, 400), rng.normal(0.0, 1.0, 300)
    result = attack_metrics(members, nonmembers, rng=np.random.default_rng(4))
    assert result.auc == roc_auc(members, nonmembers)
    assert result.auc_ci[0] <= result.auc <= result.auc_ci[1]
    assert set(result.tpr) == set(result.tpr_ci) == {"0.01", "0.001"}
    for key, fpr in (("0.01", 0.01), ("0.001", 0.001)):
        assert result.tpr[key] == tpr_at_fpr(members, nonmembers, fpr)
        lo, hi = result.tpr_ci[key]
        assert 0.0 <= lo <= hi <= 1.0
    assert (result.n_members, result.n_nonmembers, result.n_bootstrap) == (400, 300, 1000)
    payload = result.to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["auc"] == round(result.auc, 6)
    assert payload["tpr_ci"]["0.01"] == [round(v, 6) for v in result.tpr_ci["0.01"]]


def test_bootstrap_equals_naive_loop_over_same_draws() -> None:
    """The multiplicity trick gives exactly what re-scoring each resample gives.

    White-box: replays the module's draw order (sorted members, then sorted non-members,
    ``rng.integers`` indices per replicate, one chunk).
    """
    rng = np.random.default_rng(5)
    members = np.round(rng.normal(0.5, 1.0, 60), 1)  # rounding makes ties
    nonmembers = np.round(rng.normal(0.0, 1.0, 45), 1)
    fprs, n_boot, confidence = (0.05, 0.2), 300, 0.9
    result = attack_metrics(
        members,
        nonmembers,
        fprs=fprs,
        n_bootstrap=n_boot,
        confidence=confidence,
        rng=np.random.default_rng(6),
    )
    replay = np.random.default_rng(6)
    m_sorted, n_sorted = np.sort(members), np.sort(nonmembers)
    m_idx = replay.integers(0, m_sorted.size, size=(n_boot, m_sorted.size))
    n_idx = replay.integers(0, n_sorted.size, size=(n_boot, n_sorted.size))
    aucs = [roc_auc(m_sorted[a], n_sorted[b]) for a, b in zip(m_idx, n_idx, strict=True)]
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    assert result.auc_ci == pytest.approx(tuple(np.quantile(aucs, q)), abs=1e-12)
    for fpr in fprs:
        tprs = [
            tpr_at_fpr(m_sorted[a], n_sorted[b], fpr) for a, b in zip(m_idx, n_idx, strict=True)
        ]
        assert result.tpr_ci[format(fpr, "g")] == pytest.approx(
            tuple(np.quantile(tprs, q)), abs=1e-12
        )


def test_bootstrap_ci_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (100, 2000):
        result = attack_metrics(
            rng.normal(0.5, 1.0, n), rng.normal(0.0, 1.0, n), n_bootstrap=500, rng=rng
        )
        widths.append(result.auc_ci[1] - result.auc_ci[0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_ci_covers_null_auc() -> None:
    rng = np.random.default_rng(8)
    reps = 200
    covered = 0
    for _ in range(reps):
        result = attack_metrics(
            rng.normal(size=40), rng.normal(size=40), fprs=(), n_bootstrap=400, rng=rng
        )
        covered += result.auc_ci[0] <= 0.5 <= result.auc_ci[1]
    assert 0.88 <= covered / reps <= 0.99


@pytest.mark.parametrize(
    "kwargs", [{"confidence": 1.0}, {"confidence": 0.0}, {"n_bootstrap": 0}, {"fprs": (1.5,)}]
)
def test_attack_metrics_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        attack_metrics([1.0, 2.0], [0.0], rng=np.random.default_rng(0), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ scores


def test_loss_threshold_scores() -> None:
    assert loss_threshold_scores([0.5, 2.0]).tolist() == [-0.5, -2.0]


def test_logit_confidence_matches_naive_log_odds() -> None:
    rng = np.random.default_rng(9)
    logits = rng.normal(0.0, 3.0, size=(50, 7))
    labels = rng.integers(0, 7, size=50)
    p = special.softmax(logits, axis=1)[np.arange(50), labels]
    assert logit_confidence(logits, labels) == pytest.approx(np.log(p / (1 - p)), rel=1e-9)


def test_logit_confidence_extreme_logits_stay_finite() -> None:
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, -1e4]])
    phi = logit_confidence(logits, np.array([0, 0, 1]))
    assert np.all(np.isfinite(phi))
    assert phi[0] == pytest.approx(1e4)  # log odds of p ~ 1 - e^-1e4
    assert phi[1] == pytest.approx(-2e4 - math.log(2))  # two rivals at 1e4
    assert phi[2] == pytest.approx(0.0, abs=1e-9)  # p = 1/2
    with pytest.raises(ValueError):
        logit_confidence(logits, np.array([0, 3, 1]))
    with pytest.raises(ValueError):
        logit_confidence(logits, np.array([0.0, 1.0, 1.0]))


def test_lira_shifted_target_scores_higher() -> None:
    rng = np.random.default_rng(10)
    reference = rng.normal(0.0, 1.0, size=(8, 500))
    out_target = rng.normal(0.0, 1.0, 500)
    in_target = out_target + 2.0
    in_scores = lira_offline_scores(in_target, reference)
    out_scores = lira_offline_scores(out_target, reference)
    assert np.all(in_scores > out_scores)
    assert roc_auc(in_scores, out_scores) > 0.8


def test_lira_variance_choice() -> None:
    rng = np.random.default_rng(11)
    scales = rng.uniform(0.5, 3.0, 40)
    target = rng.normal(size=40)
    many = rng.normal(size=(32, 40)) * scales
    per_example = lira_offline_scores(target, many)  # R >= 16: per-example by default
    assert per_example == pytest.approx((target - many.mean(0)) / many.std(0))
    few = many[:4]
    pooled = lira_offline_scores(target, few)  # R < 16: one global std by default
    assert pooled == pytest.approx((target - few.mean(0)) / few.std())
    forced = lira_offline_scores(target, few, global_variance=False)
    assert forced == pytest.approx((target - few.mean(0)) / few.std(0))
    single = lira_offline_scores(target, many[:1])
    assert np.all(np.isfinite(single))
    with pytest.raises(ValueError):
        lira_offline_scores(target, many[:1], global_variance=False)
    with pytest.raises(ValueError):
        lira_offline_scores(target, many[:, :10])
    constant = lira_offline_scores([1.0, 2.0], np.ones((20, 2)))  # sigma floored
    assert np.all(np.isfinite(constant)) and constant[1] > constant[0] == 0.0


# ------------------------------------------------------------------ exposure


def test_exposure_of_a_memorised_canary() -> None:
    rng = np.random.default_rng(12)
    alternatives = rng.normal(5.0, 1.0, 2000)
    report = exposure([0.0, 5.0], alternatives, 2**40)
    assert report.space_bits == 40.0
    # outranking all 2,000 alternatives shows the top 1/2,001 of R, no more
    assert report.empirical[0] == pytest.approx(math.log2(2001))
    assert report.max_empirical == report.empirical[0]
    assert report.extrapolated[0] > 15.0
    assert report.extrapolated[1] < 3.0
    assert report.max == max(report.extrapolated)
    assert report.samples == 2000 and report.fit == "skewnorm"
    payload = report.to_dict()
    assert json.loads(json.dumps(payload)) == payload
    # the extrapolation never exceeds log2|R|, however far below the canary is
    assert exposure([-1e6], alternatives, 2**10).extrapolated == [10.0]


def test_exposure_of_unmemorised_canaries_averages_one_over_ln2() -> None:
    rng = np.random.default_rng(13)
    alternatives = rng.gamma(3.0, 1.0, 5000)
    canaries = rng.gamma(3.0, 1.0, 2000)
    report = exposure(canaries, alternatives, 2**30)
    assert np.mean(report.extrapolated) == pytest.approx(1 / math.log(2), abs=0.15)
    # empirical with |R| = S: log2((S + 1) / (1 + #below)), about the same on average
    small = exposure(canaries, alternatives, 5000)
    assert np.mean(small.empirical) == pytest.approx(1 / math.log(2), abs=0.15)


def test_exposure_falls_back_to_a_normal_fit() -> None:
    report = exposure([0.0], [1.0, 2.0, 3.0, 4.0, 5.0], 2**20)
    assert report.fit == "normal"
    expected = -stats.norm.logcdf(0.0, 3.0, np.std([1.0, 2, 3, 4, 5])) / math.log(2)
    assert report.extrapolated[0] == pytest.approx(expected)
    assert report.samples == 5
    with pytest.raises(ValueError):
        exposure([], [1.0], 10)
    with pytest.raises(ValueError):
        exposure([1.0], [1.0], 0)


def test_exposure_from_rank() -> None:
    assert exposure_from_rank(1, 2**40) == 40.0
    assert exposure_from_rank(2**10, 2**40) == 30.0
    assert exposure_from_rank(2**40, 2**40) == 0.0
    with pytest.raises(ValueError):
        exposure_from_rank(0, 10)
    with pytest.raises(ValueError):
        exposure_from_rank(11, 10)


# ------------------------------------------------------------------ one-run audit


def _randomised_response(
    rng: np.random.Generator, m: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly eps-DP per canary: its score shows its bit with probability e^eps/(1+e^eps)."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < special.expit(eps)
    shown = np.where(truthful, included, ~included)
    return shown + 0.5 * rng.random(m), included  # independent jitter only orders ties


def test_guesses() -> None:
    scores = np.array([0.3, 0.9, 0.1, 0.5, 0.9, 0.1])
    guesses = one_run_guesses(scores, 2, 1)
    assert guesses.dtype == np.int8
    assert guesses.tolist() == [0, 1, -1, 0, 1, 0]  # the lower index of a tie ranks lower
    assert one_run_guesses(scores, 0, 0).tolist() == [0] * 6
    assert one_run_guesses(scores, 3, 3).tolist() == [-1, 1, -1, 1, 1, -1]
    with pytest.raises(ValueError):
        one_run_guesses(scores, 4, 3)


def test_pure_dp_bound_is_the_binomial_test() -> None:
    for correct, guesses, confidence in [(196, 200, 0.95), (70, 100, 0.95), (30, 30, 0.99)]:
        bound = one_run_epsilon_lower_bound(
            correct, guesses, m=1000, delta=0.0, confidence=confidence
        )
        alpha = 1 - confidence
        assert stats.binom.sf(correct - 1, guesses, special.expit(bound)) < alpha
        assert stats.binom.sf(correct - 1, guesses, special.expit(bound + 1e-6)) >= alpha
    # at chance accuracy even eps = 0 is not rejected
    assert one_run_epsilon_lower_bound(50, 100, m=1000, delta=0.0) == 0.0
    assert one_run_epsilon_lower_bound(0, 0, m=1000, delta=0.0) == 0.0


def test_approximate_dp_bound_uses_the_delta_term() -> None:
    m, alpha = 1000, 0.05
    for correct, guesses, delta in [(196, 200, 1e-5), (90, 100, 1e-4), (180, 200, 1e-3)]:
        bound = one_run_epsilon_lower_bound(correct, guesses, m=m, delta=delta)
        assert _p_value(bound, m, guesses, correct, delta) < alpha
        assert _p_value(bound + 1e-6, m, guesses, correct, delta) >= alpha


def test_delta_never_raises_the_bound() -> None:
    for correct, guesses in [(10, 10), (60, 100), (95, 100), (190, 200), (400, 500)]:
        pure = one_run_epsilon_lower_bound(correct, guesses, m=1000, delta=0.0)
        for delta in (1e-6, 1e-4, 1e-2):
            assert one_run_epsilon_lower_bound(correct, guesses, m=1000, delta=delta) <= pure
    assert one_run_epsilon_lower_bound(190, 200, m=1000, delta=1e-2) < one_run_epsilon_lower_bound(
        190, 200, m=1000, delta=0.0
    )


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_bound_is_sound_on_randomised_response(eps: float) -> None:
    trials, exceeded = 100, 0
    for seed in range(trials):
        scores, included = _randomised_response(np.random.default_rng(seed), 1000, eps)
        audit = one_run_audit(scores, included, k_plus=100, k_minus=100, delta=0.0)
        exceeded += audit.epsilon_lower_bound > eps
    assert exceeded <= 10  # at most 5% in expectation


def test_bound_has_power_on_randomised_response() -> None:
    scores, included = _randomised_response(np.random.default_rng(99), 1000, 4.0)
    audit = one_run_audit(scores, included, k_plus=100, k_minus=100, delta=1e-5)
    assert audit.guesses == 200
    assert 1.5 < audit.epsilon_lower_bound <= 4.0 + 0.5
    payload = audit.to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["m"] == 1000 and payload["delta"] == 1e-5


def test_audit_counts() -> None:
    scores = np.array([0.9, 0.8, 0.5, 0.2, 0.1])
    included = np.array([True, False, True, False, True])
    audit = one_run_audit(scores, included, k_plus=2, k_minus=2, delta=0.0)
    assert (audit.m, audit.guesses, audit.correct) == (5, 4, 2)
    assert audit.epsilon_lower_bound == 0.0
    none = one_run_audit(scores, included, k_plus=0, k_minus=0, delta=0.0)
    assert (none.guesses, none.correct, none.epsilon_lower_bound) == (0, 0, 0.0)
    with pytest.raises(ValueError):
        one_run_audit(scores, included.astype(int), k_plus=1, k_minus=1, delta=0.0)
    with pytest.raises(ValueError):
        one_run_audit(scores, included, k_plus=3, k_minus=3, delta=0.0)


@pytest.mark.parametrize(
    ("correct", "guesses", "m", "delta", "confidence"),
    [
        (11, 10, 100, 0.0, 0.95),  # more correct than guesses
        (5, 200, 100, 0.0, 0.95),  # more guesses than canaries
        (5, 10, 100, -1e-5, 0.95),
        (5, 10, 100, 1.5, 0.95),
        (5, 10, 100, 0.0, 1.0),
        (5, 10, 100, 0.0, 0.0),
        (-1, 10, 100, 0.0, 0.95),
    ],
)
def test_bound_rejects_bad_inputs(
    correct: int, guesses: int, m: int, delta: float, confidence: float
) -> None:
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(correct, guesses, m=m, delta=delta, confidence=confidence)
