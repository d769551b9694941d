"""The judge stage: a gate worker's evidence on a candidate into verdicts and a decision.

The gate worker (one process, the tenant's scope, eval access, I5) measures quality,
forgetting, membership inference, canary exposure and the privacy audit; ``judge`` in
``silolearn.validation.gates`` turns the evidence into verdicts under the tenant's policy,
and ``decision_of`` into one decision. Nothing here writes: ``commit`` does."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.run import exchange
from silolearn.storage.scope import Purpose
from silolearn.validation.gates import GateVerdict, decision_of, judge
from silolearn.worker.runner import Worker


@dataclass(frozen=True)
class Judgement:
    """The gates' verdicts on a candidate and what they rest on."""

    verdicts: list[GateVerdict]
    decision: dict[str, Any]
    metrics: dict[str, Any]
    """The candidate's metrics on the eval window, with the window and the gate timings."""
    before: dict[str, Any] | None
    """The serving version's headline metrics on the same window (None: none serves)."""
    seconds: float


def judge_candidate(
    ctx: Coordinator,
    tenant: str,
    candidate: AdapterVersion,
    active: AdapterVersion | None,
    progress: Progress | None,
    *,
    worker: Worker | None = None,
) -> Judgement:
    """Every gate of the tenant's policy on the candidate, against the serving version."""
    t0 = time.perf_counter()
    verdicts, evidence = run_gates(ctx, tenant, candidate, active, progress, worker=worker)
    after = evidence["versions"][str(candidate.version)]
    before = None if active is None else evidence["versions"][str(active.version)]
    metrics = {
        **after,
        "eval_window": evidence["window"],
        "eval_records": evidence["eval_records"],
        "gate_seconds": evidence["timings"],
        "gate_process": evidence.get("process"),
        "compared_with": None
        if before is None
        else {"version": active.version if active else None, **headline(before)},
    }
    return Judgement(
        verdicts=verdicts,
        decision=decision_of(verdicts),
        metrics=metrics,
        before=None if before is None else headline(before),
        seconds=round(time.perf_counter() - t0, 4),
    )


def run_gates(
    ctx: Coordinator,
    tenant: str,
    version: AdapterVersion,
    against: AdapterVersion | None,
    progress: Progress | None = None,
    *,
    worker: Worker | None = None,
    serving: bool = False,
) -> tuple[list[GateVerdict], dict[str, Any]]:
    """The tenant's gates on ``version`` (quality and forgetting against ``against``),
    from the evidence of one gate worker (``worker``: one started ahead, warm).
    ``serving``: a re-audit, where quality fails only when shown worse."""
    policy = ctx.ws.settings.gates.for_tenant(tenant)
    split = None if against is None else against.lineage.get("cutoff")
    privacy = version.lineage.get("privacy") or {}
    plan = privacy.get("plan") or {}
    params = {
        "cutoff": version.lineage["cutoff"],
        "split": split,
        "candidate": _meta(version),
        "active": None if against is None else _meta(against),
        "policy": policy.model_dump(),
        # the bootstrap and the canary alternatives are reproducible per version
        "seed": int(hashlib.sha256(f"{version.run_id}/gates".encode()).hexdigest()[:15], 16),
        "delta": plan.get("delta") or ctx.ws.settings.privacy.delta,
    }
    evidence = exchange(ctx, tenant, "gates", params, progress, worker=worker)
    accountant = None
    if privacy.get("mode") == "dp" and plan:
        accountant = float(plan["target_epsilon"])
    verdicts = judge(
        evidence,
        policy=policy,
        tolerance=ctx.config.promotion_tolerance,
        min_eval_records=ctx.config.min_eval_records,
        accountant_epsilon=accountant,
        serving=serving,
    )
    return verdicts, evidence


def _meta(v: AdapterVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "run_id": v.run_id,
        "sha256": v.sha256,
        "kind": v.kind,
        "config": v.lineage.get("config"),
    }


def evaluate(
    ctx: Coordinator,
    tenant: str,
    candidate: AdapterVersion,
    active: AdapterVersion | None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of the candidate (and the active version) on the same eval window, from
    an evaluation worker: the window ends at the candidate's cutoff; ``earlier`` and
    ``new`` split it at the parent's cutoff (what forgetting is measured on)."""
    t0 = time.perf_counter()
    versions = [candidate] + ([active] if active is not None else [])
    split = None
    if active is not None:
        split = active.lineage.get("cutoff")
    elif candidate.parent is not None:
        parent = AdapterRegistry(ctx.ws.scope(tenant, purpose=Purpose.REGISTRY)).get(
            candidate.parent
        )
        split = parent.lineage.get("cutoff")
    params = {
        "cutoff": candidate.lineage["cutoff"],
        "split": split,
        "versions": [_ref(v) for v in versions],
    }
    result = exchange(ctx, tenant, "evaluate", params, progress)
    result["seconds"] = round(time.perf_counter() - t0, 4)
    return result


def _ref(v: AdapterVersion) -> dict[str, Any]:
    return {"version": v.version, "run_id": v.run_id, "sha256": v.sha256, "kind": v.kind}


def evaluate_side_runs(
    ctx: Coordinator,
    tenant: str,
    registry: AdapterRegistry,
    cutoff: str,
    side: list[AdapterVersion],
    *,
    also: list[AdapterVersion] | None = None,
    reason: str,
    progress: Progress | None,
) -> dict[str, Any]:
    """Evaluate side-run candidates (and ``also``) on one eval window, record their
    metrics, and reject them, whatever happens: a side run never stays a candidate."""
    try:
        params = {
            "cutoff": cutoff,
            "split": None,
            "versions": [_ref(v) for v in [*(also or []), *side]],
        }
        evaluation = exchange(ctx, tenant, "evaluate", params, progress)
        for v in side:
            registry.set_metrics(v.version, evaluation["versions"][str(v.version)])
    finally:
        for v in side:
            if registry.get(v.version).status == "candidate":
                registry.reject(v.version, decision={"reason": reason, "gates": []})
    return evaluation


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "n", "windows") if k in metrics}
