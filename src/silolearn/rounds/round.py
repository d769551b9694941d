"""One continuous-learning round for one tenant, as a composition of the stages.

plan (the tenant may train; privacy; canaries) → under one of the tenant's run slots:
anchor (parent, cutoff) → run (check the frozen base, I3; train in an isolated worker, I2,
on the tenant's records up to the cutoff plus a replay sample; check the base again;
register the candidate with its lineage) → judge (the gate worker, warmed while the
training worker trains, measures candidate and serving version on the same eval window:
the trainer never sees eval data, I5) → commit (promote or reject atomically, I8) → watch
(labels, divergence, shadow). Every step is audited."""

from __future__ import annotations

import time
from typing import Any

from silolearn.errors import ConflictError, SiloError
from silolearn.learning.encoder import base_model_record, verify_base_model
from silolearn.registry.versions import AdapterRegistry
from silolearn.rounds.commit import commit
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.judge import judge_candidate
from silolearn.rounds.plan import RoundPlan, anchor, plan_round
from silolearn.rounds.privacy import dp_request
from silolearn.rounds.result import RoundResult
from silolearn.rounds.run import run_finished, start_run, train_candidate
from silolearn.rounds.watch import watch
from silolearn.storage.scope import Purpose
from silolearn.worker.runner import Worker, run_slot


def one_round(
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
) -> RoundResult:
    """One round: one isolated run, its gates, promotion or rejection."""
    plan = plan_round(
        ctx,
        tenant,
        kind=kind,
        seed=seed,
        cutoff=cutoff,
        dp=dp,
        epsilon=epsilon,
        canaries=canaries,
        overrides=overrides,
    )
    started = time.perf_counter()
    verify_base_model(ctx.ws, when="train.before")
    result, timings = _run_and_judge(ctx, plan, progress)
    result.timings = {**timings, **result.timings, "total": round(time.perf_counter() - started, 4)}
    watch(ctx, result, progress=progress, divergence=divergence)
    return result


def _run_and_judge(
    ctx: Coordinator, plan: RoundPlan, progress: Progress | None
) -> tuple[RoundResult, dict[str, float]]:
    """Under one of the tenant's run slots: anchor, run, judge, commit."""
    ws, tenant = ctx.ws, plan.tenant
    with run_slot(
        ws.path / "locks" / "train", plan.tenant_id, tenant, ctx.config.max_runs_per_tenant
    ):
        scope = ws.scope(tenant, purpose=Purpose.TRAINING)
        registry = AdapterRegistry(scope)
        fixed = anchor(ctx, plan, registry)
        run = start_run(
            ctx,
            registry,
            kind=plan.kind,
            seed=plan.seed,
            cutoff=fixed.cutoff,
            parent=fixed.parent,
            dp=plan.private,
            canaries=plan.canaries,
            trunk=plan.trunk,
        )
        on_request = None
        if plan.private:
            assert plan.target_epsilon is not None
            on_request = dp_request(ctx, tenant, run.run_id, "train", plan.target_epsilon)
        # the gate worker starts now and loads the base model while the training worker
        # trains: its start-up no longer adds to the round (it gets its job, and the
        # tenant's keys, only once the candidate is registered)
        gate_worker = Worker(warm=base_model_record(ws).path)
        try:
            trained = train_candidate(
                ctx,
                tenant,
                registry,
                run,
                kind=plan.kind,
                progress=progress,
                on_request=on_request,
                training=plan.training,
                tag={"overrides": plan.overrides} if plan.overrides else None,
                after=lambda: verify_base_model(ws, when="train.after"),
            )
            judgement = judge_candidate(
                ctx, tenant, trained.candidate, fixed.active, progress, worker=gate_worker
            )
            result = commit(ctx, tenant, registry, trained.candidate, judgement)
        except SiloError as exc:
            run_finished(ctx, run.run_id, "failed", None, exc.code)
            # the message can name the tenant's labels: it goes in the sealed audit details
            details = {"error": exc.code, "message": exc.message}
            scope.audit("train.failed", obj=run.run_id, details=details)
            raise
        finally:
            gate_worker.close()
        run_finished(ctx, run.run_id, "succeeded", trained.candidate.version, None)
    return result, trained.timings


def promote(ctx: Coordinator, tenant: str, version: int, *, reason: str = "manual") -> RoundResult:
    """Promote a candidate by hand: only through the same gates a round applies."""
    verify_base_model(ctx.ws, when="promote")
    registry = AdapterRegistry(ctx.ws.scope(tenant, purpose=Purpose.TRAINING))
    candidate = registry.get(version)
    if candidate.status != "candidate":
        raise ConflictError(
            f"adapter v{version} is {candidate.status}, not a candidate", version=version
        )
    judgement = judge_candidate(ctx, tenant, candidate, registry.active(), None)
    result = commit(ctx, tenant, registry, candidate, judgement, trigger="promote")
    if result.status not in ("active", "canary"):
        raise ConflictError(
            f"adapter v{version} of {tenant!r} failed its gates and was rejected: "
            f"{result.decision['reason']}",
            version=version,
            reason=reason,
        )
    return result
