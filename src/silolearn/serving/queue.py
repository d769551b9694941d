"""The label queue: a tenant's served predictions most worth a person's label.

Candidates are the tenant's kept predictions (``storage.served``) that no feedback has
answered yet and whose retention has not ended, the most uncertain first; a batch is chosen
among them by uncertainty with diversity (``learning.active.pick_for_labelling``). Handing
an item out to a labeller marks it queued, so the feedback that answers it is stored as an
``active`` label (a person's answer) and closes it; items handed out and not answered
yet come after the others, so two labellers asking at once get different items. Everything
stays in the tenant's scope: the queue is a view of its own sealed served predictions, gone
when their retention ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from silolearn.learning.active import POOL_FACTOR, pick_for_labelling
from silolearn.storage.scope import TenantScope
from silolearn.storage.served import ServedStore

MAX_ITEMS = 200
"""The most items one request of the queue returns."""


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One prediction to label. The served label is left out on purpose: a person shown
    the model's answer tends to agree with it, which is the loop the queue is to break."""

    prediction_id: str
    uncertainty: float
    version: int
    served_at: str
    text: str | None
    """``None`` for a caller that may not see record text."""

    def to_dict(self) -> dict[str, object]:
        return {
            "prediction_id": self.prediction_id,
            "uncertainty": round(self.uncertainty, 6),
            "version": self.version,
            "served_at": self.served_at,
            "text": self.text,
        }


def label_queue(scope: TenantScope, limit: int, *, hand_out: bool) -> list[QueueItem]:
    """The next ``limit`` predictions to label, in the order they were picked. With
    ``hand_out`` (a labeller asks, and sees the texts) they are marked queued; without it
    (a role that sees no text) the queue is only looked at, and its texts are left out."""
    store = ServedStore(scope)
    candidates = store.open_for_labelling(limit * POOL_FACTOR)
    scores = np.array([c.uncertainty or 0.0 for c in candidates], dtype=np.float64)
    picks = [
        candidates[i] for i in pick_for_labelling(scores, [c.embedding for c in candidates], limit)
    ]
    if hand_out:
        store.mark_queued([p.prediction_id for p in picks])
    return [
        QueueItem(
            prediction_id=p.prediction_id,
            uncertainty=p.uncertainty or 0.0,
            version=p.version,
            served_at=p.served_at,
            text=p.text if hand_out else None,
        )
        for p in picks
    ]
