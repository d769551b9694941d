"""The rules the gates decide by: severity by the tenant's audience, the canary gate against
never-inserted controls of the same labels, and the quality gate's burden of proof
(non-inferiority against what serves, better than a constant answer for a first version,
the records an undecided interval would need), on hand-made predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from silolearn.config import GatePolicy, Settings
from silolearn.errors import ConfigError
from silolearn.learning.adapters import Features, HeadAdapter
from silolearn.learning.metrics import classification_metrics
from silolearn.validation.attacks import shift_test
from silolearn.validation.canaries import Canaries, alternatives_pool, keyed_rng, sample_texts
from silolearn.validation.evidence import Model, canary_exposure, paired_bootstrap
from silolearn.validation.gates import (
    bootstrap_gate,
    canary_gate,
    decision_of,
    judge,
    leakage_failures,
)

RULES = {"tolerance": 0.01, "min_eval_records": 10, "confidence": 0.95}


def _exposures(inserted: list[float], controls: list[float]) -> dict[str, Any]:
    return {
        "exposure": inserted,
        "control_exposure": controls,
        "max_exposure": max(inserted),
        "max_control_exposure": max(controls),
        "outranks_all": [False] * len(inserted),
        "canaries": len(inserted),
        "alternatives": 256,
        "space_bits": 72.0,
    }


MEMBERSHIP = {
    "members": 500,
    "nonmembers": 200,
    "attacks": {"loss": {"auc": 0.7, "auc_ci": [0.65, 0.75], "tpr": {"0.01": 0.1}}},
}
LEAK = _exposures([36.0, 30.0, 28.0, 33.0, 40.0, 29.0, 31.0, 35.0], [2.0, 3.1, 1.0, 4.0] * 2)


# -- severity by blast radius --------------------------------------------------------------


@pytest.mark.parametrize(("audience", "severity"), [("own", "SEV2"), ("mixed", "SEV1")])
def test_a_leak_is_sev2_for_an_own_audience_and_sev1_for_a_mixed_one(
    audience: str, severity: str
) -> None:
    policy = GatePolicy.model_validate({"audience": audience})
    verdicts = judge(
        {"membership": MEMBERSHIP, "canaries": LEAK},
        policy=policy,
        tolerance=0.01,
        min_eval_records=10,
        accountant_epsilon=None,
    )
    failed = {v.gate: v.severity for v in verdicts if not v.passed}
    # no quality evidence: that gate fails too (SEV3), a leak is still what decides
    assert failed == {"quality": "SEV3", "membership": severity, "canary": severity}
    assert leakage_failures(verdicts) == ["membership", "canary"]
    decision = decision_of(verdicts)
    assert decision["severity"] == severity and decision["leakage"] == ["membership", "canary"]
    assert decision["remediable"] is (audience == "own")
    assert {g["gate"]: g["severity"] for g in decision["gates"]}["canary"] == severity


def test_what_crosses_tenants_stays_sev1_whatever_the_audience() -> None:
    audit = {"epsilon_lower_bound": 2.5, "correct": 98, "guesses": 100}
    verdicts = judge(
        {"canaries": LEAK, "audit": audit},
        policy=GatePolicy(quality=False, forgetting=False),
        tolerance=0.01,
        min_eval_records=10,
        accountant_epsilon=1.0,
    )
    decision = decision_of(verdicts)
    assert decision["failed"] == ["canary", "privacy_audit"]
    assert decision["severity"] == "SEV1" and not decision["remediable"]
    # a quality rejection is no leak: nothing to remediate
    quality_only = decision_of([v for v in verdicts if v.gate != "canary" and v.passed])
    assert quality_only["passed"] and quality_only["leakage"] == []


def test_the_audience_is_declared_per_tenant_and_checked() -> None:
    settings = Settings.model_validate({"gates": {"tenants": {"levels": {"audience": "mixed"}}}})
    assert settings.gates.for_tenant("levels").audience == "mixed"
    assert settings.gates.for_tenant("other").audience == "own"
    bad = Settings.model_validate({"gates": {"tenants": {"levels": {"audience": "everyone"}}}})
    with pytest.raises(ConfigError, match="audience"):
        bad.gates.for_tenant("levels")


# -- the canary gate -----------------------------------------------------------------------


def test_shift_test_is_the_exact_rank_test_for_small_samples() -> None:
    higher = shift_test([10.0, 11.0, 12.0, 13.0, 14.0], [1.0, 2.0, 3.0, 4.0, 5.0])
    # every inserted value above every control: one split in C(10, 5) = 252
    assert higher.method == "exact" and higher.p_value == pytest.approx(1 / 252)
    assert higher.smallest_p == pytest.approx(1 / 252)
    assert shift_test([1.0, 2.0, 3.0], [10.0, 11.0, 12.0]).p_value == pytest.approx(1.0)
    same = shift_test([72.0] * 8, [72.0] * 8)
    assert same.p_value == pytest.approx(1.0)
    large = shift_test(np.arange(40) + 0.5, np.arange(40))
    assert large.method == "asymptotic" and 0.3 < large.p_value < 0.6


def test_canaries_fail_only_when_memorised_and_extractable() -> None:
    leak = canary_gate(LEAK, bound=24)
    assert not leak.passed and leak.metrics["memorised"] and leak.metrics["extractable"]
    assert leak.metrics["p_value"] == pytest.approx(1 / 12870, rel=1e-5)
    assert (
        leak.metrics["median_exposure"] == 32.0 and leak.metrics["median_control_exposure"] == 2.55
    )
    assert leak.metrics["guesses_log2"] == 32.0 and leak.metrics["guesses"] == 2.0**32
    assert leak.threshold["max_guesses_log2"] == 48.0

    # the label space puts random sequences far out for every label: controls of the same
    # labels are as exposed as the canaries, so nothing is shown memorised
    geometry = canary_gate(
        _exposures([40.0, 2.0, 3.0, 30.0] * 2, [38.0, 3.0, 2.5, 31.0] * 2), bound=24
    )
    assert geometry.passed and not geometry.metrics["memorised"]
    assert geometry.metrics["extractable"] and "not more exposed" in geometry.reason

    # memorised, yet 2^60 guesses away: recorded, not rejected
    mild = canary_gate(_exposures([12.0, 10.0, 9.0, 11.0] * 2, [2.0, 3.0, 1.0, 4.0] * 2), bound=24)
    assert mild.passed and mild.metrics["memorised"] and not mild.metrics["extractable"]
    assert "memorised, not extractable" in mild.reason

    few = canary_gate(_exposures([60.0, 70.0], [1.0, 2.0]), bound=24)
    assert few.passed and "cannot be shown" in few.reason


def test_an_own_audience_is_judged_against_the_default_learner_on_the_same_canaries() -> None:
    """A canary given a label of a few records is memorised by any model that learns the
    label: for an own audience the candidate fails only beyond what the platform's default
    learner, fitted to the same rows, shows; a mixed audience is judged by the bound alone."""

    def against(base_top: float) -> dict[str, Any]:
        base = {"learner": "tuned linear head refitted", "max_exposure": base_top}
        return {**LEAK, "baseline": {**base, "excess": round(40.0 - base_top, 4)}}

    normal = canary_gate(against(36.0), bound=24, excess=8.0)
    assert normal.passed and normal.metrics["memorised"] and normal.metrics["extractable"]
    assert normal.metrics["excess_bits"] == 4.0 and normal.metrics["baseline_max_exposure"] == 36
    assert "no more than by the default learner" in normal.reason

    beyond = canary_gate(against(12.0), bound=24, excess=8.0)
    assert not beyond.passed and beyond.severity == "SEV2"
    assert "beyond what the default learner shows" in beyond.reason
    assert beyond.metrics["excess_bits"] == 28.0

    # the excess alone is not a leak: the canaries must still be memorised and extractable
    quiet = {**_exposures([9.0] * 8, [2.0] * 8), "baseline": {**against(1.0)["baseline"]}}
    assert canary_gate(quiet, bound=24, excess=8.0).passed

    mixed = canary_gate(against(36.0), bound=24, excess=8.0, audience="mixed")
    assert not mixed.passed and mixed.severity == "SEV1"
    assert "excess_bits" not in mixed.metrics

    # without a baseline (a LoRA candidate) the bound alone applies, whatever the audience
    assert not canary_gate(LEAK, bound=24, excess=8.0).passed


def _featurise(texts: list[str]) -> Features:
    rows = [np.random.default_rng(list(text.encode())).standard_normal(384) for text in texts]
    matrix = np.array(rows, dtype=np.float32).reshape(len(texts), 384)
    return Features(embeddings=matrix / np.linalg.norm(matrix, axis=1, keepdims=True))


def test_controls_carry_the_labels_of_the_inserted_canaries() -> None:
    """A control is scored exactly as it would be if it had been inserted with the label of
    its canary: same label, same alternatives."""
    model = Model(HeadAdapter(["fresh", "plot", "rotten"], hidden=0, seed=3), version=1)
    drawn = Canaries.draw(keyed_rng(b"k"), ["fresh", "plot", "rotten"], secret=6, copies=1, audit=0)
    pool = alternatives_pool("tenant-one", 64)
    report = canary_exposure(
        model, _featurise, drawn, alternatives=48, rng=np.random.default_rng(5), pool=pool
    )
    controls = sample_texts(
        np.random.default_rng(5), 6, exclude=set(drawn.secret_texts) | set(pool)
    )
    as_inserted = canary_exposure(
        model,
        _featurise,
        Canaries(secret_texts=controls, secret_labels=list(drawn.secret_labels)),
        alternatives=48,
        rng=np.random.default_rng(6),
        pool=pool,
    )
    assert report["control_exposure"] == as_inserted["exposure"]


# -- the quality gate ----------------------------------------------------------------------


def _predictions(
    rng: np.random.Generator, truth: list[str], wrong: int, labels: list[str]
) -> list[str]:
    out = list(truth)
    for i in rng.choice(len(truth), wrong, replace=False):
        out[int(i)] = next(y for y in labels if y != truth[int(i)])
    return out


def _evidence(truth: list[str], cand: list[str], active: list[str] | None) -> dict[str, Any]:
    return paired_bootstrap(
        truth, cand, active, replicates=1000, confidence=0.95, rng=np.random.default_rng(11)
    )


def _two_labels(n: int) -> list[str]:
    return ["no"] * round(0.7 * n) + ["yes"] * (n - round(0.7 * n))


def test_a_first_version_below_the_majority_answer_fails_and_a_fair_one_passes() -> None:
    """The issue's two-label tenant: the majority answer scores 0.70; the promoted head
    scored 0.455 accuracy; logistic regression 0.70 accuracy and about 0.56 macro-F1."""
    rng = np.random.default_rng(3)
    truth = _two_labels(200)
    poor = _predictions(rng, truth, 109, ["no", "yes"])
    seen = classification_metrics(truth, poor)
    assert seen["accuracy"] == 0.455
    verdict = bootstrap_gate("quality", _evidence(truth, poor, None), **RULES)
    assert not verdict.passed and verdict.metrics["outcome"] == "worse"
    assert verdict.metrics["constant_accuracy"] == 0.7
    assert "shown worse than the constant answer" in verdict.reason

    # logistic regression: 15 of 60 "yes" found, 15 false alarms (0.70 / 0.57)
    fair = ["yes"] * 15 + ["no"] * 125 + ["yes"] * 15 + ["no"] * 45
    order = rng.permutation(200)
    truth_shuffled = [truth[int(i)] for i in order]
    fair_shuffled = [fair[int(i)] for i in order]
    metrics = classification_metrics(truth_shuffled, fair_shuffled)
    assert metrics["accuracy"] == 0.7 and 0.56 <= metrics["macro_f1"] <= 0.58
    verdict = bootstrap_gate("quality", _evidence(truth_shuffled, fair_shuffled, None), **RULES)
    assert verdict.passed and verdict.metrics["outcome"] == "better", verdict.reason

    # the constant itself is never better than itself
    same = bootstrap_gate("quality", _evidence(truth, ["no"] * 200, None), **RULES)
    assert not same.passed and same.metrics["outcome"] == "not better"


def test_a_candidate_must_be_shown_not_worse_than_what_serves() -> None:
    rng = np.random.default_rng(4)
    labels = ["a", "b", "c"]
    truth = [labels[int(i)] for i in rng.integers(0, 3, 400)]
    active = _predictions(rng, truth, 80, labels)
    better = _predictions(rng, truth, 60, labels)
    assert bootstrap_gate("quality", _evidence(truth, better, active), **RULES).passed
    much_worse = _predictions(rng, truth, 200, labels)
    worse = bootstrap_gate("quality", _evidence(truth, much_worse, active), **RULES)
    assert not worse.passed and worse.metrics["outcome"] == "worse"


def test_an_undecided_interval_keeps_what_serves_and_says_what_would_decide_it() -> None:
    """The issue's BBC round: worse by about 0.08 on a dozen records, interval reaching
    above 0. Promoted by the old rule (not wholly below the tolerance); not any more."""
    rng = np.random.default_rng(5)
    labels = ["business", "sport", "tech", "politics", "entertainment"]
    truth = [labels[i % 5] for i in range(12)]
    active = _predictions(rng, truth, 5, labels)
    worse = list(active)
    slip = next(i for i in range(12) if active[i] == truth[i])
    worse[slip] = next(y for y in labels if y != truth[slip])
    ev = _evidence(truth, worse, active)
    assert ev["difference"] < 0 and ev["difference_ci"][1] > -0.01
    verdict = bootstrap_gate("quality", ev, **RULES)
    assert not verdict.passed and verdict.metrics["outcome"] == "inconclusive"
    assert verdict.metrics["records_needed"] is None  # measured beyond the tolerance
    assert "the tenant keeps what it serves" in verdict.reason
    # the same records judge a serving version (a re-audit) and forgetting by harm shown
    assert bootstrap_gate("quality", ev, serving=True, **RULES).passed
    assert bootstrap_gate("forgetting", ev, **RULES).passed

    # slightly better on few records (two mistakes fixed, one made): not yet shown within
    # the tolerance; the estimate of the records needed is borne out by a larger eval set
    # that behaves the same way
    truth = [labels[int(i)] for i in rng.integers(0, 5, 30)]
    active = _predictions(rng, truth, 9, labels)
    wrong = [i for i in range(30) if active[i] != truth[i]]
    right = [i for i in range(30) if active[i] == truth[i]]
    cand = list(active)
    cand[wrong[0]], cand[wrong[1]] = truth[wrong[0]], truth[wrong[1]]
    cand[right[0]] = next(y for y in labels if y != truth[right[0]])
    ev = _evidence(truth, cand, active)
    assert ev["difference"] > 0 and ev["difference_ci"][0] < -0.01
    verdict = bootstrap_gate("quality", ev, **RULES)
    needed = verdict.metrics["records_needed"]
    assert not verdict.passed and verdict.metrics["outcome"] == "inconclusive"
    assert needed is not None and needed > 30 and f"about {needed} eval records" in verdict.reason
    decision = decision_of([verdict])
    assert decision["records_needed"] == needed and not decision["remediable"]
    copies = -(-needed // 30)
    bigger = _evidence(truth * copies, cand * copies, active * copies)
    assert bootstrap_gate("quality", bigger, **RULES).passed


def test_forgetting_fails_only_when_shown_worse() -> None:
    rng = np.random.default_rng(6)
    truth = [["x", "y"][int(i)] for i in rng.integers(0, 2, 300)]
    active = _predictions(rng, truth, 30, ["x", "y"])
    forgot = _predictions(rng, truth, 120, ["x", "y"])
    verdict = bootstrap_gate("forgetting", _evidence(truth, forgot, active), **RULES)
    assert not verdict.passed and verdict.severity == "SEV3"
    few = bootstrap_gate("forgetting", _evidence(truth[:6], forgot[:6], active[:6]), **RULES)
    assert few.passed and not few.applicable
