"""The scheduler's tables: each tenant's policy of what starts a round, and its decisions.

``schedule_policies`` holds a tenant's override of the ``[schedule]`` defaults (which
triggers start a round, the cron expression, the volume threshold, the back-off), sealed
under the tenant's metadata key like every other piece of its metadata
(``storage.metadata``); who set it and when stay in clear.

``schedule_decisions`` is every decision the scheduler took about a tenant: a round it
started (``trigger``) or a due round it did not start (``skip``) and why. The trigger, the
reason, the times, the round's job, outcome and version and the back-off it set stay in
clear, so the scheduler decides without a key; the evidence (record counts, a monitor's
statistic and threshold, the cron fire time) is sealed under the metadata key.
``records_seq`` is the newest training record's sequence number when the round started:
the volume trigger counts the records after it. Both tables are deleted with the tenant
when it is shredded.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE schedule_policies (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        sealed BLOB NOT NULL,             -- {policy}, AES-256-GCM, metadata key
        dek_version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,         -- by the one clock
        updated_by TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE schedule_decisions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        at TEXT NOT NULL,                 -- when the scheduler decided, by the one clock
        decision TEXT NOT NULL CHECK (decision IN ('trigger', 'skip')),
        trigger TEXT NOT NULL,            -- schedule, volume, performance, drift, manual
        reason TEXT,                      -- a skip's: quarantined, running, capacity, backoff
        sealed BLOB NOT NULL,             -- {evidence}, AES-256-GCM, metadata key
        dek_version INTEGER NOT NULL,
        records_seq INTEGER,              -- newest training record when the round started
        job TEXT,                         -- the round's job, when it ran as one
        outcome TEXT,                     -- the round's status: active, rejected, failed, ...
        version INTEGER,
        finished_at TEXT,                 -- by the one clock
        backoff_until TEXT                -- no round before this, after an unsuccessful one
    )
    """,
    "CREATE INDEX schedule_decisions_tenant ON schedule_decisions (tenant_id, at)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
