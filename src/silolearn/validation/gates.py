"""The gates a version passes before it serves, and again whenever it is re-audited (I8).

A gate reads the evidence the tenant's gate worker computed (``validation.evidence``) and
returns a verdict: passed or not, its metrics, its threshold, and the severity of a failure.
Which gates run and their thresholds come from the tenant's gate policy
(``[gates]``/``[gates.tenants.<name>]`` in the workspace settings). Verdicts are numbers,
never record text; they are stored with the version and audited with the decision.

Severities and what they trigger (``pipeline``): SEV1 (a canary can be extracted, the one-
run audit refutes the accountant, an isolated tenant's predictions moved) rejects and
quarantines the tenant's training; SEV2 (membership inference above its bound) rejects;
SEV3 (quality, forgetting, golden suite) rejects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from silolearn.config import GatePolicy

SEVERITY = {
    "quality": "SEV3",
    "forgetting": "SEV3",
    "golden": "SEV3",
    "membership": "SEV2",
    "canary": "SEV1",
    "privacy_audit": "SEV1",
    "divergence": "SEV1",
    "shared_divergence": "SEV2",
    "shadow": "SEV2",
}
"""The severity of a failed gate or check."""

_RANK = {"SEV1": 1, "SEV2": 2, "SEV3": 3}


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

    @property
    def severity(self) -> str | None:
        return None if self.passed else SEVERITY[self.gate]

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


def no_worse_than_active(
    candidate: dict[str, Any],
    active: dict[str, Any] | None,
    *,
    tolerance: float,
    min_eval_records: int,
) -> GateVerdict:
    """The point-estimate comparison (``candidate`` and ``active`` are metrics on the same
    eval records): used where no bootstrap evidence exists, e.g. by a side run."""
    n = int(candidate.get("n", 0))
    threshold = {"tolerance": tolerance, "min_eval_records": min_eval_records}
    after = float(candidate.get("macro_f1", 0.0))
    before = None if active is None else float(active.get("macro_f1", 0.0))
    metrics = {"n": n, "macro_f1": after, "active_macro_f1": before}
    if n < min_eval_records:
        return GateVerdict(
            "quality",
            False,
            f"only {n} labelled eval records in the window, {min_eval_records} needed to judge",
            metrics,
            threshold,
        )
    if before is None:
        return GateVerdict("quality", True, "first version: nothing to be worse than", metrics)
    # metrics carry 6 decimals: compare the shortfall at that precision, so a candidate
    # exactly `tolerance` below is within it whatever binary rounding does
    if round(before - after, 6) <= tolerance:
        return GateVerdict(
            "quality",
            True,
            f"macro-F1 {after:.4f} vs active {before:.4f} (tolerance {tolerance})",
            metrics,
            threshold,
        )
    return GateVerdict(
        "quality",
        False,
        f"macro-F1 {after:.4f} is below the active version's {before:.4f} by more than {tolerance}",
        metrics,
        threshold,
    )


def bootstrap_gate(
    gate: str,
    evidence: dict[str, Any] | None,
    *,
    tolerance: float,
    min_eval_records: int,
    confidence: float,
) -> GateVerdict:
    """Quality (or forgetting, on the earlier window): the candidate fails when the paired
    bootstrap interval of (candidate - active) macro-F1 lies wholly below ``-tolerance``,
    i.e. it is worse by more than the tolerance at the given confidence. An interval that
    reaches the bound is not evidence of harm and passes, with the interval recorded."""
    threshold = {
        "tolerance": tolerance,
        "min_eval_records": min_eval_records,
        "confidence": confidence,
    }
    what = "eval window" if gate == "quality" else "earlier windows"
    if evidence is None or not evidence.get("n"):
        if gate == "forgetting":
            return GateVerdict(gate, True, "no earlier window to forget", {}, threshold, False)
        evidence = {"n": 0}
    n = int(evidence["n"])
    metrics = {k: v for k, v in evidence.items()}
    if gate == "quality" and n < min_eval_records:
        return GateVerdict(
            gate,
            False,
            f"only {n} labelled eval records in the window, {min_eval_records} needed to judge",
            metrics,
            threshold,
        )
    if "difference_ci" not in evidence:
        return GateVerdict(
            gate, True, "first version: nothing to be worse than", metrics, threshold
        )
    lo, hi = (float(x) for x in evidence["difference_ci"])
    diff = float(evidence["difference"])
    span = f"{diff:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    if gate == "forgetting" and n < min_eval_records:
        return GateVerdict(
            gate, True, f"only {n} records of earlier windows: {span}", metrics, threshold, False
        )
    if hi < -tolerance:
        return GateVerdict(
            gate,
            False,
            f"macro-F1 on the {what} is worse than the active version's by {span} "
            f"({confidence:.0%} interval), beyond the tolerance {tolerance}",
            metrics,
            threshold,
        )
    return GateVerdict(
        gate,
        True,
        f"macro-F1 difference on the {what} {span} ({confidence:.0%} interval), "
        f"tolerance {tolerance}",
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
    evidence: dict[str, Any] | None, *, bound: float, min_nonmembers: int = 2
) -> GateVerdict:
    threshold = {"auc_upper_bound": bound, "min_nonmembers": min_nonmembers}
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
    if upper > bound:
        return GateVerdict("membership", False, f"{text} > {bound}", summary, threshold)
    return GateVerdict("membership", True, f"{text} <= {bound}", summary, threshold)


def canary_gate(evidence: dict[str, Any] | None, *, bound: float) -> GateVerdict:
    """SEV1 when an inserted canary's exposure exceeds ``bound`` bits: the model singles it
    out among the sequences of its template. Whether it also outranks every sampled
    alternative, and the never-inserted controls, are reported beside it."""
    threshold = {"max_exposure_bits": bound}
    if not evidence:
        return GateVerdict("canary", True, "the run inserted no canaries", {}, threshold, False)
    top = float(evidence["max_exposure"])
    ranked = sum(1 for r in evidence.get("outranks_all", []) if r)
    text = (
        f"max exposure {top:.2f} bits of {evidence['space_bits']} ({ranked} of "
        f"{evidence.get('canaries', '?')} canaries outrank all {evidence.get('alternatives', '?')} "
        f"sampled alternatives; never-inserted controls: "
        f"{float(evidence['max_control_exposure']):.2f})"
    )
    if top > bound:
        return GateVerdict("canary", False, f"{text} > {bound}: extractable", evidence, threshold)
    return GateVerdict("canary", True, f"{text} <= {bound}", evidence, threshold)


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
) -> list[GateVerdict]:
    """Every gate the policy enables, on the evidence of one version."""
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
            )
        )
    verdicts.append(canary_gate(evidence.get("canaries"), bound=policy.canary_max_exposure))
    verdicts.append(
        privacy_audit_gate(evidence.get("audit"), accountant_epsilon=accountant_epsilon)
    )
    return verdicts


def decision_of(verdicts: Sequence[GateVerdict]) -> dict[str, Any]:
    failed = [v for v in verdicts if not v.passed]
    return {
        "reason": "gates passed"
        if not failed
        else "gate " + ", ".join(v.gate for v in failed) + " failed",
        "passed": not failed,
        "failed": [v.gate for v in failed],
        "severity": worst([s for v in failed if (s := v.severity)]),
        "gates": [v.to_dict() for v in verdicts],
    }
