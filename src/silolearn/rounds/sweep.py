"""The accuracy-privacy sweep: a composition of side runs (the run stage, never promoted)
and one evaluation. One DP candidate per target epsilon (plus a non-private one unless the
tenant requires DP), all from scratch on the same records; the cost of every DP point is
charged to the tenant's ledger together, before any of them trains."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from silolearn.audit.log import utcnow
from silolearn.errors import ConflictError, InvalidInput, TenantQuarantined
from silolearn.learning.dp import DpPlan
from silolearn.learning.encoder import verify_base_model
from silolearn.privacy.ledger import tenant_scope
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.judge import evaluate_side_runs
from silolearn.rounds.plan import adapter_kind, cutoff_for
from silolearn.rounds.privacy import plan_dp
from silolearn.rounds.run import side_run
from silolearn.storage.metadata import PRIVACY_SWEEPS
from silolearn.storage.scope import Purpose
from silolearn.worker.runner import Request, run_slot


def sweep(
    ctx: Coordinator,
    tenant: str,
    epsilons: Sequence[float],
    *,
    kind: str | None = None,
    seed: int | None = None,
    cutoff: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train one DP candidate per target epsilon (plus a non-private one unless the
    tenant requires DP), all from scratch on the same records, and evaluate them on the
    same eval window. Candidates are never promoted. The cost of *all* DP points is
    charged to the tenant's ledger together when the first worker has counted the
    records, before any of them trains; a sweep the budget cannot pay is refused whole.
    """
    ws = ctx.ws
    kind = adapter_kind(ctx, kind)
    targets = sorted({float(e) for e in epsilons})
    if not targets or any(not (e > 0 and e < 1e6) for e in targets):
        raise InvalidInput("give one or more positive target epsilons, e.g. 1,2,4,8")
    seed = ctx.config.seed if seed is None else seed
    info = ws.tenants.get(tenant)
    if info.status != "active":
        raise TenantQuarantined(f"tenant {tenant!r} is {info.status}", tenant=tenant)
    scope_key = tenant_scope(info.id)
    ledger = ws.ledger()
    policy = ledger.policy(scope_key)
    sweep_id = secrets.token_hex(8)
    ledger.precheck(
        scope_key, tenant=tenant, run_id=sweep_id, purpose="sweep", at_least=max(targets)
    )
    verify_base_model(ws, when="train.before")
    points: list[dict[str, Any]] = []
    charging = _SweepCharge(ctx, tenant, sweep_id, kind, targets)
    with run_slot(ws.path / "locks" / "train", info.id, tenant, ctx.config.max_runs_per_tenant):
        scope = ws.scope(tenant, purpose=Purpose.TRAINING)
        registry = AdapterRegistry(scope)
        cutoff = cutoff_for(ctx, tenant, cutoff, None)
        ws.audit.append(
            "privacy.sweep.start",
            tenant=tenant,
            obj=sweep_id,
            details={"epsilons": targets, "kind": kind, "cutoff": cutoff},
        )
        runs: list[tuple[float | None, int]] = [(e, i) for i, e in enumerate(targets)]
        if policy.mode != "dp":
            runs.append((None, -1))
        for target, index in runs:
            candidate = side_run(
                ctx,
                tenant,
                registry,
                kind=kind,
                seed=seed,
                cutoff=cutoff,
                on_request=None if target is None else charging.answer_for(index),
                tag={"sweep": {"id": sweep_id, "target_epsilon": target}},
                progress=progress,
            )
            points.append({"epsilon": target, "version": candidate.version, "v": candidate})
        evaluation = evaluate_side_runs(
            ctx,
            tenant,
            registry,
            cutoff,
            [pt["v"] for pt in points],
            reason="privacy sweep candidate: never promoted",
            progress=progress,
        )
    results = [_point(pt["epsilon"], pt["v"], evaluation) for pt in points]
    charge = charging.charge
    report = {
        "sweep_id": sweep_id,
        "tenant": tenant,
        "kind": kind,
        "cutoff": cutoff,
        "records": charging.records,
        "eval_records": evaluation["eval_records"],
        "delta": policy.delta,
        "charged": None if charge is None else charge.to_dict(),
        "results": results,
        "created_at": utcnow(),
    }
    _record(ctx, report, tenant_id=info.id, scope_key=scope_key)
    return report


class _SweepCharge:
    """Plans every DP point and charges them together, on the first worker's question
    (when the records are counted), before any of them trains."""

    def __init__(
        self, ctx: Coordinator, tenant: str, sweep_id: str, kind: str, targets: list[float]
    ) -> None:
        self.ctx, self.tenant, self.sweep_id, self.kind, self.targets = (
            ctx,
            tenant,
            sweep_id,
            kind,
            targets,
        )
        self.scope_key = tenant_scope(ctx.ws.tenants.get(tenant).id)
        self.records: int | None = None
        self.plans: list[DpPlan] | None = None
        self.charge: Any = None

    def answer_for(self, index: int) -> Request:
        def answer(name: str, details: dict[str, Any]) -> dict[str, Any]:
            records = int(details["records"])
            if self.plans is None:
                self._charge(records)
            elif records != self.records:
                raise ConflictError("the tenant's records changed during the sweep")
            assert self.plans is not None
            return {"plan": self.plans[index].to_dict(), "charge": self.charge.to_dict()}

        return answer

    def _charge(self, records: int) -> None:
        ledger = self.ctx.ws.ledger()
        delta = ledger.policy(self.scope_key).delta
        plans = [
            plan_dp(self.ctx, records=records, kind=self.kind, target_epsilon=e, delta=delta)
            for e in self.targets
        ]
        self.charge = ledger.charge(
            self.scope_key,
            tenant=self.tenant,
            run_id=self.sweep_id,
            purpose="sweep",
            planned=[p.event for p in plans],
        )
        self.records, self.plans = records, plans


def _point(
    epsilon: float | None, version: AdapterVersion, evaluation: dict[str, Any]
) -> dict[str, Any]:
    metrics = evaluation["versions"][str(version.version)]
    privacy = version.lineage.get("privacy", {})
    plan = privacy.get("plan", {})
    return {
        "epsilon": epsilon,
        "version": version.version,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "n": metrics.get("n"),
        "noise_multiplier": plan.get("noise_multiplier"),
        "steps": plan.get("steps") if plan else version.lineage["fit"]["steps"],
        "sampling_rate": plan.get("sampling_rate"),
        "clipped": (privacy.get("clipping") or {}).get("fraction_clipped", {}).get("mean"),
        "warnings": privacy.get("warnings", []),
    }


def _record(ctx: Coordinator, report: dict[str, Any], *, tenant_id: str, scope_key: str) -> None:
    """The sweep's report in ``privacy_sweeps`` and its ``privacy.sweep`` event."""
    ws = ctx.ws
    tenant, sweep_id, results = report["tenant"], report["sweep_id"], report["results"]
    charge = report["charged"]
    with ws.audit.write() as conn:
        sealed, dek_version = ws.metadata.seal(
            conn, PRIVACY_SWEEPS, tenant_id, sweep_id, {"results": report}
        )
        conn.execute(
            "INSERT INTO privacy_sweeps (sweep_id, tenant_id, scope, sealed, dek_version, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (sweep_id, tenant_id, scope_key, sealed, dek_version, utcnow()),
        )
        ws.audit.append_in(
            conn,
            "privacy.sweep",
            tenant=tenant,
            obj=sweep_id,
            details={
                "points": [
                    {k: r[k] for k in ("epsilon", "version", "accuracy", "macro_f1")}
                    for r in results
                ],
                "epsilon_after": None if charge is None else charge["epsilon_after"],
            },
        )


def list_sweeps(ctx: Coordinator, tenant: str | None = None) -> list[dict[str, Any]]:
    """Accuracy-privacy sweeps, oldest first (of one tenant, or of all)."""
    ws = ctx.ws
    query = "SELECT tenant_id, sweep_id, sealed, dek_version FROM privacy_sweeps"
    args: tuple[str, ...] = ()
    if tenant is not None:
        query += " WHERE tenant_id = ?"
        args = (ws.tenants.get(tenant).id,)
    rows = ws.conn.execute(query + " ORDER BY created_at", args).fetchall()
    return [ws.metadata.open(PRIVACY_SWEEPS, *row)["results"] for row in rows]
