"""Incidents: what a failed gate or check found, how severe it is, and what was done.

Severity follows the blast radius (``validation.gates.severity_of``). SEV1 (a leak of a
tenant whose audience is ``mixed``, the one-run audit refuting the accountant, an isolated
tenant's predictions moved when another tenant trained): reject, quarantine the tenant's
training, alert. SEV2 (memorisation by an adapter that serves only its own tenant, a
shared-layer member moved beyond its bound, a production/shadow jump): reject, and
``pipeline.Trainer.train`` remediates a leak. SEV3 (quality, forgetting, golden suite):
reject. Every incident is audited when opened and when resolved; its evidence is
numbers, never record text. Incidents outlive a shredded tenant: they are the record.

An incident's summary, evidence and resolution name the tenant's labels and per-class
numbers: they are sealed under the tenant's metadata key (``storage.metadata``). Its
tenant, severity, kind, version, status, actions and times stay in clear, so the incidents
of a shredded tenant are still listed, their sealed part shown as sealed.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import ConflictError, InvalidInput, MetadataSealed, NotFoundError
from silolearn.storage.metadata import INCIDENTS

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

_alerts = logging.getLogger("silolearn.incidents")
"""The alert channel: every opened incident is logged here at WARNING (wire a handler to
page someone)."""

_COLUMNS = (
    "id, tenant_id, tenant, severity, kind, version, status, actions, sealed, dek_version, "
    "created_at, resolved_at"
)


class Incidents:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def _row(self, row: tuple[Any, ...], *, strict: bool) -> dict[str, Any]:
        """One incident, its sealed part opened; a shredded tenant's raises
        ``MetadataSealed`` when ``strict``, else comes with ``sealed`` true and its sealed
        fields None."""
        keys = [c.strip() for c in _COLUMNS.split(",")]
        out = dict(zip(keys, row, strict=True))
        sealed, version = out.pop("sealed"), out.pop("dek_version")
        out["actions"] = json.loads(out["actions"])
        try:
            fields = self.ws.metadata.open(INCIDENTS, out["tenant_id"], out["id"], sealed, version)
        except MetadataSealed as exc:
            if strict:
                raise MetadataSealed(
                    f"incident {out['id']} of tenant {out['tenant']!r} is sealed: the tenant "
                    "was shredded, its summary and evidence can no longer be opened",
                    incident=out["id"],
                    tenant=out["tenant"],
                ) from exc
            fields = dict.fromkeys(INCIDENTS.fields)
            out["sealed"] = True
        else:
            out["sealed"] = False
        order = ("id", "tenant_id", "tenant", "severity", "kind", "version", "status")
        head = {k: out.pop(k) for k in order}
        return {
            **head,
            "summary": fields["summary"],
            "evidence": fields["evidence"],
            **out,
            "resolution": fields["resolution"],
        }

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
                "INSERT INTO incidents (tenant_id, tenant, severity, kind, version, actions, "
                "sealed, dek_version, created_at) VALUES (?, ?, ?, ?, ?, ?, x'', 0, ?)",
                (info.id, tenant, severity, kind, version, json.dumps(actions), utcnow()),
            )
            incident_id = int(cursor.lastrowid or 0)
            # sealed once its id, bound into the ciphertext, is known
            fields = {"summary": summary, "evidence": evidence, "resolution": None}
            self._seal(conn, info.id, incident_id, fields)
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

    def _seal(self, conn: Any, tenant_id: str, incident_id: int, fields: dict[str, Any]) -> None:
        sealed, dek_version = self.ws.metadata.seal(conn, INCIDENTS, tenant_id, incident_id, fields)
        conn.execute(
            "UPDATE incidents SET sealed = ?, dek_version = ? WHERE id = ?",
            (sealed, dek_version, incident_id),
        )

    def get(self, incident_id: int) -> dict[str, Any]:
        """One incident; ``MetadataSealed`` when its tenant was shredded."""
        row = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no incident {incident_id}")
        return self._row(row, strict=True)

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
        rows = self.ws.conn.execute(query + " ORDER BY id", args).fetchall()
        return [self._row(r, strict=False) for r in rows]

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
                "UPDATE incidents SET status = 'resolved', resolved_at = ? WHERE id = ?",
                (utcnow(), incident_id),
            )
            fields = {k: incident[k] for k in INCIDENTS.fields}
            self._seal(conn, incident["tenant_id"], incident_id, {**fields, "resolution": note})
            self.ws.audit.append_in(
                conn,
                "incident.resolve",
                tenant=incident["tenant"],
                obj=f"incident/{incident_id}",
                details={"note": note},
            )
        return self.get(incident_id)
