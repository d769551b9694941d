"""The contamination check between a tenant's training and evaluation data (invariant I5).

The gateway calls a ``ContaminationCheck`` for every training-bound record before it is
stored, and again when evaluation records arrive, so that the check holds in either order
of arrival. ``ExactContamination`` matches the keyed fingerprint of the normalised text
(case, punctuation and whitespace folded): exact copies, in both directions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Protocol

from silolearn.storage.scope import PreparedRecord, TenantScope


@dataclass(frozen=True, slots=True)
class Match:
    """A training-bound record found to copy an evaluation record."""

    record_id: str
    eval_seq: int
    similarity: float
    method: str


class ContaminationCheck(Protocol):
    def check_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[Match | None]:
        """For each training-bound record, the eval record it copies, or None."""
        ...

    def on_eval_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[int]:
        """Move stored training records that copy these eval records out of training;
        returns their sequence numbers."""
        ...


class ExactContamination:
    """Exact copies after normalisation, by keyed fingerprint; no text is compared in clear."""

    def check_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[Match | None]:
        fingerprints = list({p.fingerprint for p in batch})
        eval_seq: dict[bytes, int] = {}
        for start in range(0, len(fingerprints), 500):
            chunk = fingerprints[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for fp, seq in conn.execute(
                f"SELECT fingerprint, MIN(seq) FROM eval_records WHERE tenant_id = ? "
                f"AND fingerprint IN ({marks}) GROUP BY fingerprint",
                (scope.tenant.id, *chunk),
            ):
                eval_seq[bytes(fp)] = int(seq)
        return [
            Match(p.record.id, eval_seq[p.fingerprint], 1.0, "exact")
            if p.fingerprint in eval_seq
            else None
            for p in batch
        ]

    def on_eval_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[int]:
        return scope.train.quarantine_in(conn, {p.fingerprint for p in batch})
