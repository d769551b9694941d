"""Tenant metadata sealed: one ``sealed`` column per row under the tenant's metadata key (I6).

A version's lineage, metrics and decision, a gate run's verdicts, an incident's summary,
evidence and resolution and a privacy sweep's results name the tenant's labels and give
per-class numbers; they move into one ``sealed`` JSON object per row, beside a
``dek_version`` saying which metadata key seals it (``storage.metadata``). The columns the
coordinator queries stay as they were.

A migration holds no key: the rows move as clear JSON at ``dek_version`` 0, and
``TenantRegistry.migrate_metadata_keys`` (run when the workspace is next opened, before
anything else) gives each tenant its metadata key and seals them. An incident whose tenant
was shredded before this revision has no key to be sealed under and stays in clear. Version
rows are bound to the audit chain as stored, so they are bound again here, and again by the
sealing.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlite3

from alembic import op

from silolearn.audit.rows import BoundTable, backfill

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STATEMENTS = [
    # the pages of the dropped tables held the metadata in clear: zeroed, not left free
    "PRAGMA secure_delete = ON",
    """
    CREATE TABLE adapter_versions_sealed (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
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
    INSERT INTO adapter_versions_sealed (tenant_id, version, status, kind, sha256, parent,
        sealed, dek_version, created_at, updated_at, run_id)
    SELECT tenant_id, version, status, kind, sha256, parent,
        json_object('decision', json(decision), 'lineage', json(lineage),
                    'metrics', json(metrics)),
        0, created_at, updated_at, run_id
    FROM adapter_versions
    """,
    "DROP TABLE adapter_versions",
    "ALTER TABLE adapter_versions_sealed RENAME TO adapter_versions",
    """
    CREATE UNIQUE INDEX adapter_versions_one_active ON adapter_versions (tenant_id)
    WHERE status = 'active'
    """,
    """
    CREATE TABLE gate_runs_sealed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        trigger TEXT NOT NULL CHECK (trigger IN ('round', 'promote', 'rerun', 'restore')),
        passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
        severity TEXT,
        sealed BLOB NOT NULL,         -- verdicts
        dek_version INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    INSERT INTO gate_runs_sealed (id, tenant_id, version, trigger, passed, severity, sealed,
        dek_version, created_at)
    SELECT id, tenant_id, version, trigger, passed, severity,
        json_object('verdicts', json(verdicts)), 0, created_at
    FROM gate_runs
    """,
    "DROP TABLE gate_runs",
    "ALTER TABLE gate_runs_sealed RENAME TO gate_runs",
    "CREATE INDEX gate_runs_tenant ON gate_runs (tenant_id, version, id)",
    """
    CREATE TABLE incidents_sealed (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,      -- no reference: an incident outlives its tenant
        tenant TEXT NOT NULL,
        severity TEXT NOT NULL CHECK (severity IN ('SEV1', 'SEV2', 'SEV3')),
        kind TEXT NOT NULL,
        version INTEGER,
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
        actions TEXT NOT NULL,
        sealed BLOB NOT NULL,         -- summary, evidence, resolution
        dek_version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        resolved_at TEXT
    )
    """,
    """
    INSERT INTO incidents_sealed (id, tenant_id, tenant, severity, kind, version, status,
        actions, sealed, dek_version, created_at, resolved_at)
    SELECT id, tenant_id, tenant, severity, kind, version, status, actions,
        json_object('evidence', json(evidence), 'resolution', resolution,
                    'summary', summary),
        0, created_at, resolved_at
    FROM incidents
    """,
    "DROP TABLE incidents",
    "ALTER TABLE incidents_sealed RENAME TO incidents",
    "CREATE INDEX incidents_tenant ON incidents (tenant_id, id)",
    """
    CREATE TABLE privacy_sweeps_sealed (
        sweep_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        scope TEXT NOT NULL,
        sealed BLOB NOT NULL,         -- results (the whole report)
        dek_version INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )
    """,
    """
    INSERT INTO privacy_sweeps_sealed (sweep_id, tenant_id, scope, sealed, dek_version,
        created_at)
    SELECT sweep_id, tenant_id, scope, json_object('results', json(results)), 0, created_at
    FROM privacy_sweeps
    """,
    "DROP TABLE privacy_sweeps",
    "ALTER TABLE privacy_sweeps_sealed RENAME TO privacy_sweeps",
]

_VERSIONS = BoundTable(
    "adapter_versions",
    key=("tenant_id", "version"),
    content=(
        "status",
        "kind",
        "sha256",
        "parent",
        "sealed",
        "dek_version",
        "created_at",
        "updated_at",
        "run_id",
    ),
    released_by=("tenant.shred", "tenant_id"),
)
"""The version rows as this revision stores them (``storage.metadata.VERSIONS_TABLE``)."""


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)
    conn = op.get_bind().connection.dbapi_connection
    assert isinstance(conn, sqlite3.Connection)
    backfill(conn, (_VERSIONS,), actor="silolearn:migration-0011")


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
