"""The gate verdicts on hand-made evidence, the bootstrap macro-F1 against the metrics the
evaluator reports, the canary draw, and the per-tenant gate policy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from silolearn.config import GatePolicy, Settings
from silolearn.errors import ConfigError
from silolearn.learning.adapters import Features, HeadAdapter
from silolearn.learning.metrics import classification_metrics
from silolearn.validation.canaries import (
    SPACE_SIZE,
    Canaries,
    alternatives_pool,
    keyed_rng,
    space_bits,
)
from silolearn.validation.evidence import (
    Model,
    canary_exposure,
    macro_f1_replicates,
    paired_bootstrap,
)
from silolearn.validation.gates import (
    bootstrap_gate,
    canary_gate,
    decision_of,
    golden_gate,
    judge,
    membership_gate,
    privacy_audit_gate,
)


def test_bootstrap_macro_f1_equals_the_evaluators_metric() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        truth = rng.integers(0, 4, n)
        pred = rng.integers(0, 5, n)
        idx = rng.integers(0, n, size=(3, n))
        got = macro_f1_replicates(truth, pred, idx)
        for row, value in zip(idx, got, strict=True):
            expected = classification_metrics(
                [str(t) for t in truth[row]], [str(p) for p in pred[row]]
            )["macro_f1"]
            assert value == pytest.approx(expected, abs=1e-6)


def test_paired_bootstrap_interval_brackets_the_difference() -> None:
    rng = np.random.default_rng(1)
    truth = [str(x) for x in rng.integers(0, 3, 300)]
    good = [t if rng.random() < 0.9 else "0" for t in truth]
    bad = [t if rng.random() < 0.5 else "0" for t in truth]
    ev = paired_bootstrap(truth, bad, good, replicates=500, confidence=0.95, rng=rng)
    lo, hi = ev["difference_ci"]
    assert lo <= ev["difference"] <= hi < 0
    verdict = bootstrap_gate("quality", ev, tolerance=0.01, min_eval_records=10, confidence=0.95)
    assert not verdict.passed and verdict.severity == "SEV3"
    same = paired_bootstrap(truth, good, good, replicates=200, confidence=0.95, rng=rng)
    assert same["difference_ci"] == [0.0, 0.0]
    assert bootstrap_gate(
        "quality", same, tolerance=0.01, min_eval_records=10, confidence=0.95
    ).passed
    few = bootstrap_gate("quality", {"n": 4}, tolerance=0.0, min_eval_records=10, confidence=0.9)
    assert not few.passed and "4" in few.reason and "10" in few.reason


def _exposures(inserted: list[float], controls: list[float]) -> dict[str, Any]:
    return {
        "exposure": inserted,
        "control_exposure": controls,
        "max_exposure": max(inserted),
        "max_control_exposure": max(controls),
        "outranks_all": [x > 8 for x in inserted],
        "canaries": len(inserted),
        "alternatives": 256,
        "space_bits": 72.0,
    }


def test_membership_canary_golden_and_audit_verdicts() -> None:
    attack = {"auc": 0.7, "auc_ci": [0.65, 0.75], "tpr": {"0.01": 0.1}}
    weak = {"auc": 0.52, "auc_ci": [0.45, 0.58], "tpr": {"0.01": 0.01}}
    ev = {"members": 500, "nonmembers": 200, "attacks": {"loss": weak, "lira_offline": attack}}
    failed = membership_gate(ev, bound=0.6, min_nonmembers=100)
    assert not failed.passed and failed.metrics["strongest"] == "lira_offline"
    assert failed.severity == "SEV2"
    assert membership_gate(ev, bound=0.6, audience="mixed").severity == "SEV1"
    assert membership_gate({**ev, "attacks": {"loss": weak}}, bound=0.6).passed
    small = membership_gate({**ev, "nonmembers": 40}, bound=0.6, min_nonmembers=100)
    assert small.passed and not small.applicable and "40" in small.reason

    exposures = _exposures([36.0, 30.0, 28.0, 33.0, 40.0, 29.0], [2.0, 3.1, 1.0, 4.0, 2.5, 0.7])
    failed_canary = canary_gate(exposures, bound=24)
    assert not failed_canary.passed and failed_canary.severity == "SEV2"
    assert "6 outrank all 256" in failed_canary.reason and "2^32.0 guesses" in (
        failed_canary.reason
    )
    assert canary_gate(exposures, bound=24, audience="mixed").severity == "SEV1"
    assert canary_gate({**exposures, "exposure": [5.0] * 6}, bound=24).passed
    assert not canary_gate(None, bound=24).applicable

    assert golden_gate({"n": 5, "failed": 1, "failed_seqs": [3]}).severity == "SEV3"
    assert golden_gate({"n": 5, "failed": 0}).passed
    assert not golden_gate(None).applicable

    audit = {"epsilon_lower_bound": 2.5, "correct": 98, "guesses": 100}
    refuted = privacy_audit_gate(audit, accountant_epsilon=1.0)
    assert not refuted.passed and refuted.severity == "SEV1"
    assert privacy_audit_gate(audit, accountant_epsilon=4.0).passed
    recorded = privacy_audit_gate(audit, accountant_epsilon=None)
    assert recorded.passed and not recorded.applicable

    truth = ["a"] * 30 + ["b"] * 20
    constant = paired_bootstrap(
        truth, ["a"] * 50, None, replicates=200, confidence=0.95, rng=np.random.default_rng(0)
    )
    verdicts = judge(
        {"quality": constant, "canaries": exposures, "audit": audit, "membership": ev},
        policy=GatePolicy(),
        tolerance=0.01,
        min_eval_records=10,
        accountant_epsilon=1.0,
    )
    decision = decision_of(verdicts)
    assert not decision["passed"] and decision["severity"] == "SEV1"
    assert set(decision["failed"]) == {"quality", "membership", "canary", "privacy_audit"}
    # a leak beside a refuted DP guarantee: the SEV1 is not a matter of retraining
    assert decision["leakage"] == ["membership", "canary"] and not decision["remediable"]


def test_canaries_are_keyed_reproducible_and_counted_not_stored_as_text() -> None:
    labels = ["a", "b", "c"]
    one = Canaries.draw(keyed_rng(b"k" * 32, 1, 2), labels, secret=4, copies=3, audit=10)
    two = Canaries.draw(keyed_rng(b"k" * 32, 1, 2), labels, secret=4, copies=3, audit=10)
    other = Canaries.draw(keyed_rng(b"x" * 32, 1, 2), labels, secret=4, copies=3, audit=10)
    assert one == two and one.secret_texts != other.secret_texts
    texts, ys = one.training_rows()
    assert len(texts) == 4 * 3 + sum(one.included) == len(ys)
    assert Canaries.from_bytes(one.to_bytes()) == one
    summary = one.summary()
    assert summary["rows"] == len(texts) and summary["space_bits"] == round(space_bits(), 3)
    assert not any(t in str(summary) for t in one.secret_texts)
    assert SPACE_SIZE == 2**72


def _featurise(texts: list[str]) -> Features:
    """Unit vectors seeded by each text: the same text always gets the same features."""
    rows = [np.random.default_rng(list(text.encode())).standard_normal(384) for text in texts]
    matrix = np.array(rows, dtype=np.float32).reshape(len(texts), 384)
    return Features(embeddings=matrix / np.linalg.norm(matrix, axis=1, keepdims=True))


def test_canaries_are_ranked_against_a_fixed_pool_per_tenant_featurised_apart() -> None:
    pool = alternatives_pool("tenant-one", 64)
    assert pool == alternatives_pool("tenant-one", 64) and len(set(pool)) == 64
    assert not set(pool) & set(alternatives_pool("tenant-two", 64))
    model = Model(HeadAdapter(["fresh", "rotten"], hidden=0, seed=3), version=1)
    canaries = Canaries(
        secret_texts=[
            pool[5],
            *Canaries.draw(keyed_rng(b"k"), ["fresh"], secret=3, copies=1, audit=0).secret_texts,
        ],
        secret_labels=["fresh", "rotten", "fresh", "rotten"],
    )
    pooled: list[list[str]] = []

    def embed_pool(texts: list[str]) -> Features:
        pooled.append(list(texts))
        return _featurise(texts)

    report = canary_exposure(
        model,
        _featurise,
        canaries,
        alternatives=32,
        rng=np.random.default_rng(0),
        pool=pool,
        embed_pool=embed_pool,
    )
    # a canary that happens to be in the pool is not its own alternative
    assert pooled == [[t for t in pool if t != pool[5]][:32]]
    assert report["alternatives"] == 32 and report["canaries"] == 4
    # featurising the pool apart changes nothing: the same scores as in one batch
    together = canary_exposure(
        model, _featurise, canaries, alternatives=32, rng=np.random.default_rng(0), pool=pool
    )
    assert together["exposure"] == report["exposure"]
    assert together["control_exposure"] == report["control_exposure"]
    fresh = canary_exposure(
        model, _featurise, canaries, alternatives=32, rng=np.random.default_rng(0)
    )
    assert fresh["alternatives"] == 32 and len(fresh["exposure"]) == 4


def test_a_tenant_override_replaces_defaults_and_bad_keys_are_config_errors() -> None:
    settings = Settings.model_validate(
        {"gates": {"membership_auc_upper": 0.6, "tenants": {"critics": {"canaries": 2}}}}
    )
    assert settings.gates.for_tenant("critics").canaries == 2
    assert settings.gates.for_tenant("other").canaries == GatePolicy().canaries
    bad = Settings.model_validate({"gates": {"tenants": {"critics": {"canaris": 2}}}})
    with pytest.raises(ConfigError, match="canaris"):
        bad.gates.for_tenant("critics")
