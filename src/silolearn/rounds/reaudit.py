"""Re-audit: a composition of the judge and commit stages on what already serves. The
active version's gates are rerun under the current policy (quality and forgetting against
the version it replaced, on today's eval window); if it fails, the newest earlier version
that passes its gates is restored, automatically and audited, and an incident records what
failed and what was done."""

from __future__ import annotations

from typing import Any

from silolearn.errors import NotFoundError
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.commit import open_incident, record_gates
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.judge import run_gates
from silolearn.storage.scope import Purpose
from silolearn.validation.gates import decision_of


def rerun_gates(
    ctx: Coordinator, tenant: str, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Re-audit the active version under the current policy (quality and forgetting
    against the version it replaced, on today's eval window). If it fails, the newest
    earlier version that passes its gates is restored, automatically and audited; an
    incident records what failed and what was done."""
    ws = ctx.ws
    registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))
    active = registry.active()
    if active is None:
        raise NotFoundError(f"tenant {tenant!r} has no active version to re-audit")
    versions = {v.version: v for v in registry.list()}

    def parent_of(v: AdapterVersion) -> AdapterVersion | None:
        p = versions.get(v.parent) if v.parent is not None else None
        return p if p is not None and p.status in ("retired", "active") else None

    verdicts, _ = run_gates(ctx, tenant, active, parent_of(active), progress, serving=True)
    decision = decision_of(verdicts)
    record_gates(ctx, tenant, active.version, "rerun", decision)
    report: dict[str, Any] = {
        "tenant": tenant,
        "version": active.version,
        "passed": decision["passed"],
        "severity": decision["severity"],
        "gates": decision["gates"],
        "restored": None,
        "incident": None,
        "tried": [],
    }
    if decision["passed"]:
        return report
    restored = None
    for earlier in sorted(
        (v for v in versions.values() if v.status == "retired" and v.version < active.version),
        key=lambda v: -v.version,
    ):
        verdicts_e, _ = run_gates(ctx, tenant, earlier, parent_of(earlier), progress, serving=True)
        decision_e = decision_of(verdicts_e)
        record_gates(ctx, tenant, earlier.version, "restore", decision_e)
        report["tried"].append({"version": earlier.version, "passed": decision_e["passed"]})
        if decision_e["passed"]:
            restored = registry.rollback(
                to=earlier.version, reason=f"gates rerun: v{active.version} failed"
            )
            from silolearn.validation.divergence import snapshot

            snapshot(ws, tenant)
            break
    actions = [
        f"rolled back to v{restored.version}"
        if restored is not None
        else "no earlier version passes: the failing version still serves"
    ]
    incident = open_incident(ctx, tenant, active.version, verdicts, actions=actions)
    report["restored"] = None if restored is None else restored.version
    report["incident"] = None if incident is None else incident["id"]
    return report
