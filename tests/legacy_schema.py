"""Workspaces as an earlier schema stored them, for the migration tests: a workspace made
at the head is rewound to the form a revision changed, then opened again to migrate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

TABLES_0010 = {
    "adapter_versions": """
        CREATE TABLE adapter_versions (
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            version INTEGER NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
            kind TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            parent INTEGER,
            lineage TEXT NOT NULL,
            metrics TEXT NOT NULL,
            decision TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            run_id TEXT,
            PRIMARY KEY (tenant_id, version)
        );
        CREATE UNIQUE INDEX adapter_versions_one_active ON adapter_versions (tenant_id)
        WHERE status = 'active';
    """,
    "gate_runs": """
        CREATE TABLE gate_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            version INTEGER NOT NULL,
            trigger TEXT NOT NULL CHECK (trigger IN ('round', 'promote', 'rerun', 'restore')),
            passed INTEGER NOT NULL CHECK (passed IN (0, 1)),
            severity TEXT,
            verdicts TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX gate_runs_tenant ON gate_runs (tenant_id, version, id);
    """,
    "incidents": """
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
        );
        CREATE INDEX incidents_tenant ON incidents (tenant_id, id);
    """,
    "privacy_sweeps": """
        CREATE TABLE privacy_sweeps (
            sweep_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            scope TEXT NOT NULL,
            results TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
    """,
}
"""The tables schema 0011 changed, as migrations 0004-0010 left them."""


def rewind_to_0010(db_file: Path) -> None:
    """Put a head workspace's database back at schema 0010: the tables 0011 sealed in their
    0010 form and no metadata keys. The tables must still be empty (what was sealed cannot be
    put back in clear without keys): a test writes its old rows after this."""
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        for table in TABLES_0010:
            count = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            assert count == 0, f"{table} has rows: rewind before writing any"
        conn.execute("BEGIN IMMEDIATE")
        for table, ddl in TABLES_0010.items():
            conn.execute(f"DROP TABLE {table}")
            for statement in ddl.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("DELETE FROM data_keys WHERE purpose = 'metadata'")
        conn.execute("UPDATE alembic_version SET version_num = '0010'")
        conn.execute("COMMIT")
    finally:
        conn.close()
