"""A federated round's aggregate, judged: what Flower passes off as done is a failed round.

Flower goes on after a round that aggregated nothing: fewer replies than asked for are
averaged as they are, and after "Not enough shares to recover secret" SecAgg+ keeps the old
weights. ``judge_round`` turns both into a ``FederationRoundFailed``; ``halted_round`` is
the error of a SecAgg+ round that stopped with fewer sites left than its threshold.
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


def halted_round(
    round_no: int,
    *,
    stage: str,
    sampled: Sequence[str],
    survivors: Sequence[str],
    threshold: int,
) -> FederationRoundFailed:
    """The error of a SecAgg+ round that halted in ``stage`` ("Insufficient available
    nodes" or "Not enough shares" in Flower's log, nothing else): too few of the sampled
    sites were left to unmask the aggregate, so nothing was released."""
    left = set(survivors)
    dropped = [s for s in sampled if s not in left]
    return FederationRoundFailed(
        f"round {round_no}: secure aggregation halted in its {stage} stage with "
        f"{len(survivors)} of the {len(sampled)} sampled site(s) left, fewer than the "
        f"{threshold} needed to unmask the aggregate; nothing was released, charged or "
        "versioned",
        round=round_no,
        stage=stage,
        sampled=list(sampled),
        survivors=list(survivors),
        dropped=dropped,
        threshold=threshold,
        reason="too-few-survivors",
    )
