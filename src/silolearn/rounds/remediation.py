"""Remediation: a composition of rounds. A non-private candidate rejected by a leakage
gate (membership inference, canary exposure) at a severity that leaves the tenant active
is retried in the same ``train`` call, each attempt a real isolated round with its own
gates, audited as ``train.remediation``: stronger L2 (C bounded at a tenth, then a
hundredth, of the chosen one), then DP-SGD at the largest epsilon the tenant's remaining
budget pays, then at a quarter of it.
The first attempt that passes is promoted; if none does, the tenant keeps what it served
and the result's ``explanation`` says why and which policy change would allow a model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from silolearn.errors import SiloError
from silolearn.learning.tuning import STRONGER_C
from silolearn.privacy.ledger import tenant_scope
from silolearn.registry.versions import AdapterRegistry
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.result import RoundResult
from silolearn.rounds.round import one_round
from silolearn.storage.scope import Purpose
from silolearn.validation.gates import LEAKAGE_GATES

REGULARISATION_STEPS = 2
"""Remediation attempts that bound C below the attempt before's, after the one-standard-
error attempt and before DP-SGD."""
MIN_REMEDIATION_EPSILON = 0.05
"""Below this a DP remediation is not tried: the noise would swamp any head."""


def train(
    ctx: Coordinator,
    tenant: str,
    *,
    kind: str | None = None,
    seed: int | None = None,
    cutoff: str | None = None,
    progress: Progress | None = None,
    dp: bool | None = None,
    epsilon: float | None = None,
    canaries: dict[str, int] | None = None,
    overrides: dict[str, Any] | None = None,
    divergence: bool = True,
    remediate: bool = True,
) -> RoundResult:
    """One round, remediated when its candidate leaks (``remediate``). ``canaries``
    (``secret``, ``copies``, ``audit``) replaces the policy's canary counts for this run;
    ``overrides`` replaces training settings for this run (e.g. a leak drill: many epochs,
    no weight decay); ``divergence`` checks every other tenant after each round."""
    asked: dict[str, Any] = {
        "kind": kind,
        "seed": seed,
        "cutoff": cutoff,
        "progress": progress,
        "canaries": canaries,
        "divergence": divergence,
    }
    result = one_round(ctx, tenant, dp=dp, epsilon=epsilon, overrides=overrides, **asked)
    result.attempts = [_attempt("as asked", result, overrides=overrides)]
    if not (remediate and _leaked(result)):
        return result
    made = [result]
    for what, plan in remediations(ctx, tenant, made):
        if plan is None:
            result.attempts.append({"what": what, "status": "skipped", "reason": what})
            continue
        try:
            retry = one_round(ctx, tenant, **plan, **asked)
        except SiloError as exc:
            result.attempts.append(
                {"what": what, "status": "failed", "error": exc.code, "reason": exc.message}
            )
            ctx.ws.audit.append(
                "train.remediation",
                tenant=tenant,
                obj=what,
                details={"status": "failed", "error": exc.code},
            )
            continue
        attempts = [*result.attempts, _attempt(what, retry, overrides=plan.get("overrides"))]
        ctx.ws.audit.append(
            "train.remediation",
            tenant=tenant,
            obj=f"v{retry.version}",
            details={k: v for k, v in attempts[-1].items() if k != "reasons"},
        )
        result, result.attempts = retry, attempts
        made.append(retry)
        if retry.status in ("active", "canary") or not _leaked(retry):
            break
    if result.status not in ("active", "canary"):
        serving = serving_version(ctx, tenant)
        result.explanation = _explain(tenant, result.attempts, serving)
        ctx.ws.audit.append(
            "train.remediation",
            tenant=tenant,
            obj="exhausted",
            details={"attempts": len(result.attempts), "serving": serving},
        )
    return result


def remediations(
    ctx: Coordinator, tenant: str, made: Sequence[RoundResult]
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The remediation attempts in order, each planned once the one before (the last of
    ``made``) has leaked: the strongest L2 penalty within one standard error of the best
    (where that can mend the leak: ``_one_standard_error_may_help``), then up to
    ``REGULARISATION_STEPS`` more, each bounding C at a tenth of what the attempt before
    chose; then DP-SGD. A DP attempt the budget cannot pay is None."""
    regularised = {"tuning": "auto", "l2_choice": "one_standard_error"}
    if _one_standard_error_may_help(made[-1]):
        yield "stronger regularisation", {"overrides": dict(regularised)}
    for _ in range(REGULARISATION_STEPS):
        chosen = ((made[-1].lineage.get("fit") or {}).get("tuning") or {}).get("c")
        if chosen is None:
            break
        if chosen / 10 < STRONGER_C[0]:
            break
        bound = float(f"{chosen / 10:.3g}")
        yield (
            f"stronger regularisation, C at most {bound:g}",
            {"overrides": {**regularised, "max_c": bound}},
        )
    info = ctx.ws.tenants.get(tenant)
    ledger = ctx.ws.ledger()
    scope = tenant_scope(info.id)
    remaining = ledger.policy(scope).epsilon_budget - ledger.spent(scope)
    largest = min(remaining, ledger.policy(scope).run_epsilon)
    for share in (1.0, 0.25):
        eps = round(largest * share, 4)
        if eps >= MIN_REMEDIATION_EPSILON:
            yield f"dp epsilon {eps:g}", {"dp": True, "epsilon": eps}
        else:
            yield f"dp: remaining budget {max(remaining, 0.0):.3g} too small", None


def _leaked(result: RoundResult) -> bool:
    """A non-private candidate rejected by a leakage gate (whatever else failed beside it:
    a remediation may mend that too) at a severity that left the tenant active."""
    decision = result.decision or {}
    failed = set(decision.get("failed") or ())
    private = (result.lineage.get("privacy") or {}).get("mode") == "dp"
    return (
        result.status == "rejected"
        and bool(failed & set(LEAKAGE_GATES))
        and decision.get("severity") != "SEV1"
        and not private
    )


def _one_standard_error_may_help(result: RoundResult) -> bool:
    """Whether the one-standard-error penalty can mend the leak of this candidate: a
    membership failure, or hand-set overrides (a fixed schedule, the drill's) that the
    default learner replaces. A canary failure of the default learner it cannot: it moves C
    by a grid step or so, and for a linear head on frozen embeddings the weights are, to
    first order in C, a weighted sum of the training embeddings, so a canary's score against
    its same-template alternatives is its own embedding's similarity term against the
    others' at any C near the chosen one (measured on helpdesk-chat: top canary 25.3 and
    51.6 bits at the chosen C, 24.5 and 49.6 at one standard error). A C ten or a hundred
    times smaller can: where the chosen fit all but interpolates a label of a few records,
    the bound pulls the canary's loss off zero (51.6 bits to 14.7 at C <= 0.1 in one draw,
    46.7 unchanged in another; docs/gates.md), so the bounded steps run for every leak."""
    failed = set((result.decision or {}).get("failed") or ())
    fit = result.lineage.get("fit") or {}
    return "membership" in failed or not fit.get("tuning")


def _attempt(what: str, result: RoundResult, *, overrides: dict[str, Any] | None) -> dict[str, Any]:
    decision = result.decision or {}
    privacy = result.lineage.get("privacy") or {}
    tuning = (result.lineage.get("fit") or {}).get("tuning") or {}
    return {
        "what": what,
        "version": result.version,
        "status": result.status,
        "failed": decision.get("failed", []),
        "severity": decision.get("severity"),
        "reasons": {g["gate"]: g["reason"] for g in decision.get("gates", []) if not g["passed"]},
        "epsilon": (privacy.get("plan") or {}).get("target_epsilon"),
        "c": tuning.get("c"),
        "overrides": overrides,
        "accuracy": result.metrics.get("accuracy"),
        "macro_f1": result.metrics.get("macro_f1"),
    }


def _explain(tenant: str, attempts: list[dict[str, Any]], serving: int | None) -> str:
    """Why no attempt was promoted, and what policy change would allow a model."""
    failed = {g for a in attempts for g in a.get("failed") or ()}
    keeps = f"keeps serving v{serving}" if serving is not None else "has no model"
    tried = "; ".join(
        f"{a['what']}: {a['status']}"
        + (f" ({', '.join(a['failed'])})" if a.get("failed") else "")
        + (f" {a['reason']}" if a.get("reason") and a["status"] != "skipped" else "")
        for a in attempts
    )
    advice = []
    if failed & set(LEAKAGE_GATES):
        advice.append(
            f"a larger privacy budget for DP-SGD (`silolearn privacy budget {tenant} "
            "--epsilon E`) or more training records per label"
        )
    if failed - set(LEAKAGE_GATES):
        advice.append("more labelled eval records, so that the quality gate can decide")
    if any(a["status"] == "skipped" for a in attempts):
        advice.append("budget left for a DP remediation")
    return f"no candidate passed its gates; tenant {tenant!r} {keeps}. Tried: {tried}. " + (
        "A model needs " + " or ".join(advice) + "." if advice else ""
    )


def serving_version(ctx: Coordinator, tenant: str) -> int | None:
    active = AdapterRegistry(ctx.ws.scope(tenant, purpose=Purpose.REGISTRY)).active()
    return None if active is None else active.version
