"""Served predictions kept for feedback: the text a tenant's adapter answered, sealed under
the tenant's training key, for a limited retention (I6).

Feedback names a prediction by its id instead of sending the text again; the text is read
back through the tenant's ingest scope and goes through the gateway like any record. Rows
are purged when their retention ends (audited ``served.purge``) and with the tenant when it
is shredded; a data-key rotation ends them too (they are not re-encrypted: a kept text is a
convenience for feedback, not a record).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
    uncertainty: float | None = None
    """One minus the margin of the served probabilities (``learning.active``)."""
    embedding: NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    """The frozen encoder's sentence embedding of the text (head adapters), kept in the
    sealed box as float16 for the label queue to spread its picks."""
    queued: bool = False
    """The label queue handed it out: feedback on it is a person's answer (``active``)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    """The request's ``meta`` for this text (region, channel, product), sealed with it:
    feedback on the prediction inherits it for performance slices."""


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
        key = scope.sealing_key(eval_data=False)
        now = datetime.now(UTC)
        created, expires = _stamp(now), _stamp(now + retention)
        conn.executemany(
            "INSERT INTO served_predictions (id, tenant_id, version, dek_version, box, "
            "created_at, expires_at, uncertainty) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    s.prediction_id,
                    scope.tenant.id,
                    s.version,
                    key.version,
                    key.seal(_box(s), kind=KIND, object_id=s.prediction_id),
                    created,
                    expires,
                    s.uncertainty,
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
            f"SELECT {_COLUMNS} FROM served_predictions "
            "WHERE id = ? AND tenant_id = ? AND expires_at > ?",
            (prediction_id, scope.tenant.id, utcnow()),
        ).fetchone()
        key = scope.sealing_key(eval_data=False)
        if row is None or int(row[2]) != key.version:
            raise NotFoundError(
                f"no kept prediction {prediction_id[:64]!r} of tenant {scope.tenant.name!r}: "
                "unknown, or past its retention",
                prediction_id=prediction_id[:64],
            )
        scope.audit("data.read", obj=f"served:{prediction_id}")
        return self._open(row)

    def open_for_labelling(self, limit: int) -> list[ServedText]:
        """The ``limit`` most uncertain kept predictions no feedback has answered yet (the
        label queue's candidates), those not handed out yet first (two labellers are not
        given the same items), opened; audited ``data.read`` with their count."""
        scope = self._scope
        scope.require(Capability.SERVED_READ, what="served predictions read")
        key = scope.sealing_key(eval_data=False)
        rows = scope.connection.execute(
            f"SELECT {_COLUMNS} FROM served_predictions WHERE tenant_id = ? "
            "AND answered_at IS NULL AND expires_at > ? AND dek_version = ? "
            "ORDER BY queued_at IS NOT NULL, uncertainty IS NULL, uncertainty DESC, created_at, id "
            "LIMIT ?",
            (scope.tenant.id, utcnow(), key.version, limit),
        ).fetchall()
        scope.audit("data.read", obj="served:label-queue", details={"candidates": len(rows)})
        return [self._open(row) for row in rows]

    def mark_queued(self, prediction_ids: list[str]) -> None:
        """Record that the label queue handed these out (the first time only)."""
        self._mark("queued_at", prediction_ids, "served.queue")

    def mark_answered(self, prediction_id: str) -> None:
        """Feedback named this prediction: it leaves the label queue."""
        self._mark("answered_at", [prediction_id], None)

    def _mark(self, column: str, prediction_ids: list[str], action: str | None) -> None:
        scope = self._scope
        scope.require(Capability.SERVED_READ, what="served predictions mark")
        if not prediction_ids:
            return
        now = utcnow()
        with scope.write() as conn:
            conn.executemany(
                f"UPDATE served_predictions SET {column} = ? "
                f"WHERE id = ? AND tenant_id = ? AND {column} IS NULL",
                [(now, pid, scope.tenant.id) for pid in prediction_ids],
            )
            if action is not None:
                scope.audit_in(conn, action, details={"items": len(prediction_ids)})

    def _open(self, row: Any) -> ServedText:
        prediction_id, version, _, box, uncertainty, queued_at = row
        key = self._scope.sealing_key(eval_data=False)
        fields = json.loads(key.open(bytes(box), kind=KIND, object_id=str(prediction_id)))
        embedding = fields.get("embedding")
        return ServedText(
            prediction_id=str(prediction_id),
            text=str(fields["text"]),
            label=str(fields["label"]),
            version=int(version),
            served_at=str(fields["served_at"]),
            uncertainty=None if uncertainty is None else float(uncertainty),
            embedding=None
            if embedding is None
            else np.frombuffer(base64.b64decode(embedding), dtype=np.float16).astype(np.float32),
            queued=queued_at is not None,
            meta=dict(fields.get("meta") or {}),
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


_COLUMNS = "id, version, dek_version, box, uncertainty, queued_at"


def _box(served: ServedText) -> bytes:
    """The sealed part of a kept prediction: its text, label, time, meta and embedding."""
    fields: dict[str, object] = {
        "text": served.text,
        "label": served.label,
        "served_at": served.served_at,
    }
    if served.meta:
        fields["meta"] = served.meta
    if served.embedding is not None:
        half = np.asarray(served.embedding, dtype=np.float16).tobytes()
        fields["embedding"] = base64.b64encode(half).decode("ascii")
    return json.dumps(fields).encode()


def tenants_with_expired(conn: sqlite3.Connection) -> list[str]:
    """Ids of the tenants that have kept predictions past their retention."""
    rows = conn.execute(
        "SELECT DISTINCT tenant_id FROM served_predictions WHERE expires_at <= ?", (utcnow(),)
    ).fetchall()
    return [str(r[0]) for r in rows]
