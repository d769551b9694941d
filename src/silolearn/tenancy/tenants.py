"""Tenant lifecycle: create, quarantine, release, crypto-shred; data-key and KEK rotation.

Each tenant has three data keys, all wrapped by its KEK and sharing one version: the
training key and the evaluation key (I5), and the metadata key (I6). Eval records, golden
suites, ``eval/...`` blobs (eval embeddings, probe snapshots) and the contamination index
are sealed under the evaluation key; training records and every other blob under the
training key; what the coordinator records about them (version lineage and metrics, gate
verdicts, incidents, sweeps, audit details: ``storage.metadata``) under the metadata key.
They are created, rotated and shredded together; a rotation keeps the older metadata keys,
which the audit events sealed under them need.

Shredding destroys the tenant's keys in the key manager *first*: from that moment every
ciphertext of the tenant, in the database, in blobs, in free pages or in any backup, is
unreadable, whatever happens to the deletion of rows and files that follows.
"""

from __future__ import annotations

import re
import secrets
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silolearn.audit.log import AuditLog, utcnow
from silolearn.errors import (
    InvalidInput,
    InvalidTenantName,
    TenantExists,
    TenantNotFound,
)
from silolearn.security.envelope import DataKey
from silolearn.security.keys import EVAL_KEY, METADATA_KEY, TRAIN_KEY, KeyManager, WrappedKey
from silolearn.storage.metadata import MetadataKeys
from silolearn.tenancy.key_rotation import KeyRotation, insert_keys

NAME_PATTERN = re.compile(r"[a-z0-9-]{2,40}")
PII_POLICIES = ("redact", "tokenize", "reject")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidTenantName(
            f"invalid tenant name {str(name)[:60]!r}: use 2-40 characters among lowercase "
            "letters, digits and '-'",
            name=str(name)[:60],
        )
    return name


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: str
    name: str
    status: str
    status_reason: str | None
    pii_policy: str
    dek_version: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "status_reason": self.status_reason,
            "pii_policy": self.pii_policy,
            "dek_version": self.dek_version,
            "created_at": self.created_at,
        }


_COLUMNS = "id, name, status, status_reason, pii_policy, dek_version, created_at"


class TenantRegistry:
    """Tenant rows, their wrapped data keys, and the key manager's tenant keys."""

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        keys: KeyManager,
        audit: AuditLog,
        blob_root: Path,
        metadata: MetadataKeys,
    ) -> None:
        self._conn = conn
        self._keys = keys
        self._audit = audit
        self._blob_root = blob_root
        self.metadata = metadata
        self._rotation = KeyRotation(self, conn=conn, keys=keys, audit=audit, metadata=metadata)

    # -- reading ----------------------------------------------------------------------------

    def get(self, name: str) -> TenantInfo:
        validate_name(name)
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM tenants WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise TenantNotFound(f"no tenant named {name!r}", tenant=name)
        return TenantInfo(*row)

    def list(self) -> list[TenantInfo]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY name").fetchall()
        return [TenantInfo(*r) for r in rows]

    def blob_dir(self, tenant_id: str) -> Path:
        return self._blob_root / tenant_id

    def stats(self, info: TenantInfo) -> dict[str, int]:
        row = self._conn.execute(
            """
            SELECT
              (SELECT COUNT(*) FROM train_records WHERE tenant_id = :t AND status = 'active'),
              (SELECT COUNT(*) FROM train_records WHERE tenant_id = :t AND status = 'quarantined'),
              (SELECT COUNT(*) FROM eval_records WHERE tenant_id = :t),
              (SELECT COUNT(*) FROM blobs WHERE tenant_id = :t)
            """,
            {"t": info.id},
        ).fetchone()
        return {"train": row[0], "quarantined": row[1], "eval": row[2], "blobs": row[3]}

    def data_key(self, info: TenantInfo) -> DataKey:
        """Unwrap the tenant's current training data key through the key manager."""
        return self._unwrap(info, TRAIN_KEY)

    def eval_key(self, info: TenantInfo) -> DataKey:
        """Unwrap the tenant's current evaluation key: never for a process that trains."""
        return self._unwrap(info, EVAL_KEY)

    def metadata_key(self, info: TenantInfo) -> DataKey:
        """Unwrap the tenant's current metadata key: the coordinator's, never a worker's."""
        return self.metadata.key(info.id, info.dek_version)

    def _unwrap(self, info: TenantInfo, purpose: str) -> DataKey:
        row = self._conn.execute(
            "SELECT kek_id, wrapped FROM data_keys "
            "WHERE tenant_id = ? AND purpose = ? AND version = ?",
            (info.id, purpose, info.dek_version),
        ).fetchone()
        if row is None:
            raise TenantNotFound(
                f"tenant {info.name!r} has no {purpose} data key v{info.dek_version}",
                tenant=info.name,
            )
        material = self._keys.unwrap(
            info.id, info.dek_version, WrappedKey(str(row[0]), bytes(row[1])), purpose=purpose
        )
        return DataKey(info.id, info.dek_version, material)

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, name: str, *, pii_policy: str) -> TenantInfo:
        validate_name(name)
        if pii_policy not in PII_POLICIES:
            raise InvalidInput(f"unknown PII policy {pii_policy!r}: one of {PII_POLICIES}")
        if self._conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
            raise TenantExists(f"tenant {name!r} already exists", tenant=name)
        tenant_id = "t-" + secrets.token_hex(8)
        self._keys.create_tenant(tenant_id)
        try:
            info = TenantInfo(tenant_id, name, "active", None, pii_policy, 1, utcnow())
            with self._audit.write() as conn:
                if conn.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                    raise TenantExists(f"tenant {name!r} already exists", tenant=name)
                conn.execute(
                    f"INSERT INTO tenants ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        info.id,
                        info.name,
                        info.status,
                        info.status_reason,
                        info.pii_policy,
                        info.dek_version,
                        info.created_at,
                    ),
                )
                keks = insert_keys(
                    conn,
                    self._keys,
                    tenant_id,
                    {
                        p: DataKey.generate(tenant_id, 1)
                        for p in (TRAIN_KEY, EVAL_KEY, METADATA_KEY)
                    },
                )
                self._audit.append_in(
                    conn,
                    "tenant.create",
                    tenant=name,
                    obj=tenant_id,
                    details={"pii_policy": pii_policy, "kek_id": keks[TRAIN_KEY]},
                )
        except BaseException:
            self._keys.destroy_tenant(tenant_id)
            raise
        return info

    def set_status(self, name: str, status: str, *, reason: str | None) -> TenantInfo:
        info = self.get(name)
        if info.status == "shredding":
            raise InvalidInput(f"tenant {name!r} is being shredded", tenant=name)
        action = "tenant.quarantine" if status == "quarantined" else "tenant.release"
        with self._audit.write() as conn:
            conn.execute(
                "UPDATE tenants SET status = ?, status_reason = ? WHERE id = ?",
                (status, reason, info.id),
            )
            self._audit.append_in(
                conn,
                action,
                tenant=name,
                obj=info.id,
                details={"reason": reason, "previous": info.status},
            )
        return self.get(name)

    def set_pii_policy(self, name: str, policy: str) -> TenantInfo:
        info = self.get(name)
        if policy not in PII_POLICIES:
            raise InvalidInput(f"unknown PII policy {policy!r}: one of {PII_POLICIES}")
        with self._audit.write() as conn:
            conn.execute("UPDATE tenants SET pii_policy = ? WHERE id = ?", (policy, info.id))
            self._audit.append_in(
                conn,
                "tenant.policy",
                tenant=name,
                obj=info.id,
                details={"pii_policy": policy, "previous": info.pii_policy},
            )
        return self.get(name)

    def shred(self, name: str) -> dict[str, Any]:
        """Crypto-shred: destroy the keys, then delete rows and blobs."""
        info = self.get(name)
        with self._audit.write() as conn:
            conn.execute("UPDATE tenants SET status = 'shredding' WHERE id = ?", (info.id,))
            self._audit.append_in(conn, "tenant.shred.begin", tenant=name, obj=info.id)
        self._keys.destroy_tenant(info.id)
        with self._audit.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO maintenance (tenant_id, op) VALUES (?, 'shred')", (info.id,)
            )
            counts: dict[str, int] = {}
            for table in (
                "train_records",
                "eval_records",
                "blobs",
                "adapter_versions",
                "training_runs",
                "shared_members",
                "privacy_sweeps",
                "gate_runs",
                "divergence_checks",
                "shadow_checks",
                "served_predictions",
                "served_embeddings",
                "signals",
                "schedule_policies",
                "schedule_decisions",
                "performance_state",
                "rollouts",
                "data_keys",
            ):
                cursor = conn.execute(f"DELETE FROM {table} WHERE tenant_id = ?", (info.id,))
                counts[table] = cursor.rowcount
            counts["contamination_segments"] = conn.execute(
                "DELETE FROM contamination_segments WHERE owner = ?", (info.id,)
            ).rowcount
            conn.execute("DELETE FROM tenants WHERE id = ?", (info.id,))
            conn.execute("DELETE FROM maintenance WHERE tenant_id = ?", (info.id,))
            self._audit.append_in(
                conn, "tenant.shred", tenant=name, obj=info.id, details={"deleted": counts}
            )
        shutil.rmtree(self.blob_dir(info.id), ignore_errors=True)
        # fold the WAL back into the database file so no deleted page survives beside it
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"tenant": name, "id": info.id, "deleted": counts}

    # -- rotation ---------------------------------------------------------------------------

    def rotate_keks(self) -> dict[str, Any]:
        """Re-wrap every data key under a fresh KEK; no data is re-encrypted."""
        return self._rotation.rotate_keks()

    def rotate_data_key(self, name: str) -> dict[str, Any]:
        """Re-encrypt every object of the tenant under fresh training, evaluation and
        metadata keys, atomically."""
        return self._rotation.rotate_data_key(name)

    def migrate_metadata_keys(self) -> Sequence[dict[str, Any]]:
        """Seal metadata left in clear by schema 0011 (``KeyRotation.migrate_metadata_keys``)."""
        return self._rotation.migrate_metadata_keys()

    def migrate_eval_keys(self) -> Sequence[dict[str, Any]]:
        """Give older tenants their evaluation key (``KeyRotation.migrate_eval_keys``)."""
        return self._rotation.migrate_eval_keys()
