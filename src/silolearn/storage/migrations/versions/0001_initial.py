"""Initial schema: tenants, wrapped data keys, train and eval stores, blobs, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_RECORD_COLUMNS = """
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    rid BLOB NOT NULL,          -- keyed hash of the record id
    ts TEXT NOT NULL,           -- record timestamp, UTC ISO-8601, for time order
    digest BLOB NOT NULL,       -- keyed hash of the stored record, for idempotency
    fingerprint BLOB NOT NULL,  -- keyed hash of the normalised text, for exact duplicates
    dek_version INTEGER NOT NULL,
    box BLOB NOT NULL,          -- the record, AES-256-GCM under the tenant's data key
    created_at TEXT NOT NULL
"""

_STATEMENTS = [
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('active', 'quarantined', 'shredding')),
        status_reason TEXT,
        pii_policy TEXT NOT NULL CHECK (pii_policy IN ('redact', 'tokenize', 'reject')),
        dek_version INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE data_keys (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        kek_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, version)
    )
    """,
    f"""
    CREATE TABLE train_records (
        {_RECORD_COLUMNS},
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'quarantined')),
        UNIQUE (tenant_id, rid)
    )
    """,
    "CREATE INDEX train_records_ts ON train_records (tenant_id, ts)",
    "CREATE INDEX train_records_fp ON train_records (tenant_id, fingerprint)",
    f"""
    CREATE TABLE eval_records (
        {_RECORD_COLUMNS},
        UNIQUE (tenant_id, rid)
    )
    """,
    "CREATE INDEX eval_records_fp ON eval_records (tenant_id, fingerprint)",
    """
    CREATE TABLE blobs (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        object_id TEXT NOT NULL UNIQUE,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        dek_version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, name)
    )
    """,
    # maintenance markers live only inside the transaction that sets them; the append-only
    # triggers let exactly that transaction through (shredding, re-encryption under a new key)
    """
    CREATE TABLE maintenance (
        tenant_id TEXT NOT NULL,
        op TEXT NOT NULL CHECK (op IN ('shred', 'rekey')),
        PRIMARY KEY (tenant_id, op)
    )
    """,
    """
    CREATE TRIGGER eval_records_append_only_update BEFORE UPDATE ON eval_records
    WHEN NOT EXISTS (SELECT 1 FROM maintenance WHERE tenant_id = OLD.tenant_id AND op = 'rekey')
      OR NEW.seq IS NOT OLD.seq OR NEW.tenant_id IS NOT OLD.tenant_id
      OR NEW.rid IS NOT OLD.rid OR NEW.ts IS NOT OLD.ts OR NEW.digest IS NOT OLD.digest
      OR NEW.fingerprint IS NOT OLD.fingerprint
    BEGIN
        SELECT RAISE(ABORT, 'eval store is append-only: UPDATE refused');
    END
    """,
    """
    CREATE TRIGGER eval_records_append_only_delete BEFORE DELETE ON eval_records
    WHEN NOT EXISTS (SELECT 1 FROM maintenance WHERE tenant_id = OLD.tenant_id AND op = 'shred')
    BEGIN
        SELECT RAISE(ABORT, 'eval store is append-only: DELETE refused');
    END
    """,
    """
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        object TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    """
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN
        SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused');
    END
    """,
    """
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    BEGIN
        SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused');
    END
    """,
    """
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        ts TEXT NOT NULL,
        signature BLOB NOT NULL
    )
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
