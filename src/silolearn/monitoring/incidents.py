"""Incidents: what a failed gate or check found, how severe it is, and what was done.

Severity follows the blast radius (``validation.gates.severity_of``). SEV1 (a leak of a
tenant whose audience is ``mixed``, the one-run audit refuting the accountant, an isolated
tenant's predictions moved when another tenant trained): reject, quarantine the tenant's
training, alert. SEV2 (memorisation by an adapter that serves only its own tenant, a
shared-layer member moved beyond its bound, a production/shadow jump): reject, and
``pipeline.Trainer.train`` remediates a leak. SEV3 (quality, forgetting, golden suite):
reject. Every incident is audited when opened and when resolved; its evidence is
numbers, never record text. Incidents outlive a shredded tenant: they are the record.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import ConflictError, InvalidInput, NotFoundError

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

_alerts = logging.getLogger("silolearn.incidents")
"""The alert channel: every opened incident is logged here at WARNING (wire a handler to
page someone)."""

_COLUMNS = (
    "id, tenant_id, tenant, severity, kind, version, status, summary, evidence, actions, "
    "created_at, resolved_at, resolution"
)


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = [c.strip() for c in _COLUMNS.split(",")]
    out = dict(zip(keys, row, strict=True))
    out["evidence"] = json.loads(out["evidence"])
    out["actions"] = json.loads(out["actions"])
    return out


class Incidents:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def open(
        self,
        tenant: str,
        *,
        severity: str,
        kind: str,
        summary: str,
        evidence: dict[str, Any],
        actions: list[str],
        version: int | None = None,
    ) -> dict[str, Any]:
        """Record an incident and carry out its severity's action: a SEV1 quarantines the
        tenant's training (serving continues; promotion and training stop until released)."""
        if severity not in ("SEV1", "SEV2", "SEV3"):
            raise InvalidInput(f"unknown severity {severity!r}")
        info = self.ws.tenants.get(tenant)
        actions = list(actions)
        if severity == "SEV1" and info.status == "active":
            actions.append("quarantined training")
        with self.ws.audit.write() as conn:
            cursor = conn.execute(
                "INSERT INTO incidents (tenant_id, tenant, severity, kind, version, summary, "
                "evidence, actions, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    tenant,
                    severity,
                    kind,
                    version,
                    summary,
                    json.dumps(evidence, sort_keys=True, default=str),
                    json.dumps(actions),
                    utcnow(),
                ),
            )
            incident_id = int(cursor.lastrowid or 0)
            self.ws.audit.append_in(
                conn,
                "incident.open",
                tenant=tenant,
                obj=f"incident/{incident_id}",
                details={
                    "severity": severity,
                    "kind": kind,
                    "version": version,
                    "summary": summary,
                    "actions": actions,
                },
            )
        if "quarantined training" in actions:
            self.ws.tenants.set_status(
                tenant, "quarantined", reason=f"incident {incident_id} ({severity} {kind})"
            )
        _alerts.warning("%s incident %d on %s: %s", severity, incident_id, tenant, summary)
        return self.get(incident_id)

    def get(self, incident_id: int) -> dict[str, Any]:
        row = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no incident {incident_id}")
        return _row(row)

    def list(self, *, tenant: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        query = f"SELECT {_COLUMNS} FROM incidents"
        clauses, args = [], []
        if tenant is not None:
            clauses.append("tenant = ?")
            args.append(tenant)
        if status is not None:
            if status not in ("open", "resolved"):
                raise InvalidInput(f"unknown incident status {status!r}: use open or resolved")
            clauses.append("status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        return [_row(r) for r in self.ws.conn.execute(query + " ORDER BY id", args).fetchall()]

    def resolve(self, incident_id: int, *, note: str) -> dict[str, Any]:
        """Close an incident with a note. Releasing a quarantined tenant stays a separate,
        deliberate step (``silolearn tenant release``)."""
        if not note.strip():
            raise InvalidInput("resolving an incident needs a note saying what was done")
        incident = self.get(incident_id)
        if incident["status"] != "open":
            raise ConflictError(f"incident {incident_id} is already {incident['status']}")
        with self.ws.audit.write() as conn:
            conn.execute(
                "UPDATE incidents SET status = 'resolved', resolved_at = ?, resolution = ? "
                "WHERE id = ?",
                (utcnow(), note, incident_id),
            )
            self.ws.audit.append_in(
                conn,
                "incident.resolve",
                tenant=incident["tenant"],
                obj=f"incident/{incident_id}",
                details={"note": note},
            )
        return self.get(incident_id)
