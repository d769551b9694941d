"""Privacy ledger: per-scope budgets and policy, and the append-only mechanism events.

A scope is ``tenant:<tenant id>`` (a tenant's adapter) or ``shared`` (the model shared by
the tenants that opt in). Events are never updated or deleted, not even when a tenant is
shredded: a spent budget stays spent.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE privacy_scopes (
        scope TEXT PRIMARY KEY,
        epsilon_budget REAL NOT NULL CHECK (epsilon_budget > 0),
        delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
        mode TEXT NOT NULL DEFAULT 'off' CHECK (mode IN ('off', 'dp')),
        run_epsilon REAL CHECK (run_epsilon IS NULL OR run_epsilon > 0),
        updated_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE privacy_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        scope TEXT NOT NULL,
        run_id TEXT NOT NULL,
        purpose TEXT NOT NULL,
        sampling_rate REAL NOT NULL CHECK (sampling_rate > 0 AND sampling_rate <= 1),
        noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
        steps INTEGER NOT NULL CHECK (steps >= 0),
        delta REAL NOT NULL,
        epsilon_after REAL NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX privacy_events_scope ON privacy_events (scope, id)",
    """
    CREATE TRIGGER privacy_events_no_update BEFORE UPDATE ON privacy_events
    BEGIN
        SELECT RAISE(ABORT, 'privacy ledger is append-only: UPDATE refused');
    END
    """,
    """
    CREATE TRIGGER privacy_events_no_delete BEFORE DELETE ON privacy_events
    BEGIN
        SELECT RAISE(ABORT, 'privacy ledger is append-only: DELETE refused');
    END
    """,
    # accuracy-privacy sweeps: the figures of each point (metrics only, no record content)
    """
    CREATE TABLE privacy_sweeps (
        sweep_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        scope TEXT NOT NULL,
        results TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    # the shared model: versions of its parameters, sealed with the workspace's shared key
    """
    CREATE TABLE shared_versions (
        version INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        box BLOB NOT NULL,
        lineage TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    # which tenants take part in the shared model, and the shared version each one pins
    """
    CREATE TABLE shared_members (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        joined_at TEXT NOT NULL,
        pinned_version INTEGER
    )
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
