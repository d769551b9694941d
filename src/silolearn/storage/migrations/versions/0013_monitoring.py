"""Monitoring: monitors' signals and the embeddings of what a tenant serves.

``signals`` is what a monitor found about a tenant (drift of what it serves, performance
from feedback, their slices): its kind, version, time, statistic and calibrated threshold
and whether the monitor confirmed it stay in clear, so the scheduler can find triggers
without a key; its evidence (which can name labels and slice values) is sealed under the
tenant's metadata key (``storage.metadata``).

``served_embeddings`` keeps, per batch of served predictions, the sentence embeddings and
predicted labels the drift monitor compares with the version's training window, sealed
under the tenant's training key until ``expires_at`` (never the texts). Both are deleted
with the tenant when it is shredded.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE signals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        kind TEXT NOT NULL,               -- drift.embedding, performance, ... (monitoring.signals)
        version INTEGER,                  -- the adapter version watched
        at TEXT NOT NULL,                 -- when the monitor decided, by the one clock
        statistic REAL NOT NULL,
        threshold REAL NOT NULL,
        confirmed INTEGER NOT NULL CHECK (confirmed IN (0, 1)),
        sealed BLOB NOT NULL,             -- {evidence}, AES-256-GCM, metadata key
        dek_version INTEGER NOT NULL
    )
    """,
    "CREATE INDEX signals_tenant_at ON signals (tenant_id, at)",
    """
    CREATE TABLE served_embeddings (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        count INTEGER NOT NULL,
        dek_version INTEGER NOT NULL,
        box BLOB NOT NULL,                -- embeddings and predicted labels, training key
        served_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX served_embeddings_tenant ON served_embeddings (tenant_id, served_at)",
    "CREATE INDEX served_embeddings_expiry ON served_embeddings (expires_at)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
