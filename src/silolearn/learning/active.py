"""Active learning: which served predictions are most worth a person's label.

``uncertainty`` scores one answer by its margin (one minus the gap between its two most
probable labels): 0 for a sure answer, 1 for a tie. ``pick_for_labelling`` chooses a batch
by uncertainty with diversity, as Cluster-Margin (Citovsky et al., 2021) does: it keeps the
``pool_factor`` times ``k`` most uncertain candidates, then picks among them farthest-first
(greedy k-center, Sener and Savarese's core-set step) in the space of the frozen encoder's
sentence embeddings, starting from the most uncertain. Margin alone fills a batch with
near-copies of one confusing cluster (the same two labels mixed up in the same way), which
a person labels ten times to teach the model once; k-center over the whole traffic chases
outliers the model is sure about. Restricted to the uncertain pool, k-center needs no
number of clusters and no trade-off weight (an MMR score would need both, and its weight
would have to be tuned per tenant). Candidates without an embedding (a LoRA adapter's
answers) fill what is left by uncertainty alone.

Example (two tight pairs of uncertain points and a sure one outside the pool of twice the
batch: the two picks spread over the pairs instead of taking both of the most uncertain):

>>> import numpy as np
>>> u = np.array([0.95, 0.94, 0.90, 0.89, 0.10])
>>> e = np.array([[1, 0], [0.99, 0.01], [0, 1], [0.01, 0.99], [-1, 0]], dtype=np.float32)
>>> pick_for_labelling(u, e, 2, pool_factor=2)
[0, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

POOL_FACTOR = 4
"""How many times the batch the uncertain pool holds: wide enough for a batch to spread
over several confusions, narrow enough that every pick stays among the uncertain."""


def uncertainty(probabilities: Sequence[float] | NDArray[np.floating]) -> float:
    """One minus the margin between the two most probable labels (1.0 with one label)."""
    p = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    if p.size < 2:
        return 1.0
    return float(np.clip(1.0 - (p[0] - p[1]), 0.0, 1.0))


def pick_for_labelling(
    scores: NDArray[np.floating],
    embeddings: NDArray[np.floating] | Sequence[NDArray[np.floating] | None] | None,
    k: int,
    *,
    pool_factor: int = POOL_FACTOR,
) -> list[int]:
    """Indices of at most ``k`` candidates to label, in the order they were picked.

    ``scores`` are the candidates' uncertainties; ``embeddings`` their sentence embeddings
    (a matrix, or a list with ``None`` where a candidate has none). Ties go to the earlier
    candidate, so the same inputs always give the same picks."""
    n = len(scores)
    if k <= 0 or n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    pool = order[: max(k, pool_factor * k)]
    rows = _rows(embeddings, n)
    with_vector = [i for i in pool if rows[i] is not None]
    picks: list[int] = []
    if with_vector:
        matrix = np.stack([rows[i] for i in with_vector]).astype(np.float64)  # type: ignore[misc]
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = matrix / np.where(norms > 0, norms, 1.0)
        # cosine distance to the nearest pick so far; the most uncertain starts
        nearest = np.full(len(with_vector), np.inf)
        chosen = np.zeros(len(with_vector), dtype=bool)
        current = 0
        for _ in range(min(k, len(with_vector))):
            chosen[current] = True
            picks.append(with_vector[current])
            nearest = np.minimum(nearest, 1.0 - matrix @ matrix[current])
            if chosen.all():
                break
            # farthest from every pick; np.argmax keeps the first (most uncertain) of ties
            current = int(np.argmax(np.where(chosen, -np.inf, nearest)))
    taken = set(picks)
    picks += [i for i in order if i not in taken][: k - len(picks)]
    return picks


def _rows(
    embeddings: NDArray[np.floating] | Sequence[NDArray[np.floating] | None] | None, n: int
) -> list[NDArray[np.floating] | None]:
    if embeddings is None:
        return [None] * n
    rows = list(embeddings)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} embeddings for {n} candidates")
    return rows


def self_confirmed_quota(total: int, self_confirmed: int, max_share: float) -> int:
    """How many of ``self_confirmed`` records among ``total`` a round may keep so that they
    are at most ``max_share`` of what it trains on: the largest ``keep`` with
    ``keep / (total - self_confirmed + keep) <= max_share``."""
    if max_share >= 1.0 or self_confirmed == 0:
        return self_confirmed
    others = total - self_confirmed
    keep = int(np.floor(max_share * others / (1.0 - max_share) + 1e-9))
    return max(0, min(self_confirmed, keep))
