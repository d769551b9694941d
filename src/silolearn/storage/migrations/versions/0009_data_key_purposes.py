"""Data keys by purpose: each tenant's training key and evaluation key (I5).

Until now a tenant had one data key, sealing its train and eval records alike; every row
becomes the ``train`` key. The evaluation key of each tenant is created, and its eval
material re-sealed under it, when the workspace is next opened
(``TenantRegistry.migrate_eval_keys``): that needs the key manager, which a schema
migration does not hold.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_STATEMENTS = [
    """
    CREATE TABLE data_keys_by_purpose (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        purpose TEXT NOT NULL,     -- 'train' or 'eval' (security.keys.KEY_PURPOSES)
        version INTEGER NOT NULL,  -- both purposes share the tenant's dek_version
        kek_id TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (tenant_id, purpose, version)
    )
    """,
    """
    INSERT INTO data_keys_by_purpose (tenant_id, purpose, version, kek_id, wrapped, created_at)
    SELECT tenant_id, 'train', version, kek_id, wrapped, created_at FROM data_keys
    """,
    "DROP TABLE data_keys",
    "ALTER TABLE data_keys_by_purpose RENAME TO data_keys",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
