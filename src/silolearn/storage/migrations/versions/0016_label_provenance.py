"""Label provenance and the label queue.

``train_records.origin`` says where a training record's label came from (``human``,
``feedback``, ``active`` or ``bulk``), whether a person reviewed it and whether it merely
repeats the served prediction it answers: a small JSON object sealed under the tenant's
training key like the record it belongs to (kind ``origin``, bound to the record's id
hash), so it is read with the record by whoever may read the record and by nobody else.
Rows stored before this schema have none and count as ``bulk``.

``served_predictions`` gains what the label queue needs: ``uncertainty`` (one minus the
margin between the two most probable labels of the served answer; a number that names no
label, in clear so the queue is ordered without opening every row), ``queued_at`` (when the
queue first handed the prediction out: feedback on it is an ``active`` label) and
``answered_at`` (when feedback named it: it leaves the queue). The served embedding the
queue spreads its picks with is sealed in the row's box with its text, under the same
retention.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_STATEMENTS = [
    "ALTER TABLE train_records ADD COLUMN origin BLOB",  # sealed {source, reviewed, confirms}
    "ALTER TABLE served_predictions ADD COLUMN uncertainty REAL",
    "ALTER TABLE served_predictions ADD COLUMN queued_at TEXT",
    "ALTER TABLE served_predictions ADD COLUMN answered_at TEXT",
    "CREATE INDEX served_predictions_queue ON served_predictions "
    "(tenant_id, answered_at, uncertainty)",
]


def upgrade() -> None:
    for statement in _STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise RuntimeError("silolearn schemas are not downgraded; restore a backup instead")
