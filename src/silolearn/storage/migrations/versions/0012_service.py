"""The service's tables: access tokens, served predictions kept for feedback, background jobs.

``access_tokens`` holds a keyed hash of each token, never the token (HMAC under a workspace
secret the key manager holds), and a MAC binding the grant's tenant, roles, expiry and
revocation to that hash, so a row edited with the database file in hand stops working
instead of granting more. A token outlives a shredded tenant as a row that resolves to
nothing (``silolearn access review`` still lists it).

``served_predictions`` keeps the text of a served prediction sealed under the tenant's
training key until ``expires_at`` (``[service] prediction_retention_hours``), so feedback can
name it by id; it is purged after, and with the tenant when it is shredded.

``service_jobs`` is the state of background rounds started over the API; only clear
summaries (state, outcome, version, error code) are kept: a round's metrics are in its
version row, sealed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE access_tokens (
        id TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,  -- HMAC of the token under the access-tokens secret
        mac BLOB NOT NULL,                -- HMAC binding the row: tenant, roles, expiry, revocation
        tenant_id TEXT,                   -- NULL: the whole workspace; no reference, see above
        tenant TEXT,                      -- the tenant's name when granted
        roles TEXT NOT NULL,              -- comma-separated, sorted
        reason TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT,
        revoked_by TEXT,
        last_used_at TEXT
    )
    """,
    "CREATE INDEX access_tokens_tenant ON access_tokens (tenant_id, expires_at)",
    """
    CREATE TABLE served_predictions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        dek_version INTEGER NOT NULL,
        box BLOB NOT NULL,                -- {text, label, served_at}, AES-256-GCM, training key
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX served_predictions_expiry ON served_predictions (expires_at)",
    """
    CREATE TABLE service_jobs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('round')),
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'interrupted')),
        params TEXT NOT NULL,
        started_by TEXT NOT NULL,
        outcome TEXT,                     -- the round's status: active, rejected, failed
        version INTEGER,
        error TEXT,                       -- the typed error's code
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    )
    """,
    "CREATE INDEX service_jobs_tenant ON service_jobs (tenant_id, created_at)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
