"""Performance monitoring: per tenant and version, the running statistics of its feedback
and of what it served.

``performance_state`` holds one row per version and part: ``feedback`` (counts, confusion
matrix, daily tallies, the control chart's burn-in, limit and statistic, its slices') and
``served`` (the sums of served probabilities that estimate performance without labels).
Nothing in it is a record's text. The version, part, item count and time stay in clear; the
state, which names labels and slice values, is sealed under the tenant's metadata key
(``storage.metadata``) and re-sealed when it rotates. Rows are deleted with the tenant when
it is shredded.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE performance_state (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        id TEXT NOT NULL,                 -- '<version>/<part>', bound into the sealed state
        version INTEGER NOT NULL,
        part TEXT NOT NULL CHECK (part IN ('feedback', 'served')),
        items INTEGER NOT NULL,           -- feedback items or served predictions counted
        updated_at TEXT NOT NULL,
        sealed BLOB NOT NULL,             -- {state}, AES-256-GCM, metadata key
        dek_version INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, id)
    )
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
