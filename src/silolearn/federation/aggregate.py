"""A federated round's aggregate, judged: what Flower passes off as done is a failed round.

Flower goes on after a round that aggregated nothing: fewer replies than asked for are
averaged as they are, and after "Not enough shares to recover secret" SecAgg+ keeps the old
weights. ``judge_round`` turns both into a ``FederationRoundFailed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from silolearn.errors import FederationRoundFailed

Arrays = Sequence[np.ndarray]


def fedavg(updates: Sequence[Arrays], weights: Sequence[float]) -> list[np.ndarray]:
    """The weighted average of the sites' arrays (FedAvg), computed directly."""
    if not updates or len(updates) != len(weights):
        raise ValueError("FedAvg needs one weight per site and at least one site")
    total = float(sum(weights))
    averaged = []
    for i in range(len(updates[0])):
        acc = np.zeros(np.shape(updates[0][i]), dtype=np.float64)
        for update, weight in zip(updates, weights, strict=True):
            acc += (weight / total) * np.asarray(update[i], dtype=np.float64)
        averaged.append(acc)
    return averaged


def digest(arrays: Arrays) -> str:
    """A SHA-256 of the arrays' float32 bytes: what was sent and what arrived compare by it."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def judge_round(
    round_no: int,
    before: Arrays,
    after: Arrays | None,
    *,
    replies: int,
    failures: int,
    min_sites: int,
) -> None:
    """Raise ``FederationRoundFailed`` unless round ``round_no`` aggregated at least
    ``min_sites`` replies into weights that moved."""
    if replies < min_sites:
        raise FederationRoundFailed(
            f"round {round_no}: {replies} site(s) replied, {failures} failed; the round "
            f"needs at least {min_sites}",
            round=round_no,
            replies=replies,
            failures=failures,
            min_sites=min_sites,
            reason="too-few-replies",
        )
    if after is None or (
        len(after) == len(before)
        and all(
            np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(after, before, strict=True)
        )
    ):
        raise FederationRoundFailed(
            f"round {round_no}: the aggregate equals the round's input weights (secure "
            "aggregation recovered nothing); the round is not counted",
            round=round_no,
            replies=replies,
            failures=failures,
            reason="unchanged-aggregate",
        )


def _same(after: Arrays, before: Arrays) -> bool:
    if len(after) != len(before):
        return False
    pairs = zip(after, before, strict=True)
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
