"""Golden suites: per-tenant must-pass examples, stored in the eval store but kept apart.

``eval_records.suite`` is NULL for the regular eval set (the one quality metrics and
training cutoffs use) and ``'golden'`` for the tenant's golden suite. Golden records are
eval data in every other respect: sealed under the tenant's data key, append-only, never
readable by a training scope, indexed by the contamination filter. A record's suite is
fixed at insertion: the append-only trigger now refuses changing it too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_STATEMENTS = [
    "ALTER TABLE eval_records ADD COLUMN suite TEXT",
    # regular reads (suite IS NULL, time order), golden reads (suite = 'golden') and the
    # regular store's newest timestamp all use this index
    "CREATE INDEX eval_records_suite_ts ON eval_records (tenant_id, suite, ts)",
    "DROP TRIGGER eval_records_append_only_update",
    """
    CREATE TRIGGER eval_records_append_only_update BEFORE UPDATE ON eval_records
    WHEN NOT EXISTS (SELECT 1 FROM maintenance WHERE tenant_id = OLD.tenant_id AND op = 'rekey')
      OR NEW.seq IS NOT OLD.seq OR NEW.tenant_id IS NOT OLD.tenant_id
      OR NEW.rid IS NOT OLD.rid OR NEW.ts IS NOT OLD.ts OR NEW.digest IS NOT OLD.digest
      OR NEW.fingerprint IS NOT OLD.fingerprint OR NEW.suite IS NOT OLD.suite
    BEGIN
        SELECT RAISE(ABORT, 'eval store is append-only: UPDATE refused');
    END
    """,
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
