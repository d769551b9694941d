"""Shadow comparison of shared-layer members: production against an isolated shadow.

For a tenant on the shared layer, the shadow is a head trained only on the tenant's own
records up to the serving version's cutoff, without the shared trunk (``Trainer.shadow``
trains it in the tenant's own worker and keeps it in the tenant's registry, rejected, so it
never serves). Its predictions on the tenant's probe set are compared with the serving
version's: the disagreement rate (share of probes whose top label differs) and the mean
KL(production || shadow). Each comparison is a row of ``shadow_checks`` keyed by the shared
version the serving version was trained on, so the series says what each shared version
did to this tenant.

A rise of the disagreement rate by more than ``shadow_jump`` from the previous shared
version to this one means that something in the shared update pulled the tenant's
predictions away from what its own data says. The shared version's other contributors are
the only other input that changed, so the incident (SEV2) names them, ordered by how much
more they contributed than to the previous version, and the tenant is pinned back to the
previous shared version for its next rounds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.audit.log import utcnow
from silolearn.registry.versions import AdapterVersion
from silolearn.validation.divergence import FloatArray, ProbeRunner, mean_kl

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

KEYS = (
    "tenant",
    "shared_version",
    "version",
    "shadow_version",
    "probes",
    "disagreement",
    "kl",
    "created_at",
)


def compare(production: FloatArray, shadow: FloatArray) -> dict[str, Any]:
    """Disagreement rate of the top labels and mean KL(production || shadow)."""
    if production.shape != shadow.shape:
        raise ValueError(f"probe shapes differ: {production.shape} vs {shadow.shape}")
    differ = np.argmax(production, axis=1) != np.argmax(shadow, axis=1)
    return {
        "probes": int(production.shape[0]),
        "disagreement": float(np.mean(differ)) if differ.size else 0.0,
        "kl": mean_kl(production, shadow),
    }


def history(ws: Workspace, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every recorded comparison (of one tenant), oldest first."""
    query = (
        "SELECT t.name, s.shared_version, s.version, s.shadow_version, s.probes, "
        "s.disagreement, s.kl, s.created_at FROM shadow_checks s JOIN tenants t "
        "ON t.id = s.tenant_id"
    )
    args: list[Any] = []
    if tenant is not None:
        query += " WHERE t.name = ?"
        args.append(tenant)
    rows = ws.conn.execute(query + " ORDER BY s.id", args).fetchall()
    return [dict(zip(KEYS, row, strict=True)) for row in rows]


def previous_version_check(
    checks: list[dict[str, Any]], shared_version: int | None
) -> dict[str, Any] | None:
    """The latest comparison made on a different, earlier shared version (what a jump is
    measured from); ``None`` when this is the first shared version the tenant served."""
    if shared_version is None:
        return None
    for row in reversed(checks):
        other = row["shared_version"]
        if other is not None and int(other) < shared_version:
            return dict(row)
    return None


def suspects(
    ws: Workspace, tenant: str, shared_version: int, previous: int | None
) -> list[dict[str, Any]]:
    """The other contributors of ``shared_version`` with their record counts in it and in
    ``previous``, the largest increase first (a new contributor counts all its records)."""
    from silolearn.learning.shared import SharedStore

    store = SharedStore(ws)

    def counts(version: int | None) -> dict[str, int]:
        if version is None:
            return {}
        return {
            str(m["tenant"]): int(m.get("records", 0))
            for m in store.get(version).lineage.get("members", [])
        }

    now, before = counts(shared_version), counts(previous)
    out: list[dict[str, Any]] = [
        {
            "tenant": name,
            "records": records,
            "records_before": before.get(name, 0),
            "increase": records - before.get(name, 0),
            "new": name not in before,
        }
        for name, records in now.items()
        if name != tenant
    ]
    out.sort(key=lambda s: (-int(s["increase"]), str(s["tenant"])))
    return out


def check(
    ws: Workspace,
    tenant: str,
    serving: AdapterVersion,
    shadow: AdapterVersion,
    runner: ProbeRunner | None = None,
) -> dict[str, Any] | None:
    """Compare ``serving`` with ``shadow`` on ``tenant``'s probe set, record the row and
    open an incident on a jump. ``None`` when the tenant has no eval records yet."""
    runner = runner or ProbeRunner(ws)
    production = runner.run(tenant, serving)
    isolated = runner.run(tenant, shadow)
    if production is None or isolated is None:
        return None
    shared_version = (serving.lineage.get("trunk") or {}).get("version")
    shared_version = None if shared_version is None else int(shared_version)
    earlier = history(ws, tenant)
    row: dict[str, Any] = {
        "tenant": tenant,
        "shared_version": shared_version,
        "version": serving.version,
        "shadow_version": shadow.version,
        **compare(production, isolated),
        "created_at": utcnow(),
    }
    info = ws.tenants.get(tenant)
    with ws.audit.write() as conn:
        conn.execute(
            "INSERT INTO shadow_checks (tenant_id, shared_version, version, shadow_version, "
            "probes, disagreement, kl, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                info.id,
                shared_version,
                serving.version,
                shadow.version,
                row["probes"],
                row["disagreement"],
                row["kl"],
                row["created_at"],
            ),
        )
        ws.audit.append_in(
            conn,
            "shadow.check",
            tenant=tenant,
            obj=f"v{serving.version}",
            details={
                k: row[k]
                for k in ("shared_version", "shadow_version", "probes", "disagreement", "kl")
            },
        )
    previous = previous_version_check(earlier, shared_version)
    row["previous"] = previous
    row["jump"] = None if previous is None else row["disagreement"] - previous["disagreement"]
    row["incident"] = None
    bound = ws.settings.gates.for_tenant(tenant).shadow_jump
    if previous is not None and row["jump"] > bound:
        row["incident"] = jump_incident(ws, tenant, row, previous, bound)["id"]
    return row


def jump_incident(
    ws: Workspace, tenant: str, row: dict[str, Any], previous: dict[str, Any], bound: float
) -> dict[str, Any]:
    """The SEV2 of a disagreement jump from ``previous`` to ``row``: it names the other
    contributors of ``row``'s shared version (largest increase first) and pins the tenant
    back to the previous shared version when it follows the latest."""
    from silolearn.learning.shared import SharedStore
    from silolearn.monitoring.incidents import Incidents

    now, before = int(row["shared_version"]), int(previous["shared_version"])
    named = suspects(ws, tenant, now, before)
    store = SharedStore(ws)
    member = store.member(tenant)
    actions = ["alert"]
    if member is not None and member.get("pinned_version") is None:
        store.pin(tenant, before)
        actions.append(f"pinned to shared v{before}")
    who = ", ".join(s["tenant"] for s in named) or "no other contributor"
    jump = row["disagreement"] - previous["disagreement"]
    return Incidents(ws).open(
        tenant,
        severity="SEV2",
        kind="shadow_jump",
        version=int(row["version"]),
        summary=(
            f"{tenant}'s disagreement with its isolated shadow rose from "
            f"{previous['disagreement']:.3f} on shared v{before} to "
            f"{row['disagreement']:.3f} on shared v{now} (> {bound} rise); "
            f"contributors of v{now}: {who}"
        ),
        evidence={
            "check": {k: row[k] for k in KEYS},
            "previous": {k: previous[k] for k in KEYS},
            "jump": jump,
            "bound": bound,
            "suspects": named,
        },
        actions=actions,
    )
