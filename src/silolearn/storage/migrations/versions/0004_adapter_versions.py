"""Adapter versions per tenant, with lineage, metrics and status; one active per tenant.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE adapter_versions (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
        kind TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        parent INTEGER,
        lineage TEXT NOT NULL,
        metrics TEXT NOT NULL,
        decision TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, version)
    )
    """,
    # at most one active version per tenant, whatever a buggy or concurrent caller does
    """
    CREATE UNIQUE INDEX adapter_versions_one_active ON adapter_versions (tenant_id)
    WHERE status = 'active'
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
