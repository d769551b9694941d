"""Contamination index segments and the workspace-wide benchmark registry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STATEMENTS = [
    # an index is derived data that can leak membership: each segment is sealed under the
    # tenant's data key (side 'eval' / 'train'), or the registry key for benchmark sets
    """
    CREATE TABLE contamination_segments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL UNIQUE,    -- bound into the ciphertext
        owner TEXT NOT NULL,               -- a tenant id, or 'registry'
        side TEXT NOT NULL CHECK (side IN ('eval', 'train', 'registry')),
        entries INTEGER NOT NULL,
        dek_version INTEGER NOT NULL,
        box BLOB NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX contamination_segments_owner ON contamination_segments (owner, side, id)",
    """
    CREATE TABLE benchmark_sets (
        name TEXT PRIMARY KEY,
        records INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE benchmark_records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        set_name TEXT NOT NULL REFERENCES benchmark_sets(name),
        rid BLOB NOT NULL,
        box BLOB NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (set_name, rid)
    )
    """,
    """
    CREATE TRIGGER benchmark_records_append_only_update BEFORE UPDATE ON benchmark_records
    BEGIN
        SELECT RAISE(ABORT, 'benchmark registry is append-only: UPDATE refused');
    END
    """,
    """
    CREATE TRIGGER benchmark_records_append_only_delete BEFORE DELETE ON benchmark_records
    BEGIN
        SELECT RAISE(ABORT, 'benchmark registry is append-only: DELETE refused');
    END
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
