"""MinHash signatures of shingle sets, by a few rounds of throwing shingles into slots
(Fast Similarity Sketching) with a per-slot fallback order for the slots left empty."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from silolearn.ingest.minhash.arrays import (
    _CHUNK,
    _LOW32,
    I64,
    U32,
    U64,
    Bools,
    _concat_sets,
    _ragged_arange,
    _runs,
)
from silolearn.ingest.minhash.config import MinHashConfig, _splitmix64

# Rounds in which every shingle is thrown into one slot. A document leaves the rounds once
# all its slots are filled. Slots still empty after the last round fall back to a per-slot
# order, which costs a pass over the document's shingles per slot: cheap for the few left in
# long documents (~0.25 of 128 for 200 shingles after four rounds), and done as one dense
# block for short ones, which fill few slots per round anyway. Four rounds measured fastest
# on both long articles and tweets.
_ROUNDS = 4
# Below this many (shingle, round) pairs, all rounds are computed in one go (at most 2**29
# shingles and 8 rounds, for the packed keys of ``MinHasher._all_rounds``).
_SMALL = 1 << 15
# Keys of ``MinHasher._all_rounds``: an empty slot's, and the mask of the shingle's position.
_EMPTY_KEY = np.iinfo(np.uint64).max
_POSITION = np.uint64((1 << 29) - 1)
# Shingles per dense block of the fallback (a block is this times num_perm uint32).
_BLOCK = 4096


class MinHasher:
    """Signatures of shingle sets: ``num_perm`` MinHash slots of ``uint32`` (the hash of the
    slot's minimal shingle), deterministic in ``config.seed``.

    Slot ``j`` of a set holds its shingle ``x`` with the smallest key ``(r, y_r(x))`` over the
    rounds ``r < _ROUNDS`` in which ``slot_r(x) = j``; if no shingle of the set lands in ``j``
    in any round, the one with the smallest ``(_ROUNDS, g_j(x))``. ``y_0(x) = x`` and the
    other ``y_r``, ``g_j`` are seeded affine bijections ``a * x + b mod 2**32`` (``a`` odd),
    so a key never ties and ``x`` follows from it; ``slot_r(x) = y_r(x) // ceil(2**32 / k)``.
    The key of a shingle in a slot does not depend on the rest of the set, which is what makes
    two sets agree in a slot with probability equal to their Jaccard similarity.
    """

    def __init__(self, config: MinHashConfig) -> None:
        self.config = config
        k = config.num_perm
        # Constant 0 seeds the shingle hashes; here, odd multipliers and offsets for the
        # rounds (round 0 is the identity) and the per-slot fallback orders.
        constants = np.array(_splitmix64(config.seed, 1 + 2 * (_ROUNDS + k))[1:], np.uint64)
        words = (constants & _LOW32).astype(np.uint32)
        multipliers, offsets = words[0::2] | 1, words[1::2]
        multipliers[0], offsets[0] = 1, 0
        inverses = np.array([pow(int(a), -1, 1 << 32) for a in multipliers], dtype=np.uint32)
        self._round_a = multipliers[:_ROUNDS, None]
        self._round_b = offsets[:_ROUNDS, None]
        self._round_inverse = inverses[:_ROUNDS]
        self._slot_a, self._slot_b = multipliers[_ROUNDS:], offsets[_ROUNDS:]
        self._slot_inverse = inverses[_ROUNDS:]
        # Round (top 3 bits) and position (low 29) of every key of ``_all_rounds``.
        self._round_tags = (np.arange(_ROUNDS, dtype=np.uint64) << np.uint64(61))[:, None] | (
            np.arange(_SMALL // _ROUNDS, dtype=np.uint64)
        )
        # slot_r(x) = y_r(x) // width: below k for every 32-bit y, and rising with y.
        self._width = np.uint32(-(-(1 << 32) // k))

    def signatures(self, shingle_sets: Sequence[npt.NDArray[np.integer]]) -> U32:
        """``(len(shingle_sets), num_perm)`` signatures; an empty set gives all ``2**32 - 1``."""
        out = np.empty((len(shingle_sets), self.config.num_perm), dtype=np.uint32)
        for lo, hi, flat, offsets in self._batches(shingle_sets):
            out[lo:hi] = self._sketch(flat, offsets).reshape(hi - lo, -1)
        return out

    def signature(self, shingles: npt.NDArray[np.integer]) -> U32:
        row: U32 = self.signatures([shingles])[0]
        return row

    def _batches(
        self, shingle_sets: Sequence[npt.NDArray[np.integer]]
    ) -> Iterator[tuple[int, int, U32, I64]]:
        """Runs ``lo:hi`` of whole documents with about _CHUNK shingles and slots together,
        concatenated: ``(lo, hi, shingles, offsets)``."""
        lengths = np.fromiter(map(len, shingle_sets), dtype=np.int64, count=len(shingle_sets))
        for lo, hi in _runs(lengths + self.config.num_perm, _CHUNK):
            yield lo, hi, *_concat_sets(shingle_sets[lo:hi])

    def _sketch(self, h: U32, offsets: I64) -> U32:
        n, k = offsets.size - 1, self.config.num_perm
        small = h.size * _ROUNDS <= _SMALL
        if n == 1 and small and h.size:
            # One document (the online path): the fallback for its few empty slots as one
            # small dense block. Empty slots read a wrong shingle first, then get theirs.
            best = self._all_rounds(h, None, k)
            sig: U32 = np.take(h, best & _POSITION, mode="clip")
            empty = best == _EMPTY_KEY
            if empty.any():
                slots = np.flatnonzero(empty)
                g = h * self._slot_a[slots, None]
                g += self._slot_b[slots, None]
                sig[slots] = (g.min(axis=1) - self._slot_b[slots]) * self._slot_inverse[slots]
            return sig
        sig = np.full(n * k, _LOW32, dtype=np.uint32)
        if h.size == 0:
            return sig
        # Flat slot indices fit in 32 bits per chunk, and uint32 arithmetic is several times
        # faster than int64 in numpy.
        lengths = np.diff(offsets)
        base = np.repeat(np.arange(0, n * k, k, dtype=np.uint32), lengths)
        if small:
            best = self._all_rounds(h, base, n * k)
            empty = best == _EMPTY_KEY
            sig[~empty] = h[best[~empty] & _POSITION]
        else:
            empty = self._round_by_round(h, base, sig)
        if not empty.any():
            return sig
        # Slots no round reached take the fallback order. Per document, either only its
        # empty slots (a gather per shingle and slot), or all slots as one dense block, which
        # costs ~10x less per shingle and slot: the choice for documents with few shingles,
        # which fill few slots per round. Documents without shingles stay empty.
        missing = empty.reshape(n, k).sum(axis=1)
        dense = (missing * 10 > k) & (lengths > 0)
        if dense.any():
            self._dense_fallback(h, offsets, np.flatnonzero(dense), sig, empty)
        sparse = np.flatnonzero(empty)
        sparse = sparse[~dense[sparse // k] & (lengths[sparse // k] > 0)]
        if sparse.size:
            self._sparse_fallback(h, offsets, sparse, sig)
        return sig

    def _round_by_round(self, h: U32, base: U32, sig: U32) -> Bools:
        """All rounds, one at a time, dropping documents once every slot is filled (their
        signature is final: a later round can only rank after an earlier one). Returns the
        mask of slots still empty."""
        k = self.config.num_perm
        empty = np.ones(sig.size, dtype=bool)
        # Round 0: ``h // width`` rises with h, so each document's sorted hashes come grouped
        # by slot with the minimum first.
        slot = base + h // self._width
        head = np.ones(slot.size, dtype=bool)
        np.not_equal(slot[1:], slot[:-1], out=head[1:])
        first = np.flatnonzero(head)
        sig[slot[first]] = h[first]
        empty[slot[first]] = False
        best = np.full(sig.size, _LOW32, dtype=np.uint32)
        docs = sig.size // k
        for r in range(1, _ROUNDS):
            open_docs = empty.reshape(-1, k).any(axis=1)
            live = int(np.count_nonzero(open_docs))
            if live == 0:
                break
            if live * 2 < docs:
                keep = np.take(open_docs, base // k)
                h, base, docs = h[keep], base[keep], live
            y = h * self._round_a[r, 0]
            y += self._round_b[r, 0]
            slot = y // self._width
            slot += base
            hit = np.flatnonzero(np.take(empty, slot))
            if hit.size == 0:
                continue
            target = slot[hit]
            np.minimum.at(best, target, y[hit])
            # The winner's rank is in ``best``; invert the bijection to get the shingle.
            sig[target] = (best[target] - self._round_b[r, 0]) * self._round_inverse[r]
            empty[target] = False
            best[target] = _LOW32
        return empty

    def _all_rounds(self, h: U32, base: U32 | None, size: int) -> U64:
        """The same keys for all rounds at once: fewer numpy calls, for small inputs (single
        documents on the online path), where call overhead dominates. A key packs the round
        (top 3 bits), the rank (32) and the shingle's position (low 29), so the minimum of a
        slot names its shingle directly; an empty slot keeps the maximum. ``size`` slots."""
        y = h * self._round_a
        y += self._round_b
        slots = y // self._width
        if base is not None:
            slots += base
        keys = y.astype(np.uint64)
        keys <<= np.uint64(29)
        keys |= self._round_tags[:, : h.size]
        best = np.full(size, _EMPTY_KEY, dtype=np.uint64)
        np.minimum.at(best, slots.ravel(), keys.ravel())
        return best

    def _sparse_fallback(self, h: U32, offsets: I64, empty: I64, sig: U32) -> None:
        """Fill the ``empty`` slots (flat indices): one pass over the owner's shingles each."""
        owner, slot = np.divmod(empty, self.config.num_perm)
        count = offsets[owner + 1] - offsets[owner]
        g = h[_ragged_arange(offsets[owner], count)]
        g *= np.repeat(self._slot_a[slot], count)
        g += np.repeat(self._slot_b[slot], count)
        best = np.minimum.reduceat(g, np.cumsum(count) - count)
        sig[empty] = (best - self._slot_b[slot]) * self._slot_inverse[slot]

    def _dense_fallback(self, h: U32, offsets: I64, docs: I64, sig: U32, empty: Bools) -> None:
        """Fill the empty slots of ``docs`` from every slot's fallback order, computed for all
        their slots at once."""
        k = self.config.num_perm
        rows = sig.reshape(-1, k)
        holes = empty.reshape(-1, k)
        a, b = self._slot_a[:, None, None], self._slot_b[:, None, None]
        # Documents in order of size, in blocks of about _BLOCK shingles padded to the
        # block's longest by repeating each one's last shingle (which leaves minima alone).
        # A block is a (slots, length, documents) array reduced along its middle axis: the
        # innermost loops then run over documents, long enough for numpy to vectorise well.
        count = offsets[docs + 1] - offsets[docs]
        order = np.argsort(count, kind="stable")
        docs, count = docs[order], count[order]
        for lo, hi in _runs(count, _BLOCK):
            width = int(count[hi - 1])
            column = np.minimum(np.arange(width)[:, None], count[lo:hi] - 1)
            members = h[offsets[docs[lo:hi]] + column]
            g = a * members
            g += b
            best = g.min(axis=1)
            best -= b[:, :, 0]
            best *= self._slot_inverse[:, None]
            values = rows[docs[lo:hi]]
            np.copyto(values, best.T, where=holes[docs[lo:hi]])
            rows[docs[lo:hi]] = values
