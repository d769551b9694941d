"""Signals: what a monitor found about a tenant, kept per tenant for whoever acts on it.

A monitor (drift of what a tenant serves, performance from feedback, their slices) records
a ``Signal`` each time it decides: the statistic it computed, the threshold calibrated for
it, and whether the change is confirmed. The scheduler reads confirmed signals as triggers
(``Signals.since``), the CLI and API show them. The kind, version, time, statistic,
threshold and confirmation stay in clear so the scheduler finds triggers by query; the
evidence, which can name labels and slice values, is sealed under the tenant's metadata key
(``storage.metadata``). A confirmed signal is audited ``monitor.signal``. Signals are
deleted with their tenant when it is shredded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from silolearn.errors import InvalidInput
from silolearn.storage.metadata import SIGNALS

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

KINDS = frozenset(
    {
        "drift.embedding",
        "drift.prediction",
        "drift.label",
        "performance",
        "performance.estimate",
        "slice.drift",
        "slice.performance",
    }
)
"""What a signal is about; a slice's field and value are in its evidence."""

_COLUMNS = "id, kind, version, at, statistic, threshold, confirmed, sealed, dek_version"


def stamp(moment: datetime) -> str:
    """The stored form of a moment: UTC ISO 8601 with microseconds and ``Z`` (sorts as
    text in time order)."""
    if moment.tzinfo is None:
        raise InvalidInput("a signal's time is timezone-aware (take it from silolearn.clock)")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Signal:
    """One monitor's decision about one tenant's version at one moment."""

    tenant: str
    kind: str
    version: int | None
    at: datetime
    statistic: float
    threshold: float
    confirmed: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    """Set once recorded."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "kind": self.kind,
            "version": self.version,
            "at": stamp(self.at),
            "statistic": self.statistic,
            "threshold": self.threshold,
            "confirmed": self.confirmed,
            "evidence": self.evidence,
        }


class Signals:
    """The signals of every tenant of one opened workspace (the coordinator's: it holds the
    metadata keys)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def record(self, signal: Signal) -> Signal:
        """Store ``signal`` (its evidence sealed) and return it with its id; a confirmed one
        is audited with its kind, version, statistic and threshold."""
        if signal.kind not in KINDS:
            raise InvalidInput(
                f"unknown signal kind {signal.kind!r}: expected one of {', '.join(sorted(KINDS))}"
            )
        if not (math.isfinite(signal.statistic) and math.isfinite(signal.threshold)):
            raise InvalidInput("a signal's statistic and threshold are finite numbers")
        at = stamp(signal.at)
        info = self.ws.tenants.get(signal.tenant)
        with self.ws.audit.write() as conn:
            cursor = conn.execute(
                "INSERT INTO signals (tenant_id, kind, version, at, statistic, threshold, "
                "confirmed, sealed, dek_version) VALUES (?, ?, ?, ?, ?, ?, ?, x'', 0)",
                (
                    info.id,
                    signal.kind,
                    signal.version,
                    at,
                    float(signal.statistic),
                    float(signal.threshold),
                    int(signal.confirmed),
                ),
            )
            signal_id = int(cursor.lastrowid or 0)
            # sealed once its id, bound into the ciphertext, is known
            sealed, dek_version = self.ws.metadata.seal(
                conn, SIGNALS, info.id, signal_id, {"evidence": signal.evidence}
            )
            conn.execute(
                "UPDATE signals SET sealed = ?, dek_version = ? WHERE id = ?",
                (sealed, dek_version, signal_id),
            )
            if signal.confirmed:
                self.ws.audit.append_in(
                    conn,
                    "monitor.signal",
                    tenant=signal.tenant,
                    obj=f"signal/{signal_id}",
                    details={
                        "kind": signal.kind,
                        "version": signal.version,
                        "statistic": float(signal.statistic),
                        "threshold": float(signal.threshold),
                        "evidence": signal.evidence,
                    },
                )
        return replace(signal, id=signal_id)

    def since(
        self,
        tenant: str,
        moment: datetime,
        *,
        confirmed: bool = True,
        kinds: frozenset[str] | None = None,
        newest: int | None = None,
    ) -> list[Signal]:
        """The tenant's signals strictly after ``moment``, oldest first: only confirmed ones
        when ``confirmed`` (the default), all of them otherwise; only ``kinds`` when given;
        only the ``newest`` ones when given (read and opened alone, however many there are)."""
        info = self.ws.tenants.get(tenant)
        query = f"SELECT {_COLUMNS} FROM signals WHERE tenant_id = ? AND at > ?"
        args: list[Any] = [info.id, stamp(moment)]
        if confirmed:
            query += " AND confirmed = 1"
        if kinds is not None:
            query += f" AND kind IN ({','.join('?' * len(kinds))})"
            args.extend(sorted(kinds))
        if newest is None:
            rows = self.ws.conn.execute(query + " ORDER BY at, id", args).fetchall()
        else:
            query += " ORDER BY at DESC, id DESC LIMIT ?"
            rows = self.ws.conn.execute(query, [*args, newest]).fetchall()[::-1]
        return [self._signal(tenant, info.id, row) for row in rows]

    def latest(self, tenant: str, kind: str) -> Signal | None:
        """The tenant's most recent signal of ``kind``, confirmed or not."""
        info = self.ws.tenants.get(tenant)
        row = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM signals WHERE tenant_id = ? AND kind = ? "
            "ORDER BY at DESC, id DESC LIMIT 1",
            (info.id, kind),
        ).fetchone()
        return None if row is None else self._signal(tenant, info.id, row)

    def _signal(self, tenant: str, tenant_id: str, row: tuple[Any, ...]) -> Signal:
        signal_id, kind, version, at, statistic, threshold, confirmed, sealed, dek = row
        fields = self.ws.metadata.open(SIGNALS, tenant_id, signal_id, sealed, dek)
        return Signal(
            tenant=tenant,
            kind=str(kind),
            version=None if version is None else int(version),
            at=datetime.fromisoformat(str(at).replace("Z", "+00:00")),
            statistic=float(statistic),
            threshold=float(threshold),
            confirmed=bool(confirmed),
            evidence=dict(fields["evidence"]),
            id=int(signal_id),
        )
