"""TenantScope: the only way to reach one tenant's data (invariant I1).

A scope is obtained from the workspace for one tenant and one purpose. It holds that
tenant's unwrapped keys for its purpose and nothing else; every store it hands out reads
and writes only rows of that tenant, and seals every object bound to the tenant id, the
store and the object id: eval records, golden suites, ``eval/...`` blobs and the
contamination index under the tenant's evaluation key, everything else under its training
key.

What a scope may do is fixed by its purpose (I5): a training scope can read the train store
but has no way to read the eval store, by capability and by cryptography: it is never given
the evaluation key. Every read of tenant data and every refused attempt is audited (I7).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silolearn.audit.log import AuditLog, utcnow
from silolearn.errors import (
    AccessDenied,
    ConflictError,
    IntegrityError,
    InvalidInput,
    NotFoundError,
    TenantQuarantined,
)
from silolearn.locks import replace_durably
from silolearn.records import LabelOrigin, Record
from silolearn.security.envelope import DataKey
from silolearn.storage.metadata import MetadataKeys, SealedTable
from silolearn.text import content_form


class Capability(enum.StrEnum):
    TRAIN_READ = "train:read"
    TRAIN_APPEND = "train:append"
    EVAL_APPEND = "eval:append"
    EVAL_READ = "eval:read"
    BLOB_READ = "blob:read"
    BLOB_WRITE = "blob:write"
    CONTAMINATION_INDEX = "contamination:index"
    SERVED_KEEP = "served:keep"
    """Keep a served prediction's text, sealed, for its retention (``storage.served``)."""
    SERVED_READ = "served:read"
    """Read a kept prediction's text back, to store the feedback that names it."""
    EVAL_BLOBS = "eval:blobs"
    """Read and write blobs named ``eval/...`` (the evaluator's embedding cache): eval data,
    so no training scope holds it, even though training may read the tenant's other blobs."""
    """Read and extend the contamination index, which is derived from eval data too."""


class Purpose(enum.StrEnum):
    INGEST = "ingest"
    TRAINING = "training"
    EVALUATION = "evaluation"
    CONTAMINATION = "contamination"
    """Moves training records that copy eval data out of training; allowed even for a
    quarantined tenant, since it only ever removes data from training."""
    SERVING = "serving"
    """Reads the active adapter to answer predictions; a quarantined tenant keeps serving its
    active version (quarantine stops learning, not answering)."""
    AUDIT = "audit"
    """The gate worker: reads the training records a version learned from (the members of a
    membership-inference attack), the eval records and golden suite (non-members, quality)
    and the version's sealed canaries. It never trains a version and writes only the
    evaluator's embedding cache."""
    REGISTRY = "registry"
    """Promotes, rejects and rolls back adapter versions; rollback stays possible for a
    quarantined tenant (incident response), promotion does not."""

    @property
    def capabilities(self) -> frozenset[Capability]:
        return _PURPOSE_CAPABILITIES[self]

    @property
    def holds_eval_key(self) -> bool:
        """Whether a scope of this purpose is given the tenant's evaluation key: only those
        that touch eval data or what is derived from it (never training, I5)."""
        return bool(self.capabilities & _EVAL_CAPABILITIES)

    @property
    def writes(self) -> bool:
        return bool(
            self.capabilities
            & {Capability.TRAIN_APPEND, Capability.EVAL_APPEND, Capability.BLOB_WRITE}
        )


_PURPOSE_CAPABILITIES: dict[Purpose, frozenset[Capability]] = {
    Purpose.INGEST: frozenset(
        {
            Capability.TRAIN_READ,
            Capability.TRAIN_APPEND,
            Capability.EVAL_APPEND,
            Capability.BLOB_READ,
            Capability.BLOB_WRITE,
            Capability.CONTAMINATION_INDEX,
            Capability.SERVED_READ,
        }
    ),
    # training code is never given eval access, not even to append (I5)
    Purpose.TRAINING: frozenset(
        {Capability.TRAIN_READ, Capability.BLOB_READ, Capability.BLOB_WRITE}
    ),
    Purpose.EVALUATION: frozenset(
        {Capability.EVAL_READ, Capability.BLOB_READ, Capability.EVAL_BLOBS}
    ),
    Purpose.AUDIT: frozenset(
        {Capability.TRAIN_READ, Capability.EVAL_READ, Capability.BLOB_READ, Capability.EVAL_BLOBS}
    ),
    Purpose.CONTAMINATION: frozenset({Capability.CONTAMINATION_INDEX}),
    Purpose.SERVING: frozenset({Capability.BLOB_READ, Capability.SERVED_KEEP}),
    Purpose.REGISTRY: frozenset({Capability.BLOB_READ}),
}

_EVAL_CAPABILITIES = frozenset(
    {
        Capability.EVAL_APPEND,
        Capability.EVAL_READ,
        Capability.EVAL_BLOBS,
        Capability.CONTAMINATION_INDEX,
    }
)
_ALLOWED_WHEN_QUARANTINED = frozenset(
    {Purpose.CONTAMINATION, Purpose.REGISTRY, Purpose.AUDIT, Purpose.SERVING}
)
EVAL_BLOB_PREFIX = "eval/"

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


def _select_in(
    conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], values: Iterable[Any]
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (whose ``{marks}`` is the ``IN`` list) for ``values``, 500 at a time
    (SQLite's limit on bound parameters); ``args`` are bound before them."""
    items = list(values)
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), (*args, *chunk))


@dataclass(frozen=True, slots=True)
class TenantRef:
    """Who a scope belongs to: the opaque id (bound into ciphertexts) and the name."""

    id: str
    name: str


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


class TenantScope:
    """One tenant's data, for one purpose. Obtain it from ``Workspace.scope``.

    ``data_key`` is the tenant's training key; ``eval_key`` its evaluation key, which only
    a purpose that ``holds_eval_key`` may be given (a scope without it cannot open eval
    material even where its capabilities would allow). ``metadata`` seals and opens the
    tenant's metadata rows (its versions' lineage and metrics): the coordinator's scopes
    have it, a worker's never."""

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        audit: AuditLog,
        tenant: TenantRef,
        data_key: DataKey,
        token_key: bytes,
        blob_dir: Path,
        purpose: Purpose,
        eval_key: DataKey | None = None,
        metadata: MetadataKeys | None = None,
    ) -> None:
        if data_key.tenant_id != tenant.id:
            raise IntegrityError("a scope holds only its own tenant's data key")
        if eval_key is not None:
            if not purpose.holds_eval_key:
                raise IntegrityError(f"a {purpose.value} scope never holds the evaluation key")
            if eval_key.tenant_id != tenant.id or eval_key.version != data_key.version:
                raise IntegrityError("a scope holds only its own tenant's current keys")
        self._conn = conn
        self._audit = audit
        self.tenant = tenant
        self._key = data_key
        self._eval_key = eval_key
        self._metadata = metadata
        self._token_key = token_key
        self._blob_dir = blob_dir
        self.purpose = purpose
        self.capabilities = purpose.capabilities
        self.train = TrainStore(self)
        self.eval = EvalStore(self)
        self.blobs = BlobStore(self)

    def __repr__(self) -> str:
        return f"TenantScope(tenant={self.tenant.name!r}, purpose={self.purpose.value!r})"

    # -- helpers shared by the stores -------------------------------------------------------

    def require(self, capability: Capability, *, what: str) -> None:
        if capability in self.capabilities:
            return
        self._audit.append(
            "access.denied",
            tenant=self.tenant.name,
            obj=what,
            details={"capability": capability.value, "purpose": self.purpose.value},
        )
        raise AccessDenied(
            f"a {self.purpose.value} scope of tenant {self.tenant.name!r} may not "
            f"{capability.value.replace(':', ' ')} ({what})",
            tenant=self.tenant.name,
            capability=capability.value,
        )

    def keyed_hash(self, label: str, value: str) -> bytes:
        return hmac.new(
            self._token_key, label.encode() + b"\x00" + value.encode(), hashlib.sha256
        ).digest()

    def record_id_hash(self, record: Record) -> bytes:
        return self.keyed_hash("rid", record.id)

    def record_digest(self, record: Record) -> bytes:
        """Keyed hash of the record as it arrived (before minimisation): idempotency key."""
        return self.keyed_hash("record", record.canonical_json())

    def prepare(
        self, record: Record, *, rid: bytes | None = None, digest: bytes | None = None
    ) -> PreparedRecord:
        canonical = record.canonical_json()
        return PreparedRecord(
            record=record,
            rid=rid if rid is not None else self.record_id_hash(record),
            digest=digest if digest is not None else self.keyed_hash("record", canonical),
            fingerprint=self.keyed_hash("text", content_form(record.text)),
            plaintext=canonical.encode(),
        )

    def write(self) -> Any:
        """A write transaction that first checks, inside it, that the tenant may be written."""
        return _GuardedWrite(self)

    def audit_in(
        self,
        conn: sqlite3.Connection,
        action: str,
        *,
        obj: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        return self._audit.append_in(
            conn, action, tenant=self.tenant.name, obj=obj, details=details
        )

    def audit(
        self, action: str, *, obj: str | None = None, details: dict[str, Any] | None = None
    ) -> int:
        return self._audit.append(action, tenant=self.tenant.name, obj=obj, details=details)

    @property
    def connection(self) -> sqlite3.Connection:
        """The workspace connection, for queries filtered by this scope's tenant id."""
        return self._conn

    @property
    def status(self) -> str:
        row = self._conn.execute(
            "SELECT status FROM tenants WHERE id = ?", (self.tenant.id,)
        ).fetchone()
        return "deleted" if row is None else str(row[0])

    @property
    def token_key(self) -> bytes:
        return self._token_key

    def _key_for(self, *, eval_data: bool) -> DataKey:
        """The key that seals this tenant's eval material (``eval_data``) or the rest; a
        scope never given the evaluation key refuses the former. Private: callers go
        through the stores, which check the scope's capabilities."""
        if not eval_data:
            return self._key
        if self._eval_key is None:
            self._audit.append(
                "access.denied",
                tenant=self.tenant.name,
                obj="evaluation key",
                details={"purpose": self.purpose.value, "reason": "no evaluation key"},
            )
            raise AccessDenied(
                f"{self!r} holds no evaluation key",
                tenant=self.tenant.name,
                capability="eval:key",
            )
        return self._eval_key

    def seal_metadata(
        self,
        conn: sqlite3.Connection,
        table: SealedTable,
        row_key: Any,
        fields: dict[str, Any],
    ) -> tuple[bytes, int]:
        """``(sealed, dek_version)`` of one of this tenant's metadata rows, under its
        current metadata key, inside the caller's write transaction."""
        return self._metadata_keys().seal(conn, table, self.tenant.id, row_key, fields)

    def open_metadata(
        self, table: SealedTable, row_key: Any, sealed: Any, version: int
    ) -> dict[str, Any]:
        """The fields sealed in one of this tenant's metadata rows."""
        return self._metadata_keys().open(table, self.tenant.id, row_key, sealed, version)

    def _metadata_keys(self) -> MetadataKeys:
        if self._metadata is None:
            raise AccessDenied(
                f"{self!r} holds no metadata key: only the coordinator reads and writes a "
                "tenant's metadata",
                tenant=self.tenant.name,
                capability="metadata:key",
            )
        return self._metadata

    def index_key(self) -> DataKey:
        """The evaluation key, for sealing this tenant's contamination index segments
        (derived from its eval records, and from training records only to guard them)."""
        if Capability.CONTAMINATION_INDEX not in self.capabilities:
            raise AccessDenied(f"{self!r} may not use the contamination index")
        return self._key_for(eval_data=True)

    def seqs_of(self, conn: sqlite3.Connection, table: str, rids: list[bytes]) -> dict[bytes, int]:
        """Sequence numbers of this tenant's stored records, by record-id hash."""
        if table not in ("train_records", "eval_records"):
            raise ValueError(table)
        rows = _select_in(
            conn,
            f"SELECT rid, seq FROM {table} WHERE tenant_id = ? AND rid IN ({{marks}})",
            (self.tenant.id,),
            rids,
        )
        return {bytes(rid): int(seq) for rid, seq in rows}


class _GuardedWrite:
    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope
        self._cm: Any = None

    def __enter__(self) -> sqlite3.Connection:
        self._cm = self._scope._audit.write()
        conn: sqlite3.Connection = self._cm.__enter__()
        row = conn.execute(
            "SELECT status, dek_version FROM tenants WHERE id = ?", (self._scope.tenant.id,)
        ).fetchone()
        status = None if row is None else str(row[0])
        if row is not None and int(row[1]) != self._scope._key.version:
            self._cm.__exit__(None, None, None)
            self._cm = None
            raise ConflictError(
                f"tenant {self._scope.tenant.name!r}'s data key was rotated since this scope "
                "was opened: open a new scope",
                tenant=self._scope.tenant.name,
            )
        allowed = (
            {"active", "quarantined"}
            if self._scope.purpose in _ALLOWED_WHEN_QUARANTINED
            else {"active"}
        )
        if status not in allowed:
            self._cm.__exit__(None, None, None)
            self._cm = None
            name = self._scope.tenant.name
            self._scope._audit.append(
                "access.denied",
                tenant=name,
                obj="write",
                details={"reason": status or "deleted", "purpose": self._scope.purpose.value},
            )
            if status == "quarantined":
                raise TenantQuarantined(
                    f"tenant {name!r} is quarantined: no ingestion or training until released",
                    tenant=name,
                )
            raise AccessDenied(f"tenant {name!r} is {status or 'deleted'}", tenant=name)
        return conn

    def __exit__(self, *exc: Any) -> bool | None:
        cm, self._cm = self._cm, None
        result: bool | None = cm.__exit__(*exc)
        return result


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
        return self._scope._key_for(eval_data=self.eval_data)

    def _require_any(self, what: str) -> None:
        if not {self.append_capability, self.read_capability} & self._scope.capabilities:
            raise AccessDenied(f"{self._scope!r} has no access to the {self.kind} store ({what})")

    def count(self) -> int:
        self._require_any("count")
        row = self._scope._conn.execute(
            f"SELECT COUNT(*) FROM {self.table} WHERE tenant_id = ?{self._active_clause()}",
            (self._scope.tenant.id,),
        ).fetchone()
        return int(row[0])

    def latest_timestamp(self) -> str | None:
        """The newest record time in the store (metadata: the store is not decrypted)."""
        self._scope.require(self.read_capability, what=f"{self.kind} store latest timestamp")
        row = self._scope._conn.execute(
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
        rows = _select_in(
            self._scope._conn,
            f"SELECT rid, digest FROM {self.table} WHERE tenant_id = ? AND rid IN ({{marks}})",
            (self._scope.tenant.id,),
            rids,
        )
        return {bytes(rid): bytes(digest) for rid, digest in rows}

    def fingerprints_present(self, fingerprints: Iterable[bytes]) -> set[bytes]:
        self._require_any("lookup")
        rows = _select_in(
            self._scope._conn,
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
        for seq, rid, dek_version, box, sealed_origin in scope._conn.execute(query, params):
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
        rows = _select_in(
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
        row = self._scope._conn.execute(
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
        rows = _select_in(
            self._scope._conn,
            "SELECT rid FROM eval_records WHERE tenant_id = ? AND suite = ? AND rid IN ({marks})",
            (self._scope.tenant.id, suite),
            rids,
        )
        return {bytes(rid) for (rid,) in rows}


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    object_id: str
    sha256: str
    size: int
    dek_version: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object_id": self.object_id,
            "sha256": self.sha256,
            "size": self.size,
            "dek_version": self.dek_version,
            "created_at": self.created_at,
        }


def _blob_capability(name: str, *, write: bool) -> Capability:
    if name.startswith(EVAL_BLOB_PREFIX):
        return Capability.EVAL_BLOBS
    return Capability.BLOB_WRITE if write else Capability.BLOB_READ


class BlobStore:
    """Encrypted files of one tenant (adapters, indexes, caches), addressed by name; those
    named ``eval/...`` are eval material, sealed under the evaluation key."""

    kind = "blob"

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    @property
    def directory(self) -> Path:
        return self._scope._blob_dir

    def put(self, name: str, data: bytes) -> BlobInfo:
        scope = self._scope
        scope.require(_blob_capability(name, write=True), what=f"blob {name} write")
        if not name or len(name) > 200 or "\x00" in name:
            raise ValueError("a blob name is 1-200 characters without NUL")
        key = scope._key_for(eval_data=name.startswith(EVAL_BLOB_PREFIX))
        object_id = secrets.token_hex(16)
        file_name = f"{object_id}.v{key.version}"
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / file_name
        # on disk before the row that names it commits: a crash never leaves a row whose
        # blob is empty or torn
        replace_durably(path, key.seal(data, kind=self.kind, object_id=object_id))
        info = BlobInfo(
            name=name,
            object_id=object_id,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            dek_version=key.version,
            created_at=utcnow(),
        )
        old_file: str | None = None
        try:
            with scope.write() as conn:
                row = conn.execute(
                    "SELECT file FROM blobs WHERE tenant_id = ? AND name = ?",
                    (scope.tenant.id, name),
                ).fetchone()
                old_file = None if row is None else str(row[0])
                conn.execute(
                    "INSERT OR REPLACE INTO blobs (tenant_id, name, object_id, file, sha256, "
                    "size, dek_version, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        scope.tenant.id,
                        name,
                        object_id,
                        file_name,
                        info.sha256,
                        info.size,
                        info.dek_version,
                        info.created_at,
                    ),
                )
                scope.audit_in(
                    conn, "blob.write", obj=name, details={"sha256": info.sha256, "size": info.size}
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if old_file is not None:
            (self.directory / old_file).unlink(missing_ok=True)
        return info

    def info(self, name: str) -> BlobInfo:
        row = self._scope._conn.execute(
            "SELECT name, object_id, sha256, size, dek_version, created_at FROM blobs "
            "WHERE tenant_id = ? AND name = ?",
            (self._scope.tenant.id, name),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"tenant {self._scope.tenant.name!r} has no blob {name!r}", blob=name
            )
        return BlobInfo(*row)

    def list(self) -> list[BlobInfo]:
        rows = self._scope._conn.execute(
            "SELECT name, object_id, sha256, size, dek_version, created_at FROM blobs "
            "WHERE tenant_id = ? ORDER BY name",
            (self._scope.tenant.id,),
        ).fetchall()
        return [BlobInfo(*r) for r in rows]

    def get(self, name: str) -> bytes:
        scope = self._scope
        scope.require(_blob_capability(name, write=False), what=f"blob {name} read")
        row = scope._conn.execute(
            "SELECT object_id, file, sha256 FROM blobs WHERE tenant_id = ? AND name = ?",
            (scope.tenant.id, name),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"tenant {scope.tenant.name!r} has no blob {name!r}", blob=name)
        object_id, file_name, sha = str(row[0]), str(row[1]), str(row[2])
        key = scope._key_for(eval_data=name.startswith(EVAL_BLOB_PREFIX))
        data = key.open(
            (self.directory / file_name).read_bytes(), kind=self.kind, object_id=object_id
        )
        if hashlib.sha256(data).hexdigest() != sha:
            raise IntegrityError(f"blob {name!r} does not match its recorded SHA-256", blob=name)
        scope.audit("data.read", obj=f"blob:{name}", details={"size": len(data)})
        return data

    def iter_files(self) -> Iterator[Path]:
        if self.directory.exists():
            yield from sorted(self.directory.iterdir())
