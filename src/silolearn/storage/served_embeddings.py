"""What drift monitoring keeps of a tenant's served predictions: the frozen encoder's
sentence embeddings of the texts and the predicted labels, never the texts, sealed under the
tenant's training key for a limited retention (I6).

One row per batch the monitor receives, its arrays packed as little-endian float32 and a
JSON list of labels (no pickle). Rows are purged when their retention ends (audited
``served.embeddings.purge``) and with the tenant when it is shredded; a data-key rotation
ends them too, like the kept texts of ``storage.served``.
"""

from __future__ import annotations

import json
import sqlite3
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from silolearn.storage.scope import Capability, TenantScope

KIND = "served-embeddings"
"""The kind bound into a kept batch's ciphertext."""

_HEADER = struct.Struct("<II")
"""Rows and dimensions of the packed embeddings."""


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ServedBatch:
    """Served predictions of one version: their embeddings (rows) and predicted labels."""

    version: int
    embeddings: npt.NDArray[np.float32]
    labels: list[str]
    served_at: str


def pack(embeddings: npt.ArrayLike, labels: list[str]) -> bytes:
    rows = np.ascontiguousarray(np.asarray(embeddings, dtype="<f4"))
    if rows.ndim != 2 or rows.shape[0] != len(labels):
        raise ValueError("one embedding row per predicted label")
    return _HEADER.pack(*rows.shape) + rows.tobytes() + json.dumps(labels).encode()


def unpack(data: bytes) -> tuple[npt.NDArray[np.float32], list[str]]:
    n, dim = _HEADER.unpack_from(data)
    end = _HEADER.size + 4 * n * dim
    rows = np.frombuffer(data[_HEADER.size : end], dtype="<f4").reshape(n, dim)
    labels = [str(label) for label in json.loads(data[end:])]
    return rows.astype(np.float32), labels


class ServedEmbeddings:
    """One tenant's kept embeddings and predicted labels, reached through its scope: a
    serving scope keeps and purges them, any scope that reads the tenant's training data
    reads them back for drift tests."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    def keep(self, batch: ServedBatch, *, now: datetime, retention: timedelta) -> None:
        """Seal and store ``batch`` until ``now + retention`` (nothing when that is zero)."""
        scope = self._scope
        scope.require(Capability.SERVED_KEEP, what="served embeddings keep")
        if not batch.labels or retention <= timedelta(0):
            return
        key = scope.sealing_key(eval_data=False)
        with scope.write() as conn:
            cursor = conn.execute(
                "INSERT INTO served_embeddings (tenant_id, version, count, dek_version, box, "
                "served_at, expires_at) VALUES (?, ?, ?, ?, x'', ?, ?)",
                (
                    scope.tenant.id,
                    batch.version,
                    len(batch.labels),
                    key.version,
                    batch.served_at,
                    _stamp(now + retention),
                ),
            )
            row_id = int(cursor.lastrowid or 0)
            box = key.seal(
                pack(batch.embeddings, batch.labels), kind=KIND, object_id=f"batch/{row_id}"
            )
            conn.execute("UPDATE served_embeddings SET box = ? WHERE id = ?", (box, row_id))

    def read(self, version: int, *, now: datetime, since: str | None = None) -> list[ServedBatch]:
        """The kept batches of ``version`` served after ``since`` (all when None), oldest
        first; batches past their retention or sealed under a rotated key are left out."""
        scope = self._scope
        scope.require(Capability.TRAIN_READ, what="served embeddings read")
        key = scope.sealing_key(eval_data=False)
        rows = scope.connection.execute(
            "SELECT id, box, served_at FROM served_embeddings WHERE tenant_id = ? "
            "AND version = ? AND dek_version = ? AND served_at > ? AND expires_at > ? "
            "ORDER BY served_at, id",
            (scope.tenant.id, version, key.version, since or "", _stamp(now)),
        ).fetchall()
        batches = []
        for row_id, box, served_at in rows:
            embeddings, labels = unpack(
                key.open(bytes(box), kind=KIND, object_id=f"batch/{row_id}")
            )
            batches.append(ServedBatch(version, embeddings, labels, str(served_at)))
        if batches:
            scope.audit(
                "data.read",
                obj=f"served-embeddings:v{version}",
                details={
                    "batches": len(batches),
                    "predictions": sum(len(b.labels) for b in batches),
                },
            )
        return batches

    def purge_expired(self, *, now: datetime) -> int:
        """Delete the kept batches whose retention has ended; audited with the count."""
        scope = self._scope
        scope.require(Capability.SERVED_KEEP, what="served embeddings purge")
        with scope.write() as conn:
            deleted = conn.execute(
                "DELETE FROM served_embeddings WHERE tenant_id = ? AND expires_at <= ?",
                (scope.tenant.id, _stamp(now)),
            ).rowcount
            if deleted:
                scope.audit_in(conn, "served.embeddings.purge", details={"deleted": deleted})
        return int(deleted)


def tenants_with_expired_embeddings(conn: sqlite3.Connection, *, now: datetime) -> list[str]:
    """Ids of the tenants that keep served embeddings past their retention."""
    rows = conn.execute(
        "SELECT DISTINCT tenant_id FROM served_embeddings WHERE expires_at <= ?", (_stamp(now),)
    ).fetchall()
    return [str(r[0]) for r in rows]
