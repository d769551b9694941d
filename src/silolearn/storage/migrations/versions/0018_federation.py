"""Federation: the federated lineage of shared versions and a site's decisions on them.

``federated_lineage`` is one row per shared version a federated run produced, on the
coordinator: the federation, the run, the number of rounds and the epsilon after it stay in
clear; the rounds themselves (sites sampled, replied and dropped per round, the noise
planned and achieved, the epsilon after each round, the aggregate's digest) are sealed
under the workspace's shared-model key. ``federation_decisions`` is a site's record of
what it did with a shared version: pinned it, refused it (never used by its tenants) or
went back to following the latest. Both are append-only (triggers) and their rows are bound
to the audit chain (``audit.rows``), like the privacy ledger.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE federated_lineage (
        version INTEGER PRIMARY KEY,      -- the shared version (shared_versions.version)
        federation TEXT NOT NULL,
        run_id TEXT NOT NULL,
        rounds INTEGER NOT NULL CHECK (rounds >= 1),
        epsilon_after REAL NOT NULL CHECK (epsilon_after >= 0),
        sealed BLOB NOT NULL,             -- {rounds: [...], ...}, the shared-model key
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE federation_decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        federation TEXT NOT NULL,
        version INTEGER,                  -- NULL: follow the latest again
        trunk_sha256 TEXT,
        decision TEXT NOT NULL CHECK (decision IN ('pin', 'refuse', 'follow')),
        reason TEXT NOT NULL,
        decided_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX federation_decisions_version ON federation_decisions (federation, version)",
]
for _table in ("federated_lineage", "federation_decisions"):
    for _verb in ("UPDATE", "DELETE"):
        _STATEMENTS.append(
            f"""
            CREATE TRIGGER {_table}_no_{_verb.lower()} BEFORE {_verb} ON {_table}
            BEGIN
                SELECT RAISE(ABORT, '{_table} is append-only: {_verb} refused');
            END
            """
        )


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
