"""Bind the privacy ledger and adapter versions written so far to the audit chain (I7, I9).

From this revision on, each transaction that writes a privacy event, a scope policy or an
adapter version records the row's digest in its audit event (``silolearn.audit.rows``). The
rows already there are bound by one ``audit.rows_bound`` event appended here: they are
trusted as they stand at the upgrade. The workspace signs its head right after a migration,
so the event is covered by a signature before anything else runs. The tables are spelt out
as they are at this revision: a later change to their columns binds its rows again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

import sqlite3

from alembic import op

from silolearn.audit.rows import BoundTable, backfill

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLES = (
    BoundTable(
        "privacy_events",
        key=("id",),
        content=(
            "scope",
            "run_id",
            "purpose",
            "sampling_rate",
            "noise_multiplier",
            "steps",
            "delta",
            "epsilon_after",
            "created_at",
        ),
    ),
    BoundTable(
        "privacy_scopes",
        key=("scope",),
        content=("epsilon_budget", "delta", "mode", "run_epsilon", "updated_at"),
    ),
    BoundTable(
        "adapter_versions",
        key=("tenant_id", "version"),
        content=(
            "status",
            "kind",
            "sha256",
            "parent",
            "lineage",
            "metrics",
            "decision",
            "created_at",
            "updated_at",
            "run_id",
        ),
        released_by=("tenant.shred", "tenant_id"),
    ),
)


def upgrade() -> None:
    conn = op.get_bind().connection.dbapi_connection
    assert isinstance(conn, sqlite3.Connection)
    backfill(conn, _TABLES, actor="silolearn:migration-0010")


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
