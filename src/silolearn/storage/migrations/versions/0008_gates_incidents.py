"""Gates and incidents: every gate run's verdicts, incidents with severity and actions, the
cross-tenant divergence checks and the shared-layer shadow comparisons.

Rows hold numbers and ids, never record text. Shredding a tenant deletes its rows here
except its incidents, which stay as the record of what happened (they hold no tenant data).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE gate_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        trigger TEXT NOT NULL CHECK (trigger IN ('round', 'promote', 'rerun', 'restore')),
        passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
        severity TEXT,
        verdicts TEXT NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX gate_runs_tenant ON gate_runs (tenant_id, version, id)",
    """
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('SEV1', 'SEV2', 'SEV3')),
        kind TEXT NOT NULL,
        version INTEGER,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
        summary TEXT NOT NULL,
        evidence TEXT NOT NULL,
        actions TEXT NOT NULL,
        created_at TEXT NOT NULL,
        resolved_at TEXT,
        resolution TEXT
    )
    """,
    "CREATE INDEX incidents_tenant ON incidents (tenant_id, id)",
    """
    CREATE TABLE divergence_checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event TEXT NOT NULL,
        source TEXT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        shared INTEGER NOT NULL CHECK (shared IN (0, 1)),
        shared_version INTEGER,
        probes INTEGER NOT NULL,
        identical INTEGER NOT NULL CHECK (identical IN (0, 1)),
        kl REAL NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX divergence_checks_tenant ON divergence_checks (tenant_id, id)",
    """
    CREATE TABLE shadow_checks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        shared_version INTEGER,
        version INTEGER NOT NULL,
        shadow_version INTEGER NOT NULL,
        probes INTEGER NOT NULL,
        disagreement REAL NOT NULL,
        kl REAL NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX shadow_checks_tenant ON shadow_checks (tenant_id, id)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
