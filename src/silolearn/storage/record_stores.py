"""A tenant's record stores: training records (appended by the gateway, read for training,
near-copies of eval records quarantined) and eval records (append-only, sealed under the
evaluation key, holding the regular eval set and the golden suite). Every read is audited (I7).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import AccessDenied, IntegrityError, InvalidInput
from silolearn.records import LabelOrigin, Record
from silolearn.security.envelope import DataKey
from silolearn.storage.capabilities import Capability

if TYPE_CHECKING:
    from silolearn.storage.scope import TenantScope

GOLDEN = "golden"
"""The eval suite of a tenant's golden examples: must-pass records kept in the eval store
(sealed, append-only, out of training's reach, indexed for contamination) but apart from the
regular eval set, so they never count in quality metrics or training cutoffs."""
EVAL_SUITES = frozenset({GOLDEN})
"""The named suites an eval record may belong to; ``None`` is the regular eval set."""


def check_suite(suite: str | None) -> None:
    """Refuse an eval suite name that is not known (``None``, the regular set, is fine)."""
    if suite is not None and suite not in EVAL_SUITES:
        raise InvalidInput(
            f"unknown eval suite {suite!r}: expected one of {', '.join(sorted(EVAL_SUITES))}",
            suite=suite,
        )


def select_in(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], values: Iterable[Any]
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (whose ``{marks}`` is the ``IN`` list) for ``values``, 500 at a time
    (SQLite's limit on bound parameters); ``args`` are bound before them."""
    items = list(values)
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), (*args, *chunk))


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as kept in a store: its sequence, time and the decrypted record."""

    seq: int
    record: Record
    origin: LabelOrigin | None = None
    """Where a training record's label came from (``None`` for an eval record)."""


ORIGIN_KIND = "origin"
"""The kind bound into a training record's sealed label provenance."""


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A validated, minimised record with its keyed hashes, ready to be sealed and stored."""

    record: Record
    rid: bytes
    digest: bytes
    fingerprint: bytes
    plaintext: bytes
    """The canonical JSON of the record, as sealed."""


class _RecordStore:
    kind: str
    table: str
    append_capability: Capability
    read_capability: Capability
    eval_data: bool
    """Whether the store's records are sealed under the evaluation key."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    @property
    def _key(self) -> DataKey:
        return self._scope.sealing_key(eval_data=self.eval_data)

    def _require_any(self, what: str) -> None:
        if not {self.append_capability, self.read_capability} & self._scope.capabilities:
            raise AccessDenied(f"{self._scope!r} has no access to the {self.kind} store ({what})")

    def count(self) -> int:
        self._require_any("count")
        row = self._scope.connection.execute(
            f"SELECT COUNT(*) FROM {self.table} WHERE tenant_id = ?{self._active_clause()}",
            (self._scope.tenant.id,),
        ).fetchone()
        return int(row[0])

    def latest_timestamp(self) -> str | None:
        """The newest record time in the store (metadata: the store is not decrypted)."""
        self._scope.require(self.read_capability, what=f"{self.kind} store latest timestamp")
        row = self._scope.connection.execute(
            f"SELECT MAX(ts) FROM {self.table} WHERE tenant_id = ?{self._active_clause()}",
            (self._scope.tenant.id,),
        ).fetchone()
        return None if row[0] is None else str(row[0])

    def _active_clause(self) -> str:
        """The rows that reads, counts and the latest timestamp see."""
        return ""

    def _lookup_clause(self) -> str:
        """The rows that duplicate lookups by fingerprint see."""
        return self._active_clause()

    def existing(self, rids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Which of these record-id hashes are stored here, with their content digests."""
        self._require_any("lookup")
        rows = select_in(
            self._scope.connection,
            f"SELECT rid, digest FROM {self.table} WHERE tenant_id = ? AND rid IN ({{marks}})",
            (self._scope.tenant.id,),
            rids,
        )
        return {bytes(rid): bytes(digest) for rid, digest in rows}

    def fingerprints_present(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        self._require_any("lookup")
        rows = select_in(
            self._scope.connection,
            f"SELECT fingerprint FROM {self.table} WHERE tenant_id = ? "
            f"AND fingerprint IN ({{marks}}){self._lookup_clause()}",
            (self._scope.tenant.id,),
            fingerprints,
        )
        return {bytes(fp) for (fp,) in rows}

    def require_append(self) -> None:
        self._scope.require(self.append_capability, what=f"{self.kind} store append")

    def append_in(self, conn: sqlite3.Connection, prepared: list[PreparedRecord]) -> None:
        """Seal and insert inside the caller's guarded write transaction.

        The caller checks ``require_append()`` before opening the transaction, so that a
        refusal is audited in a transaction of its own.
        """
        self._insert_in(conn, prepared, {})

    def _insert_in(
        self,
        conn: sqlite3.Connection,
        prepared: list[PreparedRecord],
        extra: dict[str, Any],
        origin: LabelOrigin | None = None,
    ) -> None:
        """Seal and insert, with ``extra`` column values (same for every row) and, for
        training records, the labels' ``origin`` sealed per row."""
        scope = self._scope
        if self.append_capability not in scope.capabilities:
            raise AccessDenied(f"{scope!r} may not append to the {self.kind} store")
        key = self._key
        now = utcnow()
        columns = "".join(f", {column}" for column in extra)
        marks = ", ?" * len(extra)
        if origin is not None:
            columns, marks = columns + ", origin", marks + ", ?"
        conn.executemany(
            f"INSERT INTO {self.table} (tenant_id, rid, ts, digest, fingerprint, dek_version, "
            f"box, created_at{columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?{marks})",
            [
                (
                    scope.tenant.id,
                    p.rid,
                    p.record.timestamp,
                    p.digest,
                    p.fingerprint,
                    key.version,
                    key.seal(p.plaintext, kind=self.kind, object_id=p.rid.hex()),
                    now,
                    *extra.values(),
                    *(
                        ()
                        if origin is None
                        else (
                            key.seal(
                                origin.to_json().encode(),
                                kind=ORIGIN_KIND,
                                object_id=p.rid.hex(),
                            ),
                        )
                    ),
                )
                for p in prepared
            ],
        )

    def append(self, records: Iterable[Record]) -> int:
        """Store records directly (no gateway routing or minimisation); returns how many."""
        self.require_append()
        prepared = [self._scope.prepare(r) for r in records]
        with self._scope.write() as conn:
            self.append_in(conn, prepared)
            self._scope.audit_in(conn, f"{self.kind}.append", details={"records": len(prepared)})
        return len(prepared)

    def _read(
        self,
        *,
        until: str | None,
        limit: int | None,
        suite: str | None = None,
        stored_order: bool = False,
        status: str | None = None,
        after_seq: int | None = None,
    ) -> list[StoredRecord]:
        """The store's active records in time order (``stored_order``: in the order they
        were stored) or, with ``suite``, the records of that eval suite, or with ``status``,
        the train records of that status, in insertion order."""
        scope = self._scope
        params: list[Any] = [scope.tenant.id]
        if status is not None:
            where, order = " AND status = ?", "seq"
            params.append(status)
        elif suite is None:
            where, order = self._active_clause(), "seq" if stored_order else "ts, seq"
        else:
            where, order = " AND suite = ?", "seq"
            params.append(suite)
        origin_column = "origin" if self.table == "train_records" else "NULL"
        query = (
            f"SELECT seq, rid, dek_version, box, {origin_column} FROM {self.table} "
            f"WHERE tenant_id = ?{where}"
        )
        if until is not None:
            query += " AND ts <= ?"
            params.append(until)
        if after_seq is not None:
            query += " AND seq > ?"
            params.append(after_seq)
        query += f" ORDER BY {order}"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        key = self._key
        out: list[StoredRecord] = []
        for seq, rid, dek_version, box, sealed_origin in scope.connection.execute(query, params):
            if dek_version != key.version:
                raise IntegrityError(
                    f"{self.kind} record sealed under data key v{dek_version}, scope holds "
                    f"v{key.version}: reopen the scope",
                )
            object_id = bytes(rid).hex()
            plain = key.open(bytes(box), kind=self.kind, object_id=object_id)
            origin: LabelOrigin | None = None
            if not self.eval_data:
                origin = (
                    LabelOrigin()
                    if sealed_origin is None
                    else LabelOrigin.from_json(
                        key.open(bytes(sealed_origin), kind=ORIGIN_KIND, object_id=object_id)
                    )
                )
            out.append(StoredRecord(int(seq), Record.model_validate(json.loads(plain)), origin))
        details: dict[str, Any] = {
            "records": len(out),
            "until": until,
            "purpose": scope.purpose.value,
        }
        if after_seq is not None:
            details["after_seq"] = after_seq
        if suite is not None:
            details["suite"] = suite
        if status is not None:
            details["status"] = status
        scope.audit("data.read", obj=f"{self.kind}_store", details=details)
        return out


class TrainStore(_RecordStore):
    """The tenant's training records: append (gateway) and time-ordered reads."""

    kind = "train"
    table = "train_records"
    append_capability = Capability.TRAIN_APPEND
    read_capability = Capability.TRAIN_READ
    eval_data = False

    def _active_clause(self) -> str:
        # records quarantined as near-copies of eval records are never read for training
        return " AND status = 'active'"

    def append_in(
        self,
        conn: sqlite3.Connection,
        prepared: list[PreparedRecord],
        *,
        origin: LabelOrigin | None = None,
    ) -> None:
        """Seal and insert inside the caller's guarded write transaction, each record with
        its labels' ``origin`` sealed beside it (``None``: ``bulk``)."""
        self._insert_in(conn, prepared, {}, origin or LabelOrigin())

    def read(
        self, *, until: str | None = None, limit: int | None = None, after_seq: int | None = None
    ) -> list[StoredRecord]:
        """Active training records in time order, optionally up to a cutoff timestamp or
        only those stored after a sequence number."""
        self._scope.require(Capability.TRAIN_READ, what="train store read")
        return self._read(until=until, limit=limit, after_seq=after_seq)

    def quarantined(self) -> list[StoredRecord]:
        """Training records moved out of training as copies of eval records, in stored
        order: for per-label accounting (training itself never reads them)."""
        self._scope.require(Capability.TRAIN_READ, what="train store quarantine read")
        return self._read(until=None, limit=None, status="quarantined")

    def quarantine_in(self, conn: sqlite3.Connection, seqs: list[int]) -> list[int]:
        """Move these train records of this tenant out of training (near-copies of eval
        records); returns those that were active."""
        if Capability.CONTAMINATION_INDEX not in self._scope.capabilities:
            raise AccessDenied(f"{self._scope!r} may not quarantine training records")
        rows = select_in(
            conn,
            "SELECT seq FROM train_records WHERE tenant_id = ? AND status = 'active' "
            "AND seq IN ({marks})",
            (self._scope.tenant.id,),
            seqs,
        )
        moved = [int(seq) for (seq,) in rows]
        conn.executemany(
            "UPDATE train_records SET status = 'quarantined' WHERE seq = ?", [(s,) for s in moved]
        )
        return sorted(moved)

    def quarantined_count(self) -> int:
        row = self._scope.connection.execute(
            "SELECT COUNT(*) FROM train_records WHERE tenant_id = ? AND status = 'quarantined'",
            (self._scope.tenant.id,),
        ).fetchone()
        return int(row[0])


class EvalStore(_RecordStore):
    """The tenant's evaluation records: append-only; reading needs an evaluation scope.

    The store holds the regular eval set and the tenant's golden suite (``suite =
    'golden'``). ``read``, ``count`` and ``latest_timestamp`` see the regular eval set only,
    so golden examples never count in quality metrics or training cutoffs; ``golden()``
    reads the golden suite. Id lookups (``existing``) and the contamination index cover
    both: golden records are eval data in every respect but that one.
    """

    kind = "eval"
    table = "eval_records"
    append_capability = Capability.EVAL_APPEND
    read_capability = Capability.EVAL_READ
    eval_data = True

    def _active_clause(self) -> str:
        return " AND suite IS NULL"

    def _lookup_clause(self) -> str:
        return ""

    def count(self) -> int:
        """How many records the regular eval set holds (golden records not included)."""
        return super().count()

    def latest_timestamp(self) -> str | None:
        """The newest record time of the regular eval set only: it decides training
        cutoffs, which golden examples (registered whenever) must not move."""
        return super().latest_timestamp()

    def read(self, *, until: str | None = None, limit: int | None = None) -> list[StoredRecord]:
        """Regular eval records (never golden ones) in time order, optionally up to a
        cutoff timestamp."""
        self._scope.require(Capability.EVAL_READ, what="eval store read")
        return self._read(until=until, limit=limit)

    def first(self, limit: int) -> list[StoredRecord]:
        """The first ``limit`` regular eval records in the order they were stored: the
        store is append-only, so this prefix never changes, whatever timestamps later
        records carry (the tenant's divergence probe set)."""
        self._scope.require(Capability.EVAL_READ, what="eval store read")
        return self._read(until=None, limit=limit, stored_order=True)

    def golden(self) -> list[StoredRecord]:
        """The tenant's golden suite, in the order the examples were stored (seq order)."""
        self._scope.require(Capability.EVAL_READ, what="eval store golden suite read")
        return self._read(until=None, limit=None, suite=GOLDEN)

    def append_in(
        self,
        conn: sqlite3.Connection,
        prepared: list[PreparedRecord],
        *,
        suite: str | None = None,
    ) -> None:
        """Seal and insert inside the caller's guarded write transaction; ``suite="golden"``
        stores the records in the golden suite instead of the regular eval set."""
        check_suite(suite)
        self._insert_in(conn, prepared, {} if suite is None else {"suite": suite})

    def in_suite(self, rids: Iterable[bytes], suite: str) -> set[bytes]:
        """Which of these record-id hashes are stored in this eval suite (metadata only)."""
        self._require_any("lookup")
        check_suite(suite)
        rows = select_in(
            self._scope.connection,
            "SELECT rid FROM eval_records WHERE tenant_id = ? AND suite = ? AND rid IN ({marks})",
            (self._scope.tenant.id, suite),
            rids,
        )
        return {bytes(rid) for (rid,) in rows}
