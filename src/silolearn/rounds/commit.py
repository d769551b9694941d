"""The commit stage: a judgement into the registry (promotion, the start of a canary
rollout when the tenant's ``[rollout]`` policy asks for one and a version already serves,
or rejection; atomic and per tenant, I8), the gate log (``gate_runs`` and a
``gates.verdict`` audit event), the serving version's divergence snapshot, and an incident
for a failed gate. A gate run's verdicts (evidence, per-class numbers) are sealed under the
tenant's metadata key; its trigger, outcome and severity stay in clear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from silolearn.audit.log import utcnow
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.context import Coordinator
from silolearn.rounds.judge import Judgement
from silolearn.rounds.result import RoundResult
from silolearn.storage.metadata import GATE_RUNS
from silolearn.storage.scope import Purpose
from silolearn.validation.gates import GateVerdict


def commit(
    ctx: Coordinator,
    tenant: str,
    registry: AdapterRegistry,
    candidate: AdapterVersion,
    judgement: Judgement,
    *,
    trigger: str = "round",
) -> RoundResult:
    """Release the candidate when every gate passed (promoted, or a canary by policy),
    otherwise reject it and open an incident; either way the verdicts are recorded and
    audited."""
    decision = judgement.decision
    registry.set_metrics(candidate.version, judgement.metrics)
    if decision["passed"]:
        final = _release(ctx, tenant, registry, candidate.version, decision)
    else:
        final = registry.reject(candidate.version, decision=decision)
    record_gates(ctx, tenant, candidate.version, trigger, decision)
    if final.status == "active":
        from silolearn.validation.divergence import snapshot

        snapshot(ctx.ws, tenant)
    else:
        open_incident(ctx, tenant, candidate.version, judgement.verdicts, actions=["rejected"])
    return RoundResult(
        tenant=tenant,
        status=final.status,
        version=final.version,
        kind=final.kind,
        sha256=final.sha256,
        parent=final.parent,
        metrics=final.metrics,
        before=judgement.before,
        decision=final.decision,
        lineage=final.lineage,
        timings={"evaluate": judgement.seconds},
    )


def _release(
    ctx: Coordinator,
    tenant: str,
    registry: AdapterRegistry,
    version: int,
    decision: dict[str, Any],
) -> AdapterVersion:
    """A passing candidate becomes active, or the canary of a rollout beside the active
    version when the tenant's policy says so (a first version has nothing to compare with:
    it becomes active)."""
    policy = ctx.ws.settings.rollout.for_tenant(tenant)
    if policy.mode == "canary" and registry.active() is not None:
        from silolearn.registry.rollout import RolloutStore

        store = RolloutStore(ctx.ws.scope(tenant, purpose=Purpose.REGISTRY))
        store.start(version, steps=policy.steps, now=ctx.clock.now(), decision=decision)
        return registry.get(version)
    return registry.promote(version, decision=decision)


def record_gates(
    ctx: Coordinator, tenant: str, version: int, trigger: str, decision: dict[str, Any]
) -> None:
    """One gate run in ``gate_runs`` and its ``gates.verdict`` event, in one transaction."""
    ws = ctx.ws
    info = ws.tenants.get(tenant)
    with ws.audit.write() as conn:
        cursor = conn.execute(
            "INSERT INTO gate_runs (tenant_id, version, trigger, passed, severity, "
            "sealed, dek_version, created_at) VALUES (?, ?, ?, ?, ?, x'', 0, ?)",
            (info.id, version, trigger, int(decision["passed"]), decision["severity"], utcnow()),
        )
        # sealed once its id, bound into the ciphertext, is known
        gate_run = int(cursor.lastrowid or 0)
        sealed, dek_version = ws.metadata.seal(
            conn, GATE_RUNS, info.id, gate_run, {"verdicts": decision["gates"]}
        )
        conn.execute(
            "UPDATE gate_runs SET sealed = ?, dek_version = ? WHERE id = ?",
            (sealed, dek_version, gate_run),
        )
        ws.audit.append_in(
            conn,
            "gates.verdict",
            tenant=tenant,
            obj=f"v{version}",
            details={
                "trigger": trigger,
                "passed": decision["passed"],
                "severity": decision["severity"],
                "verdicts": [
                    {"gate": g["gate"], "passed": g["passed"], "reason": g["reason"]}
                    for g in decision["gates"]
                ],
            },
        )


def open_incident(
    ctx: Coordinator,
    tenant: str,
    version: int,
    verdicts: Sequence[GateVerdict],
    *,
    actions: list[str],
) -> dict[str, Any] | None:
    """An incident at the worst severity of the failed gates (None when none failed)."""
    from silolearn.monitoring.incidents import Incidents
    from silolearn.validation.gates import worst

    failed = [v for v in verdicts if not v.passed]
    severity = worst([sv for v in failed if (sv := v.severity)])
    if severity is None:
        return None
    return Incidents(ctx.ws).open(
        tenant,
        severity=severity,
        kind=",".join(v.gate for v in failed),
        version=version,
        summary=f"v{version}: " + "; ".join(f"{v.gate}: {v.reason}" for v in failed),
        evidence={v.gate: {"metrics": _compact(v.metrics), **v.threshold} for v in failed},
        actions=actions,
    )


def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    """A verdict's metrics without long per-item lists (an incident keeps the headline)."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, list) and len(v) > 8)}


def list_gate_runs(
    ctx: Coordinator, tenant: str, version: int | None = None
) -> list[dict[str, Any]]:
    """Every gate run of a tenant (of one version), oldest first: trigger, verdicts."""
    info = ctx.ws.tenants.get(tenant)
    query = (
        "SELECT id, version, trigger, passed, severity, sealed, dek_version, created_at "
        "FROM gate_runs WHERE tenant_id = ?"
    )
    args: list[Any] = [info.id]
    if version is not None:
        query += " AND version = ?"
        args.append(version)
    rows = ctx.ws.conn.execute(query + " ORDER BY id", args).fetchall()
    return [
        {
            "version": r[1],
            "trigger": r[2],
            "passed": bool(r[3]),
            "severity": r[4],
            "verdicts": ctx.ws.metadata.open(GATE_RUNS, info.id, r[0], r[5], r[6])["verdicts"],
            "created_at": r[7],
        }
        for r in rows
    ]
