"""The gates a version passes before it serves, and again whenever it is re-audited (I8).

A gate reads the evidence the tenant's gate worker computed (``validation.evidence``) and
returns a verdict: passed or not, its metrics, its threshold, and the severity of a failure.
Which gates run and their thresholds come from the tenant's gate policy
(``[gates]``/``[gates.tenants.<name>]`` in the workspace settings). Verdicts are numbers,
never record text; they are stored with the version and audited with the decision.

Severity follows the blast radius, and what it triggers is ``pipeline``'s: SEV1 rejects and
quarantines the tenant's training, SEV2 and SEV3 reject. Whatever crosses tenants is SEV1:
an isolated tenant's predictions moved, the one-run audit refutes the accountant (the DP
code every private model relies on is broken). A leakage gate (membership, canary) of an
adapter that serves only its own tenant's users is SEV2: the leak stays inside the audience
that may see the data, so the candidate is rejected and remediation may retrain it; for a
tenant whose policy declares ``audience = "mixed"`` (users who do not all share its data,
e.g. several classification levels) it is SEV1. Quality, forgetting and the golden suite
are SEV3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from silolearn.config import Audience, GatePolicy
from silolearn.validation.attacks import shift_test

SEVERITY = {
    "quality": "SEV3",
    "forgetting": "SEV3",
    "golden": "SEV3",
    "membership": "SEV2",
    "canary": "SEV2",
    "privacy_audit": "SEV1",
    "divergence": "SEV1",
    "shared_divergence": "SEV2",
    "shadow": "SEV2",
}
"""The severity of a failed gate or check for a tenant whose audience is its own."""

LEAKAGE_GATES = ("membership", "canary")
"""Gates that find the tenant's own data in the adapter: SEV1 when its audience is mixed."""

_RANK = {"SEV1": 1, "SEV2": 2, "SEV3": 3}


def severity_of(gate: str, audience: Audience = "own") -> str:
    if gate in LEAKAGE_GATES and audience == "mixed":
        return "SEV1"
    return SEVERITY[gate]


def worst(severities: Sequence[str]) -> str | None:
    """The highest severity among ``severities`` (SEV1 is the highest)."""
    return min(severities, key=lambda s: _RANK[s]) if severities else None


@dataclass(frozen=True, slots=True)
class GateVerdict:
    gate: str
    passed: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    applicable: bool = True
    """False when the gate had nothing to judge (no golden suite, no canaries, not DP)."""
    audience: Audience = "own"
    """The tenant's declared audience, which sets a leakage gate's severity."""

    @property
    def severity(self) -> str | None:
        return None if self.passed else severity_of(self.gate, self.audience)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "passed": self.passed,
            "severity": self.severity,
            "applicable": self.applicable,
            "reason": self.reason,
            "metrics": self.metrics,
            "threshold": self.threshold,
        }


def leakage_failures(verdicts: Sequence[GateVerdict]) -> list[str]:
    """The leakage gates (membership, canary) that failed: what remediation (stronger
    regularisation, then DP) answers, unlike a quality rejection."""
    return [v.gate for v in verdicts if not v.passed and v.gate in LEAKAGE_GATES]


def records_needed(evidence: dict[str, Any], margin: float, confidence: float) -> int | None:
    """How many eval records would let the interval clear its bound if the paired
    difference stayed where it was measured, ``margin`` away from the bound: the
    per-record standard deviation sd1 is the bootstrap's times sqrt(n), and the interval's
    half-width z sd1 / sqrt(n') must fit in ``margin``. None when no number of records
    would do (``margin`` <= 0)."""
    from scipy import stats  # type: ignore[import-untyped]  # here: ~0.5 s a process to import

    n, sd = int(evidence["n"]), float(evidence.get("difference_sd") or 0.0)
    if margin <= 0 or sd <= 0:
        return None
    z = float(stats.norm.ppf((1 + confidence) / 2))
    return max(n + 1, math.ceil((z * sd * math.sqrt(n) / margin) ** 2))


def bootstrap_gate(
    gate: str,
    evidence: dict[str, Any] | None,
    *,
    tolerance: float,
    min_eval_records: int,
    confidence: float,
    serving: bool = False,
) -> GateVerdict:
    """Quality (or forgetting, on the earlier window) from the paired bootstrap of the
    candidate against the active version, or against the constant answer for a first
    version (``evidence["against"]``).

    The burden of proof lies on the change. Quality of a candidate: promoted only when shown
    not worse than what serves (the interval's lower end of the macro-F1 difference at or
    above ``-tolerance``: non-inferiority); a first version only when shown better than the
    constant answer on macro-F1 (lower end above 0) and not shown worse on accuracy by more
    than the tolerance (upper end at or above ``-tolerance``). An interval that shows
    neither rejects the candidate, and the tenant keeps what it serves; the verdict says how
    many eval records would settle it.

    Forgetting is a secondary check on the earlier windows' few records, and a version that
    already serves (``serving``: a re-audit) keeps serving unless shown harmful: both fail
    only when the interval lies wholly below ``-tolerance``."""
    threshold = {
        "tolerance": tolerance,
        "min_eval_records": min_eval_records,
        "confidence": confidence,
        "rule": "shown worse" if serving or gate == "forgetting" else "shown not worse",
    }
    what = "eval window" if gate == "quality" else "earlier windows"
    if evidence is None or not evidence.get("n"):
        if gate == "forgetting":
            return GateVerdict(gate, True, "no earlier window to forget", {}, threshold, False)
        evidence = {"n": 0}
    n = int(evidence["n"])
    metrics = dict(evidence)
    if n < min_eval_records:
        if gate == "forgetting":
            return GateVerdict(
                gate, True, f"only {n} records of earlier windows", metrics, threshold, False
            )
        return GateVerdict(
            gate,
            False,
            f"only {n} labelled eval records in the window, {min_eval_records} needed to "
            "judge: the tenant keeps what it serves",
            metrics,
            threshold,
        )
    if evidence.get("against", "active") == "constant":
        return _against_constant(gate, metrics, threshold, tolerance, confidence, serving)
    lo, hi = (float(x) for x in evidence["difference_ci"])
    diff = float(evidence["difference"])
    span = f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}] ({confidence:.0%} interval)"
    text = f"macro-F1 on the {what} minus the active version's: {span}"
    if hi < -tolerance:
        metrics["outcome"] = "worse"
        return GateVerdict(
            gate,
            False,
            f"{text}: shown worse by more than the tolerance {tolerance}",
            metrics,
            threshold,
        )
    if serving or gate == "forgetting" or lo >= -tolerance:
        metrics["outcome"] = "non-inferior" if lo >= -tolerance else "not shown worse"
        return GateVerdict(
            gate,
            True,
            f"{text}: {'shown not worse' if lo >= -tolerance else 'not shown worse'} "
            f"(tolerance {tolerance})",
            metrics,
            threshold,
        )
    needed = records_needed(evidence, diff + tolerance, confidence)
    metrics.update(outcome="inconclusive", records_needed=needed)
    more = (
        f"about {needed} eval records would show it if the difference stayed at {diff:+.4f}"
        if needed is not None
        else "more eval records would not show it: the measured difference is beyond it"
    )
    return GateVerdict(
        gate,
        False,
        f"{text}: not shown to be within the tolerance {tolerance} of the active version "
        f"({n} eval records; {more}); the tenant keeps what it serves",
        metrics,
        threshold,
    )


def _against_constant(
    gate: str,
    metrics: dict[str, Any],
    threshold: dict[str, Any],
    tolerance: float,
    confidence: float,
    serving: bool,
) -> GateVerdict:
    """A version with nothing before it against always answering the most frequent label."""
    n = int(metrics["n"])
    lo, hi = (float(x) for x in metrics["difference_ci"])
    a_lo, a_hi = (float(x) for x in metrics["accuracy_difference_ci"])
    diff, a_diff = float(metrics["difference"]), float(metrics["accuracy_difference"])
    text = (
        f"against always answering the most frequent label ({n} eval records, "
        f"{confidence:.0%} intervals): macro-F1 {metrics['macro_f1']:.4f} vs "
        f"{metrics['constant_macro_f1']:.4f}, {diff:+.4f} [{lo:+.4f}, {hi:+.4f}]; accuracy "
        f"{metrics['accuracy']:.4f} vs {metrics['constant_accuracy']:.4f}, "
        f"{a_diff:+.4f} [{a_lo:+.4f}, {a_hi:+.4f}]"
    )
    if a_hi < -tolerance or (serving and hi < -tolerance):
        metrics["outcome"] = "worse"
        return GateVerdict(
            gate,
            False,
            f"{text}: shown worse than the constant answer by more than {tolerance}",
            metrics,
            threshold,
        )
    if lo > 0 or serving:
        metrics["outcome"] = "better" if lo > 0 else "not shown worse"
        verdict = "better than" if lo > 0 else "not shown worse than"
        return GateVerdict(gate, True, f"{text}: {verdict} the constant answer", metrics, threshold)
    needed = records_needed(metrics, diff, confidence)
    metrics.update(outcome="not better" if needed is None else "inconclusive")
    metrics["records_needed"] = needed
    more = (
        f"not shown better on macro-F1 (about {needed} eval records would show it if the "
        f"difference stayed at {diff:+.4f})"
        if needed is not None
        else "no better on macro-F1"
    )
    return GateVerdict(
        gate,
        False,
        f"{text}: {more}; the tenant keeps what it serves",
        metrics,
        threshold,
    )


def golden_gate(evidence: dict[str, Any] | None) -> GateVerdict:
    if not evidence or not evidence.get("n"):
        return GateVerdict("golden", True, "no golden suite registered", {"n": 0}, {}, False)
    n, failed = int(evidence["n"]), int(evidence["failed"])
    threshold = {"failed": 0}
    if failed:
        return GateVerdict(
            "golden",
            False,
            f"{failed} of {n} golden examples predicted wrongly",
            evidence,
            threshold,
        )
    return GateVerdict("golden", True, f"all {n} golden examples correct", evidence, threshold)


def membership_gate(
    evidence: dict[str, Any] | None,
    *,
    bound: float,
    min_nonmembers: int = 2,
    audience: Audience = "own",
    excess: float | None = None,
) -> GateVerdict:
    """Memorisation beyond the data's own generalisation gap: the candidate fails when the
    loss attack's AUC on it exceeds the AUC on the platform's default learner (fitted by
    the gate worker to the same training records, attacked on the same members and
    non-members) by more than ``excess``. A tenant whose audience is ``mixed`` also fails
    when the strongest attack's upper bound exceeds ``bound``, whatever the learner: its
    users must not learn who is in the training data. Without a baseline (a LoRA
    candidate) the absolute ``bound`` applies."""
    threshold: dict[str, Any] = {
        "auc_upper_bound": bound,
        "min_nonmembers": min_nonmembers,
        "excess_auc": excess,
        "audience": audience,
    }
    attacks = (evidence or {}).get("attacks") or {}
    nonmembers = int((evidence or {}).get("nonmembers") or 0)
    if evidence and nonmembers < min_nonmembers:
        return GateVerdict(
            "membership",
            True,
            f"only {nonmembers} non-members (eval records), {min_nonmembers} needed to bound "
            "the AUC: not judged",
            {"members": (evidence or {}).get("members"), "nonmembers": nonmembers},
            threshold,
            False,
        )
    if not attacks:
        reason = (evidence or {}).get("reason", "no membership evidence")
        return GateVerdict("membership", True, reason, evidence or {}, threshold, False)
    strongest = max(attacks, key=lambda a: float(attacks[a]["auc_ci"][1]))
    upper = float(attacks[strongest]["auc_ci"][1])
    auc = float(attacks[strongest]["auc"])
    summary = {
        "strongest": strongest,
        "auc": auc,
        "auc_upper": upper,
        "members": evidence.get("members") if evidence else None,
        "nonmembers": evidence.get("nonmembers") if evidence else None,
        "attacks": attacks,
    }
    tpr = attacks[strongest].get("tpr", {}).get("0.01")
    text = f"{strongest} attack AUC {auc:.3f} (upper bound {upper:.3f}), TPR@1%FPR {tpr}"
    baseline = (evidence or {}).get("baseline") or {}
    failures = []
    absolute = audience == "mixed" or excess is None or "auc" not in baseline
    if absolute and upper > bound:
        failures.append(f"upper bound {upper:.3f} > {bound}")
    if excess is not None and "auc" in baseline:
        summary["baseline_auc"] = float(baseline["auc"])
        summary["excess_auc"] = float(baseline["excess"])
        text += (
            f"; loss attack {float(attacks['loss']['auc']):.3f} vs "
            f"{float(baseline['auc']):.3f} on the default learner ({baseline['learner']}), "
            f"excess {float(baseline['excess']):+.3f}"
        )
        if float(baseline["excess"]) > excess:
            failures.append(f"excess {float(baseline['excess']):+.3f} > {excess}")
    if failures:
        return GateVerdict(
            "membership",
            False,
            f"{text}: {'; '.join(failures)}",
            summary,
            threshold,
            audience=audience,
        )
    limits = [f"excess <= {excess}"] if excess is not None and "auc" in baseline else []
    if absolute:
        limits.append(f"upper bound <= {bound}")
    return GateVerdict("membership", True, f"{text} ({', '.join(limits)})", summary, threshold)


def canary_gate(
    evidence: dict[str, Any] | None,
    *,
    bound: float,
    confidence: float = 0.95,
    audience: Audience = "own",
    excess: float | None = None,
) -> GateVerdict:
    """Fails when the inserted canaries are memorised and the top one can be extracted.

    Memorised: their exposures are higher than those of the never-inserted controls of the
    same run, which carry the same labels (one-sided Mann-Whitney test, p below
    1 - ``confidence``), so what the label space does to random sequences cancels out.
    Extractable: the top canary's exposure is above ``bound`` bits, i.e. an attacker who
    knows the template and the label, enumerating its sequences in the model's order, finds
    it within 2^(space bits - bound) guesses. Either alone passes, and is reported.
    Beyond the default learner: for an ``own`` audience, also the top canary's exposure
    exceeds, by more than ``excess`` bits, the top exposure of the same canaries on the
    platform's default learner fitted to the same training rows (evidence ``baseline``): a
    canary given a label of a few records is memorised by any model that learns that label,
    and an adapter that answers only users who may see the tenant's data leaks nothing by
    doing what any normal model of it does. A ``mixed`` audience, or a candidate without
    such a baseline (LoRA), is judged by the first two alone."""
    threshold: dict[str, Any] = {
        "max_exposure_bits": bound,
        "significance": round(1 - confidence, 6),
        "excess_bits": excess,
        "audience": audience,
    }
    if not evidence:
        return GateVerdict("canary", True, "the run inserted no canaries", {}, threshold, False)
    inserted = [float(x) for x in evidence["exposure"]]
    controls = [float(x) for x in evidence["control_exposure"]]
    space = float(evidence["space_bits"])
    threshold["max_guesses_log2"] = round(space - bound, 3)
    top, top_control = max(inserted), max(controls)
    test = shift_test(inserted, controls)
    alpha = 1 - confidence
    guesses_log2 = space - top
    memorised, extractable = test.p_value < alpha, top > bound
    metrics = {
        **evidence,
        "test": test.to_dict(),
        "p_value": test.to_dict()["p_value"],
        "median_exposure": round(float(np.median(inserted)), 4),
        "median_control_exposure": round(float(np.median(controls)), 4),
        "guesses_log2": round(guesses_log2, 3),
        "guesses": float(2.0**guesses_log2),
        "memorised": memorised,
        "extractable": extractable,
    }
    ranked = sum(1 for r in evidence.get("outranks_all", []) if r)
    text = (
        f"{len(inserted)} canaries vs {len(controls)} never-inserted controls of the same "
        f"labels: exposure median {metrics['median_exposure']:.2f} / max {top:.2f} bits vs "
        f"{metrics['median_control_exposure']:.2f} / {top_control:.2f}, one-sided "
        f"Mann-Whitney p = {test.p_value:.3g}; top canary found within 2^{guesses_log2:.1f} "
        f"guesses (bound 2^{space - bound:.1f}); {ranked} outrank all "
        f"{evidence.get('alternatives', '?')} sampled alternatives"
    )
    if test.smallest_p >= alpha:
        text += (
            f" (with {len(inserted)} canaries no p-value falls below {alpha:.2g}: "
            "memorisation cannot be shown)"
        )
    baseline = evidence.get("baseline") or {}
    relative = audience == "own" and excess is not None and "max_exposure" in baseline
    beyond = True
    if relative:
        metrics["baseline_max_exposure"] = float(baseline["max_exposure"])
        metrics["excess_bits"] = float(baseline["excess"])
        beyond = float(baseline["excess"]) > float(excess or 0.0)
        text += (
            f"; the default learner ({baseline['learner']}) puts the same canaries at "
            f"{float(baseline['max_exposure']):.2f} bits, excess {float(baseline['excess']):+.2f}"
            f" (bound {excess})"
        )
    if memorised and extractable and beyond:
        return GateVerdict(
            "canary",
            False,
            f"{text}: memorised and extractable"
            + (" beyond what the default learner shows" if relative else ""),
            metrics,
            threshold,
            audience=audience,
        )
    state = (
        "memorised and extractable, no more than by the default learner"
        if memorised and extractable
        else "memorised, not extractable within the bound"
        if memorised
        else "not more exposed than the controls"
    )
    return GateVerdict("canary", True, f"{text}: {state}", metrics, threshold)


def privacy_audit_gate(
    evidence: dict[str, Any] | None, *, accountant_epsilon: float | None
) -> GateVerdict:
    """The empirical epsilon lower bound of the one-run audit against the accountant's
    epsilon of the run. Above it, the DP implementation is broken. Recorded for a non-DP run
    (no claim to refute)."""
    if not evidence:
        return GateVerdict("privacy_audit", True, "the run had no audit canaries", {}, {}, False)
    lower = float(evidence["epsilon_lower_bound"])
    metrics = {**evidence, "accountant_epsilon": accountant_epsilon}
    if accountant_epsilon is None:
        return GateVerdict(
            "privacy_audit",
            True,
            f"not a DP run: empirical epsilon >= {lower:.3f} recorded, no bound claimed",
            metrics,
            {},
            False,
        )
    threshold = {"accountant_epsilon": accountant_epsilon}
    text = (
        f"empirical epsilon lower bound {lower:.3f} ({evidence['correct']}/"
        f"{evidence['guesses']} guesses right) vs accountant epsilon {accountant_epsilon:.3f}"
    )
    if lower > accountant_epsilon:
        return GateVerdict(
            "privacy_audit", False, f"{text}: the DP guarantee is refuted", metrics, threshold
        )
    return GateVerdict("privacy_audit", True, text, metrics, threshold)


def judge(
    evidence: dict[str, Any],
    *,
    policy: GatePolicy,
    tolerance: float,
    min_eval_records: int,
    accountant_epsilon: float | None,
    serving: bool = False,
) -> list[GateVerdict]:
    """Every gate the policy enables, on the evidence of one version (``serving``: a
    re-audit of a version that serves, judged by what shows harm; see ``bootstrap_gate``)."""
    verdicts: list[GateVerdict] = []
    for gate in ("quality", "forgetting"):
        if getattr(policy, gate):
            verdicts.append(
                bootstrap_gate(
                    gate,
                    evidence.get(gate),
                    tolerance=tolerance,
                    min_eval_records=min_eval_records,
                    confidence=policy.confidence,
                    serving=serving,
                )
            )
    if policy.golden:
        verdicts.append(golden_gate(evidence.get("golden")))
    if policy.membership:
        verdicts.append(
            membership_gate(
                evidence.get("membership"),
                bound=policy.membership_auc_upper,
                min_nonmembers=policy.membership_min_nonmembers,
                audience=policy.audience,
                excess=policy.membership_excess_auc,
            )
        )
    verdicts.append(
        canary_gate(
            evidence.get("canaries"),
            bound=policy.canary_max_exposure,
            confidence=policy.confidence,
            audience=policy.audience,
            excess=policy.canary_excess_bits,
        )
    )
    verdicts.append(
        privacy_audit_gate(evidence.get("audit"), accountant_epsilon=accountant_epsilon)
    )
    return verdicts


def decision_of(verdicts: Sequence[GateVerdict]) -> dict[str, Any]:
    """The decision on one version: ``leakage`` lists the failed leakage gates, and
    ``remediable`` says a retrained candidate may pass (a leak without a SEV1);
    ``records_needed`` is how many eval records would settle a quality verdict that the
    eval set was too small to decide (None otherwise)."""
    failed = [v for v in verdicts if not v.passed]
    severity = worst([s for v in failed if (s := v.severity)])
    leakage = leakage_failures(verdicts)
    needed = next(
        (
            v.metrics["records_needed"]
            for v in failed
            if v.gate == "quality" and v.metrics.get("records_needed") is not None
        ),
        None,
    )
    return {
        "reason": "gates passed"
        if not failed
        else "gate " + ", ".join(v.gate for v in failed) + " failed",
        "passed": not failed,
        "failed": [v.gate for v in failed],
        "severity": severity,
        "leakage": leakage,
        "remediable": bool(leakage) and severity != "SEV1",
        "records_needed": needed,
        "gates": [v.to_dict() for v in verdicts],
    }
