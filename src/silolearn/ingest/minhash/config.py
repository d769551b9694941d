"""Parameters of MinHash-LSH (shingling, signatures, banding) and the seeded constants derived
from them; part of every serialised index."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

_MASK64 = (1 << 64) - 1
# Banding: the largest probability of missing a pair exactly at the threshold.
_MAX_MISS = 0.01
# Changing any hashing (shingles.py, signatures.py, the band keys of index.py) changes
# signatures and band keys: bump this, so that indexes serialised by an older version are
# refused instead of silently missing duplicates.
_ALGORITHM = 1


@functools.lru_cache(maxsize=256)
def _splitmix64(seed: int, count: int) -> tuple[int, ...]:
    """``count`` well-mixed 64-bit constants from a seed, identical on every platform and
    numpy version (numpy's generators do not promise stable streams across versions)."""
    out = []
    state = seed & _MASK64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def choose_banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """``(bands, rows)`` for LSH at ``threshold`` with ``num_perm`` slots.

    A pair at Jaccard similarity ``s`` becomes a candidate with probability
    ``1 - (1 - s**rows)**bands``. Among all ``bands * rows <= num_perm``, keep those missing a
    pair *at* the threshold with probability at most 1% (pairs above it are missed less
    often), and of these take the one with the fewest expected candidates below the
    threshold, measured as the integral of the candidate probability over ``[0, threshold]``.
    Candidates only cost verification time, misses cost recall, hence the constraint on
    one and the objective on the other. If nothing meets the constraint (very few slots),
    the configuration with the smallest miss probability wins.

    For ``threshold=0.8, num_perm=128`` this gives 16 bands of 6 rows (96 of the 128 slots;
    all 128 serve estimates): a miss probability of 0.77% at J = 0.8 and 0.05% at J = 0.85,
    while a pair at J = 0.5 becomes a candidate (to be rejected by the exact check) 22% of the
    time, and unrelated documents essentially never. (16 bands of 8 rows, say, would miss
    5.3% of the pairs at J = 0.8.)
    """
    bands = np.concatenate([np.arange(1, num_perm // r + 1) for r in range(1, num_perm + 1)])
    rows = np.concatenate([np.full(num_perm // r, r) for r in range(1, num_perm + 1)]).astype(
        np.float64
    )
    miss = (1.0 - threshold**rows) ** bands
    grid = np.linspace(0.0, threshold, 257)
    candidate = 1.0 - (1.0 - grid[None, :] ** rows[:, None]) ** bands[:, None]
    # Trapezoid rule on a uniform grid.
    area = (candidate.sum(axis=1) - 0.5 * (candidate[:, 0] + candidate[:, -1])) * grid[1]
    feasible = miss <= _MAX_MISS
    best = (
        int(np.argmin(np.where(feasible, area, np.inf))) if feasible.any() else int(np.argmin(miss))
    )
    return int(bands[best]), int(rows[best])


@dataclass(frozen=True, slots=True)
class MinHashConfig:
    """Parameters of shingling, signatures and banding; part of every serialised index."""

    num_perm: int = 128
    ngram: int = 5
    unit: Literal["word", "char"] = "word"
    threshold: float = 0.8
    seed: int = 1
    # Chosen by ``choose_banding`` from threshold and num_perm unless both are given.
    bands: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.num_perm <= 4096:
            raise ValueError("num_perm must be between 2 and 4096")
        if not 1 <= self.ngram <= 64:
            raise ValueError("ngram must be between 1 and 64")
        if self.unit not in ("word", "char"):
            raise ValueError("unit must be 'word' or 'char'")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if not 0 <= self.seed <= _MASK64:
            raise ValueError("seed must fit in 64 unsigned bits")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and not (self.bands >= 1 and self.rows >= 1 and self.bands * self.rows <= self.num_perm)
        ):
            raise ValueError("need bands >= 1, rows >= 1 and bands * rows <= num_perm")

    @property
    def banding(self) -> tuple[int, int]:
        """``(bands, rows)`` in use: the given ones, or ``choose_banding``'s."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return choose_banding(self.threshold, self.num_perm)
