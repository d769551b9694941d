"""Training runs (one per attempt, whatever its outcome) and the run that made each version.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_STATEMENTS = [
    # the artefact, replay buffer and record list of a version are the blobs run/<run_id>/...,
    # written before the version row: a run that dies leaves no version, only orphan blobs
    "ALTER TABLE adapter_versions ADD COLUMN run_id TEXT",
    """
    CREATE TABLE training_runs (
        run_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        kind TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('running', 'succeeded', 'failed', 'abandoned')),
        pid INTEGER,
        host_pid INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        cutoff TEXT,
        version INTEGER,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    )
    """,
    "CREATE INDEX training_runs_tenant ON training_runs (tenant_id, started_at)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
