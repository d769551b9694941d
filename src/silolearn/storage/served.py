"""Served predictions kept for feedback: the text a tenant's adapter answered, sealed under
the tenant's training key, for a limited retention (I6).

Feedback names a prediction by its id instead of sending the text again; the text is read
back through the tenant's ingest scope and goes through the gateway like any record. Rows
are purged when their retention ends (audited ``served.purge``) and with the tenant when it
is shredded; a data-key rotation ends them too (they are not re-encrypted: a kept text is a
convenience for feedback, not a record).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from silolearn.audit.log import utcnow
from silolearn.errors import NotFoundError
from silolearn.storage.scope import Capability, TenantScope

KIND = "served"
"""The kind bound into a kept text's ciphertext."""


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ServedText:
    """A kept prediction: what was asked, what was answered, by which version, when."""

    prediction_id: str
    text: str
    label: str
    version: int
    served_at: str


class ServedStore:
    """One tenant's kept predictions, reached through its scope: a serving scope keeps and
    purges them, an ingest scope reads them back for feedback."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    def keep_in(
        self,
        conn: sqlite3.Connection,
        served: list[ServedText],
        *,
        retention: timedelta,
    ) -> None:
        """Seal and store ``served`` inside the caller's write transaction (the one that
        audits the prediction)."""
        scope = self._scope
        scope.require(Capability.SERVED_KEEP, what="served predictions keep")
        if not served or retention <= timedelta(0):
            return
        key = scope._key_for(eval_data=False)
        now = datetime.now(UTC)
        created, expires = _stamp(now), _stamp(now + retention)
        conn.executemany(
            "INSERT INTO served_predictions (id, tenant_id, version, dek_version, box, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    s.prediction_id,
                    scope.tenant.id,
                    s.version,
                    key.version,
                    key.seal(
                        json.dumps(
                            {"text": s.text, "label": s.label, "served_at": s.served_at}
                        ).encode(),
                        kind=KIND,
                        object_id=s.prediction_id,
                    ),
                    created,
                    expires,
                )
                for s in served
            ],
        )

    def get(self, prediction_id: str) -> ServedText:
        """A kept prediction of this tenant; ``NotFoundError`` when it is unknown, of another
        tenant, past its retention or sealed under a rotated key (the same answer for all)."""
        scope = self._scope
        scope.require(Capability.SERVED_READ, what="served predictions read")
        row = scope.connection.execute(
            "SELECT version, dek_version, box FROM served_predictions "
            "WHERE id = ? AND tenant_id = ? AND expires_at > ?",
            (prediction_id, scope.tenant.id, utcnow()),
        ).fetchone()
        key = scope._key_for(eval_data=False)
        if row is None or int(row[1]) != key.version:
            raise NotFoundError(
                f"no kept prediction {prediction_id[:64]!r} of tenant {scope.tenant.name!r}: "
                "unknown, or past its retention",
                prediction_id=prediction_id[:64],
            )
        fields = json.loads(key.open(bytes(row[2]), kind=KIND, object_id=prediction_id))
        scope.audit("data.read", obj=f"served:{prediction_id}")
        return ServedText(
            prediction_id=prediction_id,
            text=str(fields["text"]),
            label=str(fields["label"]),
            version=int(row[0]),
            served_at=str(fields["served_at"]),
        )

    def purge_expired(self) -> int:
        """Delete the kept predictions whose retention has ended; audited with the count."""
        scope = self._scope
        scope.require(Capability.SERVED_KEEP, what="served predictions purge")
        with scope.write() as conn:
            deleted = conn.execute(
                "DELETE FROM served_predictions WHERE tenant_id = ? AND expires_at <= ?",
                (scope.tenant.id, utcnow()),
            ).rowcount
            if deleted:
                scope.audit_in(conn, "served.purge", details={"deleted": deleted})
        return int(deleted)


def tenants_with_expired(conn: sqlite3.Connection) -> list[str]:
    """Ids of the tenants that have kept predictions past their retention."""
    rows = conn.execute(
        "SELECT DISTINCT tenant_id FROM served_predictions WHERE expires_at <= ?", (utcnow(),)
    ).fetchall()
    return [str(r[0]) for r in rows]
