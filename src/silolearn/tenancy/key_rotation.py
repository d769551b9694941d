"""Rotation of a tenant's keys: re-wrapping every data key under a fresh KEK, re-sealing every
object of a tenant under fresh data keys (one version up, atomically), and the migrations
that give tenants created by older versions their evaluation and metadata keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import AuditLog, utcnow
from silolearn.audit.rows import ROW_DIGESTS, row_digests
from silolearn.errors import ConflictError, InvalidInput, MetadataSealed
from silolearn.security.envelope import DataKey
from silolearn.security.keys import EVAL_KEY, METADATA_KEY, TRAIN_KEY, KeyManager, WrappedKey
from silolearn.storage.metadata import SEALED_TABLES, UNSEALED, VERSIONS_TABLE, MetadataKeys
from silolearn.storage.scope import EVAL_BLOB_PREFIX, ORIGIN_KIND

if TYPE_CHECKING:
    from silolearn.tenancy.tenants import TenantInfo, TenantRegistry


def insert_keys(
    conn: sqlite3.Connection, manager: KeyManager, tenant_id: str, keys: dict[str, DataKey]
) -> dict[str, str]:
    """Wrap and store one data key per purpose; returns the KEK id of each."""
    wrapped: dict[str, str] = {}
    for purpose, key in keys.items():
        sealed = manager.wrap(tenant_id, key.version, key.material, purpose=purpose)
        conn.execute(
            "INSERT INTO data_keys (tenant_id, purpose, version, kek_id, wrapped, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (tenant_id, purpose, key.version, sealed.kek_id, sealed.wrapped, utcnow()),
        )
        wrapped[purpose] = sealed.kek_id
    return wrapped


class KeyRotation:
    """KEK and data-key rotation of the registry's tenants, and the key migrations."""

    def __init__(
        self,
        tenants: TenantRegistry,
        *,
        conn: sqlite3.Connection,
        keys: KeyManager,
        audit: AuditLog,
        metadata: MetadataKeys,
    ) -> None:
        self._tenants = tenants
        self._conn = conn
        self._keys = keys
        self._audit = audit
        self._metadata = metadata

    def rotate_keks(self) -> dict[str, Any]:
        """Re-wrap every data key under a fresh KEK; no data is re-encrypted."""
        with self._keys.rotation_lock():
            return self._rotate_keks()

    def _rotate_keks(self) -> dict[str, Any]:
        tenants = [t for t in self._tenants.list() if t.status != "shredding"]
        fresh = self._keys.add_keks([t.id for t in tenants])
        rewrapped = 0
        with self._audit.write() as conn:
            for tenant in tenants:
                rows = conn.execute(
                    "SELECT purpose, version, kek_id, wrapped FROM data_keys WHERE tenant_id = ?",
                    (tenant.id,),
                ).fetchall()
                for purpose, version, kek_id, wrapped in rows:
                    material = self._keys.unwrap(
                        tenant.id,
                        int(version),
                        WrappedKey(str(kek_id), bytes(wrapped)),
                        purpose=str(purpose),
                    )
                    new = self._keys.wrap(
                        tenant.id,
                        int(version),
                        material,
                        kek_id=fresh[tenant.id],
                        purpose=str(purpose),
                    )
                    conn.execute(
                        "UPDATE data_keys SET kek_id = ?, wrapped = ? "
                        "WHERE tenant_id = ? AND purpose = ? AND version = ?",
                        (new.kek_id, new.wrapped, tenant.id, purpose, version),
                    )
                    rewrapped += 1
                self._audit.append_in(
                    conn,
                    "keys.rotate_kek",
                    tenant=tenant.name,
                    obj=tenant.id,
                    details={"kek_id": fresh[tenant.id]},
                )
        retired = self._keys.retire_keks(fresh)
        return {"tenants": len(tenants), "rewrapped": rewrapped, "retired_keks": retired}

    def rotate_data_key(self, name: str) -> dict[str, Any]:
        """Re-encrypt every object of the tenant under fresh training, evaluation and
        metadata keys, atomically."""
        with self._keys.rotation_lock():
            info = self._tenants.get(name)
            if info.status == "shredding":
                raise InvalidInput(f"tenant {name!r} is being shredded", tenant=name)
            return self._rekey(
                info, _Keys(self._tenants.data_key(info), self._tenants.eval_key(info))
            )

    def migrate_metadata_keys(self) -> Sequence[dict[str, Any]]:
        """Give each tenant created before its metadata was sealed its metadata key, and seal
        the metadata rows schema 0011 left in clear (``storage.metadata.UNSEALED``) under
        its current one. Idempotent; run by ``Workspace.open``.

        Audit events appended before stay as they were: the chain covers what is stored."""
        if not self._unsealed_metadata():
            return ()
        done = []
        with self._keys.rotation_lock():
            for name in self._unsealed_metadata():
                info = self._tenants.get(name)
                with self._audit.write() as conn:
                    self._check_unchanged(conn, info, info.dek_version, None)
                    try:
                        key = self._metadata.key(info.id, info.dek_version, conn=conn)
                    except MetadataSealed:
                        key = DataKey.generate(info.id, info.dek_version)
                        insert_keys(conn, self._keys, info.id, {METADATA_KEY: key})
                    counts = self._metadata.reseal(conn, info.id, key)
                    self._audit.append_in(
                        conn,
                        "keys.migrate_metadata_key",
                        tenant=info.name,
                        obj=info.id,
                        details={
                            "version": info.dek_version,
                            **counts,
                            ROW_DIGESTS: _version_digests(conn, info.id),
                        },
                    )
                done.append({"tenant": info.name, "version": info.dek_version, **counts})
        # the pages that held the rows in clear are overwritten in the database file
        # (secure_delete), not left behind in the WAL
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return done

    def _unsealed_metadata(self) -> Sequence[str]:
        """Tenants without a current metadata key, or with metadata rows in clear."""
        in_clear = " OR ".join(
            f"EXISTS (SELECT 1 FROM {table.name} r WHERE r.tenant_id = t.id "
            f"AND r.dek_version = {UNSEALED})"
            for table in SEALED_TABLES
        )
        rows = self._conn.execute(
            "SELECT name FROM tenants t WHERE status != 'shredding' AND (NOT EXISTS "
            "(SELECT 1 FROM data_keys k WHERE k.tenant_id = t.id AND k.purpose = ? "
            f"AND k.version = t.dek_version) OR {in_clear}) ORDER BY name",
            (METADATA_KEY,),
        ).fetchall()
        return [str(name) for (name,) in rows]

    def migrate_eval_keys(self) -> Sequence[dict[str, Any]]:
        """Give each tenant created before data keys had purposes its evaluation key.

        Its eval material was sealed under its one data key, which every training worker
        held: this is a data-key rotation whose old evaluation key is that data key, so the
        eval material comes out under a fresh evaluation key no training process has seen.
        Idempotent; run by ``Workspace.open``."""
        if not self._missing_eval_keys():
            return ()
        done = []
        with self._keys.rotation_lock():
            for name in self._missing_eval_keys():
                info = self._tenants.get(name)
                old = self._tenants.data_key(info)
                done.append(self._rekey(info, _Keys(old, old), action="keys.migrate_eval_key"))
        return done

    def _missing_eval_keys(self) -> Sequence[str]:
        rows = self._conn.execute(
            "SELECT name FROM tenants t WHERE status != 'shredding' AND NOT EXISTS "
            "(SELECT 1 FROM data_keys k WHERE k.tenant_id = t.id AND k.purpose = ? "
            "AND k.version = t.dek_version) ORDER BY name",
            (EVAL_KEY,),
        ).fetchall()
        return [str(name) for (name,) in rows]

    def _rekey(
        self, info: TenantInfo, old: _Keys, *, action: str = "keys.rotate_data_key"
    ) -> dict[str, Any]:
        """Seal everything of the tenant under a fresh pair of keys, one version up: new
        blob files first, then every row and the blob rows in one transaction, then the old
        keys and files go."""
        version = old.train.version + 1
        new = _Keys(DataKey.generate(info.id, version), DataKey.generate(info.id, version))
        new_metadata = DataKey.generate(info.id, version)
        blob_dir = self._tenants.blob_dir(info.id)
        blob_rows = self._conn.execute(
            "SELECT name, object_id, file FROM blobs WHERE tenant_id = ?", (info.id,)
        ).fetchall()
        new_files: dict[str, str] = {}
        try:
            for blob_name, object_id, file_name in blob_rows:
                plain = old.for_blob(blob_name).open(
                    (blob_dir / file_name).read_bytes(), kind="blob", object_id=object_id
                )
                fresh_name = f"{object_id}.v{version}"
                (blob_dir / fresh_name).write_bytes(
                    new.for_blob(blob_name).seal(plain, kind="blob", object_id=object_id)
                )
                new_files[str(blob_name)] = fresh_name
            with self._audit.write() as conn:
                self._check_unchanged(conn, info, old.train.version, blob_rows)
                conn.execute(
                    "INSERT INTO maintenance (tenant_id, op) VALUES (?, 'rekey')", (info.id,)
                )
                insert_keys(
                    conn,
                    self._keys,
                    info.id,
                    {TRAIN_KEY: new.train, EVAL_KEY: new.eval, METADATA_KEY: new_metadata},
                )
                counts = _reseal_rows(conn, info.id, old, new)
                counts["blobs"] = len(blob_rows)
                # the old metadata key stays: audit events sealed under it are not re-sealed
                counts.update(self._metadata.reseal(conn, info.id, new_metadata))
                for blob_name, fresh_name in new_files.items():
                    conn.execute(
                        "UPDATE blobs SET file = ?, dek_version = ? "
                        "WHERE tenant_id = ? AND name = ?",
                        (fresh_name, version, info.id, blob_name),
                    )
                conn.execute("UPDATE tenants SET dek_version = ? WHERE id = ?", (version, info.id))
                conn.execute(
                    "DELETE FROM data_keys WHERE tenant_id = ? AND version = ? AND purpose != ?",
                    (info.id, old.train.version, METADATA_KEY),
                )
                conn.execute("DELETE FROM maintenance WHERE tenant_id = ?", (info.id,))
                self._audit.append_in(
                    conn,
                    action,
                    tenant=info.name,
                    obj=info.id,
                    details={
                        "from_version": old.train.version,
                        "to_version": version,
                        **counts,
                        ROW_DIGESTS: _version_digests(conn, info.id),
                    },
                )
        except BaseException:
            for fresh_name in new_files.values():
                (blob_dir / fresh_name).unlink(missing_ok=True)
            raise
        for _, _, file_name in blob_rows:
            (blob_dir / str(file_name)).unlink(missing_ok=True)
        return {"tenant": info.name, "version": version, **counts}

    def _check_unchanged(
        self,
        conn: sqlite3.Connection,
        info: TenantInfo,
        version: int,
        blob_rows: Sequence[Any] | None,
    ) -> None:
        """A concurrent rotation or blob write (unless ``blob_rows`` is None) since the files
        were staged: start over."""
        current = conn.execute(
            "SELECT dek_version FROM tenants WHERE id = ?", (info.id,)
        ).fetchone()
        blobs_now = conn.execute(
            "SELECT name, object_id, file FROM blobs WHERE tenant_id = ?", (info.id,)
        ).fetchall()
        if (
            current is None
            or int(current[0]) != version
            or (blob_rows is not None and sorted(blobs_now) != sorted(blob_rows))
        ):
            raise ConflictError(
                f"tenant {info.name!r} changed during data-key rotation; run it again",
                tenant=info.name,
            )


def _version_digests(conn: sqlite3.Connection, tenant_id: str) -> dict[str, dict[str, str]]:
    """The digests of the tenant's version rows, re-sealed in the caller's transaction."""
    versions = conn.execute(
        "SELECT version FROM adapter_versions WHERE tenant_id = ?", (tenant_id,)
    ).fetchall()
    return row_digests(conn, VERSIONS_TABLE, [(tenant_id, int(v)) for (v,) in versions])


@dataclass(frozen=True, slots=True)
class _Keys:
    """A tenant's training and evaluation keys of one version."""

    train: DataKey
    eval: DataKey

    def for_blob(self, name: str) -> DataKey:
        return self.eval if name.startswith(EVAL_BLOB_PREFIX) else self.train


def _reseal(before: DataKey, after: DataKey, origin: Any, object_id: str) -> bytes | None:
    """A training record's sealed label provenance, re-sealed (``None`` stays ``None``)."""
    if origin is None:
        return None
    plain = before.open(bytes(origin), kind=ORIGIN_KIND, object_id=object_id)
    return after.seal(plain, kind=ORIGIN_KIND, object_id=object_id)


def _reseal_rows(
    conn: sqlite3.Connection, tenant_id: str, old: _Keys, new: _Keys
) -> dict[str, int]:
    """Re-seal the tenant's records and contamination index segments from ``old`` to
    ``new`` inside the caller's rekey transaction; returns how many of each."""
    counts: dict[str, int] = {}
    for kind, table, before, after in (
        ("train", "train_records", old.train, new.train),
        ("eval", "eval_records", old.eval, new.eval),
    ):
        # a training record's label provenance is sealed beside it, under the same key
        has_origin = kind == "train"
        rows = conn.execute(
            f"SELECT seq, rid, box, {'origin' if has_origin else 'NULL'} FROM {table} "
            "WHERE tenant_id = ?",
            (tenant_id,),
        ).fetchall()
        updates = []
        for seq, rid, box, origin in rows:
            object_id = bytes(rid).hex()
            plain = before.open(bytes(box), kind=kind, object_id=object_id)
            resealed = () if not has_origin else (_reseal(before, after, origin, object_id),)
            updates.append(
                (after.seal(plain, kind=kind, object_id=object_id), *resealed, after.version, seq)
            )
        conn.executemany(
            f"UPDATE {table} SET box = ?, {'origin = ?, ' if has_origin else ''}dek_version = ? "
            "WHERE seq = ?",
            updates,
        )
        counts[kind] = len(updates)
    # the index is derived from eval records (and guards them): under the evaluation key
    segments = conn.execute(
        "SELECT id, object_id, box FROM contamination_segments WHERE owner = ?", (tenant_id,)
    ).fetchall()
    conn.executemany(
        "UPDATE contamination_segments SET box = ?, dek_version = ? WHERE id = ?",
        [
            (
                new.eval.seal(
                    old.eval.open(bytes(box), kind="index", object_id=str(object_id)),
                    kind="index",
                    object_id=str(object_id),
                ),
                new.eval.version,
                segment_id,
            )
            for segment_id, object_id, box in segments
        ],
    )
    counts["index_segments"] = len(segments)
    return counts
