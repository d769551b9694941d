"""Tenant metadata sealed under the tenant's metadata key (I6).

What the coordinator records about a tenant's data names its labels and gives per-class
numbers: a version's lineage, metrics and decision, a gate run's verdicts, an incident's
summary, evidence and resolution, a privacy sweep's results, a monitor's signal's evidence,
the details of the tenant's audit events. Each such row keeps in clear only the columns the
coordinator queries (status, version numbers, times, coarse flags) and seals the rest as one
JSON object in its ``sealed`` column: AES-256-GCM under the tenant's metadata key of the
row's ``dek_version``, bound to the tenant id, the kind ``metadata`` and the row
(``<table>/<key>``), so a sealed value moved to another row or tenant does not open.
docs/data-plane.md lists what stays in clear and why.

The metadata key is wrapped by the tenant's KEK like its training and evaluation keys,
created, rotated and destroyed with them: after a shred the rows that outlive the tenant
(incidents) keep their clear columns and their sealed part never opens again. A rotation
re-seals every row under the new key, but keeps the older metadata keys (wrapped, until the
shred): audit events sealed under them cannot be re-sealed, the chain covers what is stored.

A row at ``dek_version`` 0 (``UNSEALED``) holds its JSON in clear: schema 0011 moved the rows
written before sealing there, and opening the workspace seals them
(``TenantRegistry.migrate_metadata_keys``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from silolearn.audit.log import CLEAR_DETAILS, SEALED_DETAILS, canonical_details
from silolearn.audit.rows import BoundTable
from silolearn.errors import IntegrityError, KeyDestroyed, MetadataSealed
from silolearn.security.envelope import DataKey
from silolearn.security.keys import METADATA_KEY, KeyManager, WrappedKey

METADATA_KIND = "metadata"
"""The kind bound into a sealed row."""
AUDIT_KIND = "audit"
"""The kind bound into an audit event's sealed details (its object id is the event's seq)."""
UNSEALED = 0
"""The ``dek_version`` of a row whose ``sealed`` column still holds clear JSON."""


@dataclass(frozen=True, slots=True)
class SealedTable:
    """A table whose rows seal some of their fields under the tenant's metadata key."""

    name: str
    key: str
    """The column naming a row among its tenant's (bound into the ciphertext)."""
    fields: tuple[str, ...]
    """The fields of the sealed JSON object."""

    def object_id(self, key: Any) -> str:
        return f"{self.name}/{key}"


ADAPTER_VERSIONS = SealedTable("adapter_versions", "version", ("lineage", "metrics", "decision"))
GATE_RUNS = SealedTable("gate_runs", "id", ("verdicts",))
INCIDENTS = SealedTable("incidents", "id", ("summary", "evidence", "resolution"))
PRIVACY_SWEEPS = SealedTable("privacy_sweeps", "sweep_id", ("results",))
SIGNALS = SealedTable("signals", "id", ("evidence",))
SCHEDULE_POLICIES = SealedTable("schedule_policies", "tenant_id", ("policy",))
SCHEDULE_DECISIONS = SealedTable("schedule_decisions", "id", ("evidence",))
PERFORMANCE = SealedTable("performance_state", "id", ("state",))
ROLLOUTS = SealedTable("rollouts", "id", ("policy", "tallies", "evidence"))
SEALED_TABLES = (
    ADAPTER_VERSIONS,
    GATE_RUNS,
    INCIDENTS,
    PRIVACY_SWEEPS,
    SIGNALS,
    SCHEDULE_POLICIES,
    SCHEDULE_DECISIONS,
    PERFORMANCE,
    ROLLOUTS,
)

VERSIONS_TABLE = BoundTable(
    "adapter_versions",
    key=("tenant_id", "version"),
    content=(
        "status",
        "kind",
        "sha256",
        "parent",
        "sealed",
        "dek_version",
        "created_at",
        "updated_at",
        "run_id",
    ),
    released_by=("tenant.shred", "tenant_id"),
)
"""Version rows are bound to the audit chain (``audit.rows``) as stored, sealed part
included; shredding a tenant deletes its rows."""


class MetadataKeys:
    """Tenants' metadata keys, unwrapped through the key manager when used: seals and opens
    metadata rows, and is the audit log's ``DetailsSealer``. One per opened workspace.

    A key is looked up in the database on every use (an unwrapped one is reused while its
    wrapped form is unchanged): once a tenant is shredded nothing of it opens, even in the
    process that held its key a moment before."""

    def __init__(self, conn: sqlite3.Connection, keys: KeyManager) -> None:
        self._conn = conn
        self._keys = keys
        self._unwrapped: dict[tuple[str, int, str, bytes], DataKey] = {}

    # -- keys -------------------------------------------------------------------------------

    def key(
        self, tenant_id: str, version: int, *, conn: sqlite3.Connection | None = None
    ) -> DataKey:
        """The tenant's metadata key of ``version``; ``MetadataSealed`` when it is gone."""
        row = (
            (conn or self._conn)
            .execute(
                "SELECT kek_id, wrapped FROM data_keys "
                "WHERE tenant_id = ? AND purpose = ? AND version = ?",
                (tenant_id, METADATA_KEY, version),
            )
            .fetchone()
        )
        if row is None:
            raise MetadataSealed(
                f"tenant {tenant_id} has no metadata key v{version}: its metadata stays sealed "
                "(the tenant was shredded)",
                tenant_id=tenant_id,
            )
        wrapped = WrappedKey(str(row[0]), bytes(row[1]))
        cached = (tenant_id, version, wrapped.kek_id, wrapped.wrapped)
        if cached not in self._unwrapped:
            try:
                material = self._keys.unwrap(tenant_id, version, wrapped, purpose=METADATA_KEY)
            except KeyDestroyed:
                raise MetadataSealed(
                    f"tenant {tenant_id}: its key-encryption key is destroyed, its metadata "
                    "stays sealed",
                    tenant_id=tenant_id,
                ) from None
            self._unwrapped = {
                k: v for k, v in self._unwrapped.items() if k[:2] != (tenant_id, version)
            }
            self._unwrapped[cached] = DataKey(tenant_id, version, material)
        return self._unwrapped[cached]

    def current(self, tenant_id: str, *, conn: sqlite3.Connection | None = None) -> DataKey:
        """The metadata key new rows of the tenant are sealed under."""
        row = (
            (conn or self._conn)
            .execute("SELECT dek_version FROM tenants WHERE id = ?", (tenant_id,))
            .fetchone()
        )
        if row is None:
            raise MetadataSealed(
                f"tenant {tenant_id} no longer exists: its metadata stays sealed",
                tenant_id=tenant_id,
            )
        return self.key(tenant_id, int(row[0]), conn=conn)

    # -- rows -------------------------------------------------------------------------------

    def seal(
        self,
        conn: sqlite3.Connection,
        table: SealedTable,
        tenant_id: str,
        row_key: Any,
        fields: dict[str, Any],
    ) -> tuple[bytes, int]:
        """``(sealed, dek_version)`` for a row of ``table``, inside the caller's transaction."""
        key = self.current(tenant_id, conn=conn)
        return seal_fields(key, table, row_key, fields), key.version

    def open(
        self,
        table: SealedTable,
        tenant_id: str,
        row_key: Any,
        sealed: Any,
        version: int,
        *,
        conn: sqlite3.Connection | None = None,
    ) -> dict[str, Any]:
        """The fields sealed in a row (clear JSON at ``UNSEALED``)."""
        if int(version) == UNSEALED:
            fields: dict[str, Any] = json.loads(sealed)
            return fields
        key = self.key(tenant_id, int(version), conn=conn)
        plain = key.open(bytes(sealed), kind=METADATA_KIND, object_id=table.object_id(row_key))
        opened: dict[str, Any] = json.loads(plain)
        return opened

    def reseal(self, conn: sqlite3.Connection, tenant_id: str, new: DataKey) -> dict[str, int]:
        """Re-seal every metadata row of the tenant under ``new`` (a rotation, or the first
        sealing of rows left in clear), inside the caller's transaction; rows per table."""
        counts: dict[str, int] = {}
        for table in SEALED_TABLES:
            rows = conn.execute(
                f"SELECT {table.key}, sealed, dek_version FROM {table.name} WHERE tenant_id = ?",
                (tenant_id,),
            ).fetchall()
            updates = [
                (
                    seal_fields(
                        new,
                        table,
                        row_key,
                        self.open(table, tenant_id, row_key, sealed, version, conn=conn),
                    ),
                    new.version,
                    tenant_id,
                    row_key,
                )
                for row_key, sealed, version in rows
            ]
            conn.executemany(
                f"UPDATE {table.name} SET sealed = ?, dek_version = ? "
                f"WHERE tenant_id = ? AND {table.key} = ?",
                updates,
            )
            counts[table.name] = len(updates)
        return counts

    # -- audit details (audit.log.DetailsSealer) --------------------------------------------

    def seal_details(
        self, conn: sqlite3.Connection, tenant: str, seq: int, details: dict[str, Any]
    ) -> dict[str, Any] | None:
        sealed = {k: v for k, v in details.items() if k not in CLEAR_DETAILS}
        if not sealed:
            return None
        row = conn.execute(
            "SELECT id, dek_version FROM tenants WHERE name = ?", (tenant,)
        ).fetchone()
        if row is None:
            return None  # no such tenant (any more): nothing of a tenant to seal under
        try:
            key = self.key(str(row[0]), int(row[1]), conn=conn)
        except MetadataSealed:
            return None
        box = key.seal(canonical_details(sealed).encode(), kind=AUDIT_KIND, object_id=str(seq))
        return {
            **{k: details[k] for k in CLEAR_DETAILS if k in details},
            SEALED_DETAILS: {
                "tenant_id": key.tenant_id,
                "key_version": key.version,
                "box": box.hex(),
            },
        }

    def open_details(self, seq: int, sealed: dict[str, Any]) -> dict[str, Any]:
        try:
            tenant_id, version = str(sealed["tenant_id"]), int(sealed["key_version"])
            box = bytes.fromhex(str(sealed["box"]))
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"audit event {seq}: malformed sealed details") from None
        key = self.key(tenant_id, version)
        opened: dict[str, Any] = json.loads(key.open(box, kind=AUDIT_KIND, object_id=str(seq)))
        return opened


def seal_fields(key: DataKey, table: SealedTable, row_key: Any, fields: dict[str, Any]) -> bytes:
    """The sealed JSON object of one row's ``table.fields``."""
    unknown = set(fields) - set(table.fields)
    if unknown:
        raise ValueError(f"{table.name} seals no field {sorted(unknown)}")
    plain = json.dumps(fields, sort_keys=True, default=str).encode()
    return key.seal(plain, kind=METADATA_KIND, object_id=table.object_id(row_key))
