"""Canary rollouts: a version status ``canary`` and the ``rollouts`` table.

A candidate that passed every gate can serve a share of its tenant's requests while the
active (stable) version serves the rest; ``adapter_versions`` gains the status ``canary``
(SQLite cannot alter a CHECK, so the table is copied as it is: the rows, and so their
digests bound to the audit chain, are unchanged) and at most one canary per tenant, like
the one active version.

``rollouts`` is one row per rollout: the canary and stable versions, the step and its
share of traffic, the state and its times stay in clear (the service reads them on every
predict, without a key); the tallies the sequential test reads (feedback correct per
version, predicted labels per version) and the last evidence name the tenant's labels and
are sealed under its metadata key (``storage.metadata``). At most one running rollout per
tenant; the row is deleted with the tenant when it is shredded.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE adapter_versions_canary (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('candidate', 'canary', 'active', 'rejected', 'retired')),
        kind TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        parent INTEGER,
        sealed BLOB NOT NULL,         -- lineage, metrics, decision
        dek_version INTEGER NOT NULL, -- the metadata key's; 0: clear JSON, not sealed yet
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        run_id TEXT,
        PRIMARY KEY (tenant_id, version)
    )
    """,
    """
    INSERT INTO adapter_versions_canary (tenant_id, version, status, kind, sha256, parent,
        sealed, dek_version, created_at, updated_at, run_id)
    SELECT tenant_id, version, status, kind, sha256, parent, sealed, dek_version,
        created_at, updated_at, run_id
    FROM adapter_versions
    """,
    "DROP TABLE adapter_versions",
    "ALTER TABLE adapter_versions_canary RENAME TO adapter_versions",
    """
    CREATE UNIQUE INDEX adapter_versions_one_active ON adapter_versions (tenant_id)
    WHERE status = 'active'
    """,
    """
    CREATE UNIQUE INDEX adapter_versions_one_canary ON adapter_versions (tenant_id)
    WHERE status = 'canary'
    """,
    """
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,         -- the canary
        stable INTEGER NOT NULL,          -- the active version it is compared with
        state TEXT NOT NULL CHECK (state IN ('running', 'promoted', 'rolled_back')),
        step INTEGER NOT NULL,            -- index into the policy's steps
        share REAL NOT NULL CHECK (share > 0 AND share <= 1),
        started_at TEXT NOT NULL,         -- by the one clock
        step_started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ended_at TEXT,
        sealed BLOB NOT NULL,             -- {steps, tallies, evidence}, metadata key
        dek_version INTEGER NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX rollouts_one_running ON rollouts (tenant_id) WHERE state = 'running'",
    "CREATE INDEX rollouts_tenant ON rollouts (tenant_id, id)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
