"""The frozen base model's digest, recorded once per workspace (invariant I3).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_STATEMENTS = [
    # one row: where the base model lives and the SHA-256 of its behaviour-defining files,
    # checked before and after every training run and when serving starts
    """
    CREATE TABLE base_model (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    )
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
