"""Ragged batches for MinHash-LSH: many documents' items in one flat numpy array with offsets
(document ``d`` holds ``flat[offsets[d] : offsets[d + 1]]``), and the helpers that cut, sort and
concatenate them, shared by shingling, signatures and the index."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

U32: TypeAlias = npt.NDArray[np.uint32]
U64: TypeAlias = npt.NDArray[np.uint64]
I64: TypeAlias = npt.NDArray[np.int64]
Bools: TypeAlias = npt.NDArray[np.bool_]

_LOW32 = 0xFFFFFFFF
# Upper bound on the code points (or shingles) processed in one vectorised step: keeps the
# temporary arrays within a few MB (the cache) instead of the size of the batch.
_CHUNK = 1 << 20


def _ragged_arange(starts: npt.NDArray[np.integer], counts: npt.NDArray[np.integer]) -> I64:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    if counts.size == 1:
        return np.arange(int(starts[0]), int(starts[0] + counts[0]), dtype=np.int64)
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    positions: I64 = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts)
    return positions


def _runs(weights: I64, limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges of items weighing about ``limit`` together (one item at least)."""
    ends = np.cumsum(weights)
    total = int(ends[-1]) if ends.size else 0
    if total <= limit:
        return [(0, weights.size)] if weights.size else []
    cuts = np.searchsorted(ends, np.arange(limit, total, limit), side="right")
    bounds = sorted({0, *(cuts + 1).tolist(), weights.size} - {weights.size + 1})
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if lo < hi]


def _sort_unique(hashes: U32, offsets: I64) -> tuple[U32, I64]:
    """Sort each document's hashes in place and drop duplicates."""
    if offsets.size == 2:
        hashes.sort()
        repeats = hashes[1:] == hashes[:-1]
        if repeats.any():
            hashes = np.delete(hashes, np.flatnonzero(repeats))
        return hashes, np.array([0, hashes.size])
    bounds = offsets.tolist()
    for lo, hi in itertools.pairwise(bounds):
        hashes[lo:hi].sort()
    keep = np.ones(hashes.size, dtype=bool)
    np.not_equal(hashes[1:], hashes[:-1], out=keep[1:])
    keep[offsets[:-1][np.diff(offsets) > 0]] = True
    kept_before = np.zeros(hashes.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return hashes[keep], kept_before[offsets]


def _split(flat: U32, offsets: I64) -> list[U32]:
    bounds = offsets.tolist()
    return [flat[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def _concat_sets(shingle_sets: Sequence[npt.NDArray[np.integer]]) -> tuple[U32, I64]:
    """Concatenated sets with offsets; sorts (and dedups) the documents that are not already
    sorted unique as ``shingle_hashes`` returns them."""
    for item in shingle_sets:
        if item.dtype != np.uint32 or item.ndim != 1:
            raise ValueError("shingle sets must be 1-d uint32 arrays (from shingle_hashes)")
    if len(shingle_sets) == 1 and (shingle_sets[0][1:] > shingle_sets[0][:-1]).all():
        return shingle_sets[0].view(np.uint32), np.array([0, shingle_sets[0].size])
    lengths = np.fromiter(map(len, shingle_sets), dtype=np.int64, count=len(shingle_sets))
    offsets = np.zeros(len(shingle_sets) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if not shingle_sets:
        return np.zeros(0, dtype=np.uint32), offsets
    flat: U32 = np.concatenate(shingle_sets)
    rising = np.ones(flat.size, dtype=bool)
    np.greater(flat[1:], flat[:-1], out=rising[1:])
    rising[offsets[:-1][lengths > 0]] = True
    if rising.all():
        return flat, offsets
    return _sort_unique(flat, offsets)
