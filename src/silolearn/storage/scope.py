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

import hashlib
import hmac
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silolearn.audit.log import AuditLog
from silolearn.errors import AccessDenied, ConflictError, IntegrityError, TenantQuarantined
from silolearn.records import Record
from silolearn.security.envelope import DataKey
from silolearn.storage.blobs import EVAL_BLOB_PREFIX, BlobInfo, BlobStore
from silolearn.storage.capabilities import ALLOWED_WHEN_QUARANTINED, Capability, Purpose
from silolearn.storage.metadata import MetadataKeys, SealedTable
from silolearn.storage.record_stores import (
    EVAL_SUITES,
    GOLDEN,
    ORIGIN_KIND,
    EvalStore,
    PreparedRecord,
    StoredRecord,
    TrainStore,
    check_suite,
    select_in,
)
from silolearn.text import content_form

__all__ = [
    "EVAL_BLOB_PREFIX",
    "EVAL_SUITES",
    "GOLDEN",
    "ORIGIN_KIND",
    "BlobInfo",
    "BlobStore",
    "Capability",
    "EvalStore",
    "PreparedRecord",
    "Purpose",
    "StoredRecord",
    "TenantRef",
    "TenantScope",
    "TrainStore",
    "check_suite",
]


@dataclass(frozen=True, slots=True)
class TenantRef:
    """Who a scope belongs to: the opaque id (bound into ciphertexts) and the name."""

    id: str
    name: str


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

    @property
    def blob_dir(self) -> Path:
        """Where this workspace keeps encrypted blob files (the blob store's directory)."""
        return self._blob_dir

    def sealing_key(self, *, eval_data: bool) -> DataKey:
        """The key that seals this tenant's eval material (``eval_data``) or the rest; a
        scope never given the evaluation key refuses the former. For this package's stores
        only, which check the scope's capabilities before they ask: code outside
        ``storage`` goes through the stores."""
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
        return self.sealing_key(eval_data=True)

    def seqs_of(self, conn: sqlite3.Connection, table: str, rids: list[bytes]) -> dict[bytes, int]:
        """Sequence numbers of this tenant's stored records, by record-id hash."""
        if table not in ("train_records", "eval_records"):
            raise ValueError(table)
        rows = select_in(
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
            if self._scope.purpose in ALLOWED_WHEN_QUARANTINED
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
