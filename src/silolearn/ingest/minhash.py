"""MinHash-LSH near-duplicate search with exact verification, for the contamination filter.

A training record is contaminated when the Jaccard similarity of its n-gram shingle set with
the shingle set of some evaluation record reaches ``MinHashConfig.threshold``. Comparing every
record with every evaluation record is too slow for the ingestion path, so this module finds
candidates with MinHash signatures and locality-sensitive hashing (LSH), then decides each
candidate on the *exact* Jaccard similarity of the stored shingle sets. Precision is therefore
exact; recall is the LSH recall, which the banding (see ``choose_banding``) keeps near 1 at the
threshold.

Pipeline, vectorised with numpy over whole batches of documents:

1. ``normalise``: Unicode NFKC, case folding, every character that is not a letter, mark or
   number (punctuation, symbols, whitespace, controls) becomes a space, whitespace runs
   collapse to one space. The batch path folds characters through a lookup table over code
   points and is tested to agree with the reference implementation character for character.
2. ``shingle_hashes``: a 32-bit hash of every n-gram of words (default) or characters, as
   sorted unique ``uint32``. Words are hashed with a polynomial hash over their code points,
   computed for a whole batch at once from prefix sums (``sum(x_i * P**i)`` mod 2**32, made
   position-independent by multiplying with ``P**-start``), and n-grams with a polynomial
   over the unit hashes mod 2**64, then a multiply whose high half is kept. No Python
   ``hash()`` is used (it is salted per process): the same text gives the same hashes
   everywhere.
3. ``MinHasher``: ``num_perm`` slots, each a MinHash, i.e. the shingle that is minimal
   under a per-slot random order. Instead of evaluating ``num_perm`` hash functions per
   shingle, each shingle is thrown into one slot per round for a few rounds and ranked there
   (the idea of Fast Similarity Sketching, Dahlgaard, Knudsen and Thorup, 2017); slots still
   empty after the rounds take the minimum of their own hash function over the document's
   shingles. For every slot the order ``(first round the shingle lands in the slot, its
   rank)`` is a function of the shingle alone, so two sets collide in a slot with
   probability exactly equal to their Jaccard similarity, as with classic MinHash, at a
   fraction of the cost for long documents. A slot stores the hash of its minimal shingle.
4. ``LSHIndex``: signatures cut into ``bands`` bands of ``rows`` rows; each band becomes one
   32-bit key. Keys live in one sorted array with a table of bucket starts (two memory
   accesses per lookup), looked up for whole batches of queries at once; candidates are
   verified on the stored shingle sets. ``to_bytes``/``from_bytes`` persist it (checked by a
   digest), ``merge`` joins segments.

Hashes are non-cryptographic: this filter guards against accidental overlap, not against
someone paraphrasing evaluation data on purpose.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import struct
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from silolearn.text import FOLD_MAP, SPACE, normalise

__all__ = [
    "Candidate",
    "LSHIndex",
    "MinHashConfig",
    "MinHasher",
    "choose_banding",
    "normalise",
    "normalise_many",
    "shingle_hashes",
    "shingle_hashes_many",
]

U32: TypeAlias = npt.NDArray[np.uint32]
U64: TypeAlias = npt.NDArray[np.uint64]
I64: TypeAlias = npt.NDArray[np.int64]
Bools: TypeAlias = npt.NDArray[np.bool_]

_MASK64 = (1 << 64) - 1
# Which uint32 of a uint64 holds its high half, in memory.
_HIGH_HALF = 1 if sys.byteorder == "little" else 0
_LOW32 = 0xFFFFFFFF
# In the fold table: a code point that cannot be folded on its own (see ``_fold_table``);
# documents holding one take the reference path.
_SLOW = 0xFFFFFFFF
# Polynomial bases for words (over code points, modulo 2**32) and n-grams (over unit hashes,
# modulo 2**64); odd, hence invertible, which makes a substring's hash independent of its
# position in the batch.
_P = 0x9E3779B97F4A7C15
_Q = 0xD6E8FEB86659FD93
# An odd 64-bit multiplier (from MurmurHash3's finaliser): the high half of ``x * _MIX``
# depends on every bit of x.
_MIX = 0xFF51AFD7ED558CCD
_P_INVERSE = pow(_P, -1, 1 << 32)
_Q_INVERSE = pow(_Q, -1, 1 << 64)
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
# Upper bound on the code points (or shingles) processed in one vectorised step: keeps the
# temporary arrays within a few MB (the cache) instead of the size of the batch.
_CHUNK = 1 << 20
# Banding: the largest probability of missing a pair exactly at the threshold.
_MAX_MISS = 0.01
# Changing any hashing above changes signatures and band keys: bump this, so that indexes
# serialised by an older version are refused instead of silently missing duplicates.
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


def _ragged_arange(starts: npt.NDArray[np.integer], counts: npt.NDArray[np.integer]) -> I64:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    if counts.size == 1:
        return np.arange(int(starts[0]), int(starts[0] + counts[0]), dtype=np.int64)
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    positions: I64 = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets, counts)
    return positions


# --------------------------------------------------------------------------- configuration


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


# --------------------------------------------------------------------------- normalisation


def normalise_many(texts: Sequence[str]) -> list[str]:
    """``normalise`` of every text, vectorised over the batch through the same code point
    table as shingling (several times faster than one ``normalise`` call per text)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    out: list[str] = []
    for lo, hi in _runs(lengths + 1, _CHUNK):
        folded, starts = _folded_batch(texts[lo:hi])
        joined = folded.tobytes().decode("utf-32-le", "surrogatepass")
        out.extend(" ".join(joined[a:b].split()) for a, b in itertools.pairwise(starts.tolist()))
    return out


def _composes_with_previous() -> set[int]:
    """BMP code points that canonical composition may merge into the character before them
    (NFKC quick check "maybe"): second halves of two-part canonical decompositions, and the
    Hangul vowel and trailing consonant jamo, which compose algorithmically."""
    seconds = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    for code in range(0x10000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    return seconds


@functools.cache
def _fold_table() -> U32:
    """``normalise`` character by character, for every BMP code point: the folded code point,
    a space, or ``_SLOW`` where one character is not enough to decide.

    NFKC works on a character alone unless it reorders or composes neighbours: characters
    with a non-zero combining class or that compose with the character before them (or whose
    NFKC form begins such), are ``_SLOW``, as are those folding to several letters ("ß" ->
    "ss", "ﬁ" -> "fi"). Several separators in a row ("…" -> "...") become one space, which
    changes nothing once whitespace is collapsed. Built on first use, in about 0.1 s.
    """
    context = _composes_with_previous()
    table = np.empty(0x10000, dtype=np.uint32)
    for code in range(0x10000):
        char = chr(code)
        nfkc = unicodedata.normalize("NFKC", char)
        if any(unicodedata.combining(c) or ord(c) in context for c in char + nfkc):
            table[code] = _SLOW
            continue
        kept = [c for c in nfkc.casefold() if FOLD_MAP[ord(c)] != SPACE]
        if not kept:
            table[code] = SPACE
        elif len(kept) == 1 and len(nfkc.casefold()) == 1:
            table[code] = ord(kept[0])
        else:
            table[code] = _SLOW
    table[0xFFFF] = _SLOW  # np.take clips code points above the BMP to this entry
    return table


def _code_points(text: str) -> U32:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _folded_batch(texts: Sequence[str]) -> tuple[U32, I64]:
    """Code points of ``" " + " ".join(folded texts) + " "`` and where each text starts
    (``n + 1`` offsets, the last one the length).

    "Folded" is ``normalise`` without the whitespace collapse: a run of separators is left as
    a run of spaces, which the callers handle. Every text is followed by a space, so no unit
    crosses from one text into the next.
    """
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    starts = np.ones(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=starts[1:])
    starts[1:] += 1
    return _fold(texts, lengths, starts)


def _fold(texts: Sequence[str], lengths: I64, starts: I64) -> tuple[U32, I64]:
    codes = _code_points(" " + " ".join(texts) + " ")
    folded = np.take(_fold_table(), codes, mode="clip")
    if folded.max() < _SLOW:  # _SLOW is the largest uint32
        return folded, starts
    # Rare: a character that needs its neighbours, several letters from one character, or a
    # code point beyond the BMP. Those texts are folded by the reference and spliced in.
    slow = np.flatnonzero(folded == _SLOW)
    redo = np.unique(np.searchsorted(starts, slow, side="right") - 1)
    pieces: list[U32] = []
    cut = 0
    for doc in redo.tolist():
        pieces.append(folded[cut : starts[doc]])
        pieces.append(_code_points(normalise(texts[doc])))
        cut = int(starts[doc + 1]) - 1
    pieces.append(folded[cut:])
    lengths[redo] = [len(p) for p in pieces[1::2]]
    np.cumsum(lengths + 1, out=starts[1:])
    starts[1:] += 1
    return np.concatenate(pieces), starts


# --------------------------------------------------------------------------- shingling

_powers: dict[tuple[int, type[np.unsignedinteger]], npt.NDArray[np.unsignedinteger]] = {}


def _power_table(
    base: int, length: int, dtype: type[np.unsignedinteger] = np.uint64
) -> npt.NDArray[np.unsignedinteger]:
    """``base**i`` modulo the width of ``dtype`` for ``i < length`` (cached, grown by
    doubling, up to what a chunk needs: the tables for one outsized text are not kept)."""
    table = _powers.get((base, dtype))
    if table is None or table.size < length:
        size = max(1 << 16, 1 << (length - 1).bit_length())
        steps = np.full(size, base % (1 << 8 * np.dtype(dtype).itemsize), dtype=dtype)
        steps[0] = 1
        table = np.cumprod(steps, dtype=dtype)
        if size <= 4 * _CHUNK:
            _powers[(base, dtype)] = table
    return table[:length]


def _window_hashes(
    units: npt.NDArray[np.unsignedinteger], first: I64, count: I64, n: int, seed: int
) -> tuple[U32, I64]:
    """32-bit hashes of the n-unit windows of each document, whose units are
    ``units[first[d] : first[d] + count[d]]``; a document with fewer than ``n`` (but some)
    units gives one window of all of them. Returns the hashes and per-document offsets.

    Windows are hashed at every position of the batch with two shifted slices of one prefix
    sum (a few of them straddle two documents), then each document's are gathered.
    """
    prefix = np.zeros(units.size + 1, dtype=np.uint64)
    np.cumsum(np.multiply(units, _power_table(_Q, units.size)), out=prefix[1:])
    inverse = _power_table(_Q_INVERSE, units.size)
    if count.size == 1:
        # One document (the online path): slices, no gathering.
        lo, size = int(first[0]), int(count[0])
        span = min(size, n)
        windows = size - span + 1 if size else 0
        hashes = prefix[lo + span : lo + span + windows] - prefix[lo : lo + windows]
        hashes *= inverse[lo : lo + windows]
        offsets = np.array([0, windows])
    else:
        spread = max(units.size - n + 1, 0)
        every = prefix[n:] - prefix[:spread]
        every *= inverse[:spread]
        short = (count > 0) & (count < n)
        per_doc = np.where(short, 1, np.maximum(count - n + 1, 0))
        if short.any():
            start = first[short]
            whole = prefix[start + count[short]] - prefix[start]
            whole *= inverse[start]
            every = np.concatenate([every, whole])
            first = np.where(short, spread + np.cumsum(short) - 1, first)
        hashes = every[_ragged_arange(first, per_doc)]
        offsets = np.zeros(count.size + 1, dtype=np.int64)
        np.cumsum(per_doc, out=offsets[1:])
    # The seed enters here so that every slot of the signature depends on it. Then one
    # multiply: the high half of the product depends on every bit; it is read in place.
    hashes += seed
    hashes *= _MIX
    return hashes.view(np.uint32)[_HIGH_HALF::2].copy(), offsets


def _word_shingles(folded: U32, starts: I64, n: int, seed: int) -> tuple[U32, I64]:
    # Words are maximal runs of non-spaces. The batch starts and ends with a space, so the
    # changes alternate: the last space before a word, the word's last letter, and so on.
    letters = folded != SPACE
    edges = np.flatnonzero(letters[1:] != letters[:-1])
    before, last = edges[0::2], edges[1::2]
    # Polynomial hash of every word from a prefix sum over the code points, in 32 bits (twice
    # as fast as 64 here; the n-gram hash over the word hashes is 64-bit).
    prefix = folded * _power_table(_P, folded.size, np.uint32)
    np.cumsum(prefix, dtype=np.uint32, out=prefix)
    words = prefix[last]
    words -= prefix[before]
    words *= _power_table(_P_INVERSE, folded.size + 1, np.uint32)[1:][before]
    if starts.size == 2:
        first, count = np.zeros(1, dtype=np.int64), np.array([words.size])
    else:
        bounds = np.searchsorted(before, starts - 1)
        first, count = bounds[:-1], np.diff(bounds)
    return _window_hashes(words, first, count, n, seed)


def _char_shingles(folded: U32, starts: I64, n: int, seed: int) -> tuple[U32, I64]:
    # Collapse: keep a space only after a non-space. Each text then reads exactly as
    # ``normalise`` gives it, followed by one space (none if it is empty).
    letters = folded != SPACE
    keep = letters.copy()
    keep[1:] |= letters[:-1]
    kept_before = np.zeros(folded.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    first = kept_before[starts]
    count = np.maximum(np.diff(first) - 1, 0)
    return _window_hashes(folded[keep], first[:-1], count, n, seed)


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


def _shingles(texts: Sequence[str], config: MinHashConfig) -> tuple[U32, I64]:
    """Sorted unique shingle hashes of a chunk of texts, concatenated, with offsets."""
    if len(texts) == 1:  # the online path: spare the bookkeeping of a batch
        size = len(texts[0])
        folded, starts = _fold(texts, np.array([size]), np.array([1, size + 2]))
    else:
        folded, starts = _folded_batch(texts)
    shingle = _word_shingles if config.unit == "word" else _char_shingles
    return _sort_unique(*shingle(folded, starts, config.ngram, _splitmix64(config.seed, 1)[0]))


def shingle_hashes(text: str, config: MinHashConfig) -> U32:
    """Sorted unique ``uint32`` hashes of the n-gram shingles of ``normalise(text)``.

    A text shorter than ``config.ngram`` units gives one shingle of all of it; a text with
    no letters or numbers gives an empty array.
    """
    return _shingles([text], config)[0]


def shingle_hashes_many(texts: Sequence[str], config: MinHashConfig) -> list[U32]:
    """``shingle_hashes`` of every text, vectorised over the batch: per text, the only
    Python work is taking its length and slicing out its result."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    out: list[U32] = []
    # About _CHUNK code points at a time; the results of a chunk share one array.
    for lo, hi in _runs(lengths + 1, _CHUNK):
        out.extend(_split(*_shingles(texts[lo:hi], config)))
    return out


# --------------------------------------------------------------------------- signatures


def _runs(weights: I64, limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges of items weighing about ``limit`` together (one item at least)."""
    ends = np.cumsum(weights)
    total = int(ends[-1]) if ends.size else 0
    if total <= limit:
        return [(0, weights.size)] if weights.size else []
    cuts = np.searchsorted(ends, np.arange(limit, total, limit), side="right")
    bounds = sorted({0, *(cuts + 1).tolist(), weights.size} - {weights.size + 1})
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if lo < hi]


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


# --------------------------------------------------------------------------- index


@dataclass(frozen=True, slots=True)
class Candidate:
    """An indexed document whose shingle set is at least ``threshold`` similar to a query's."""

    key: int  # the caller's key of the indexed document (e.g. an eval record's seq)
    jaccard: float  # exact Jaccard similarity of the two shingle sets, not the estimate


_MAGIC = b"SLMHLSH\0"
_FORMAT = 1
_HEADER = struct.Struct("<8sHHIIBdQIIQQQ")
_DIGEST = 16
_UNITS: tuple[Literal["word"], Literal["char"]] = ("word", "char")


class _Run:
    """Band entries ``key << 32 | document``, sorted, with the start of every bucket of keys
    sharing their top bits (about two entries per bucket): a lookup then costs two memory
    accesses where a binary search in a large array costs some twenty cache misses."""

    __slots__ = ("entries", "shift", "starts")

    def __init__(self, entries: U64) -> None:
        self.entries = entries
        bits = min(max(entries.size.bit_length() - 1, 1), 26)
        self.shift = np.uint64(64 - bits)
        counts = np.bincount((entries >> self.shift).astype(np.intp), minlength=1 << bits)
        # int32 when it can: half the memory to miss in.
        small = entries.size < 1 << 31
        self.starts: npt.NDArray[np.integer] = np.zeros(
            counts.size + 1, dtype=np.int32 if small else np.int64
        )
        np.cumsum(counts, out=self.starts[1:])

    def find_one(self, keys: U64) -> list[int]:
        """The documents of the entries with one of a few ``keys`` (one query's bands):
        ``find`` with the bookkeeping in plain Python, cheaper for a handful of keys."""
        bucket = (keys >> (self.shift - np.uint64(32))).astype(np.intp)
        at: list[int] = []
        owner: list[int] = []
        for key, (lo, hi) in zip(
            keys.tolist(), self.starts[bucket[:, None] + _BOUNDS].tolist(), strict=True
        ):
            at.extend(range(lo, hi))
            owner.extend([key] * (hi - lo))
        if not at:
            return []
        return [
            entry & _LOW32
            for entry, key in zip(self.entries[at].tolist(), owner, strict=True)
            if entry >> 32 == key
        ]

    def find(self, keys: U64) -> tuple[I64, I64]:
        """``(i, e)``: entry ``e`` has key ``keys[i]``, for every such pair."""
        bucket = (keys >> (self.shift - np.uint64(32))).astype(np.intp)
        start = self.starts[bucket]
        count = self.starts[bucket + 1] - start
        at = _ragged_arange(start, count)
        needle = np.repeat(np.arange(keys.size), count)
        match = (self.entries[at] >> np.uint64(32)) == keys[needle]
        return needle[match], at[match]


_NO_ENTRIES = np.zeros(0, dtype=np.uint64)
_BOUNDS = np.array([0, 1])  # a bucket's start and the next one's: its end


class LSHIndex:
    """Documents' band keys and shingle sets; queries return the documents whose exact
    Jaccard similarity with the query reaches the threshold.

    A band key is 32 bits: an unrelated document matches one of a query's bands with
    probability ``bands * len(index) / 2**32`` (under 1 in 2,000 for 100,000 documents),
    and exact verification discards it. Entries are ``key << 32 | document`` in one sorted
    ``uint64`` array (so at most 2**32 documents), plus a sorted run of recent additions that
    is merged in once it holds an eighth as many: alternating single additions and queries
    (the online path) stay cheap. Not safe for concurrent use.
    """

    def __init__(self, config: MinHashConfig) -> None:
        self.config = config
        self._hasher = MinHasher(config)
        self._bands, self._rows = config.banding
        constants = _splitmix64(config.seed ^ 0x5EED_BA4D, self._rows + self._bands)
        self._row_weights = np.array(constants[: self._rows], dtype=np.uint64)
        self._band_salts = np.array(constants[self._rows :], dtype=np.uint64)
        self._keys: list[int] = []
        self._sets: list[U32] = []
        self._sizes = np.zeros(0, dtype=np.int64)
        self._main = self._recent = _Run(_NO_ENTRIES)
        self._pending: list[U64] = []

    def __len__(self) -> int:
        return len(self._keys)

    def _band_keys(self, signatures: U32) -> U64:
        """``(n, bands)`` 32-bit keys (as uint64): each band's rows combined with random
        weights, salted by band so that one sorted array can hold every band, then mixed."""
        n = signatures.shape[0]
        rows = signatures[:, : self._bands * self._rows].reshape(n, self._bands, self._rows)
        keys: U64 = rows @ self._row_weights  # uint64 arithmetic wraps, as wanted
        keys += self._band_salts
        # One xorshift-multiply: the high half of the product depends on every bit.
        keys ^= keys >> np.uint64(32)
        keys *= _MIX
        keys >>= np.uint64(32)
        return keys

    def _signatures(self, flat: U32, offsets: I64, given: U32 | None, lo: int, hi: int) -> U32:
        if given is None:
            return self._hasher._sketch(flat, offsets).reshape(hi - lo, -1)
        return given[lo:hi]

    def add(
        self,
        keys: Sequence[int],
        shingle_sets: Sequence[npt.NDArray[np.integer]],
        *,
        signatures: U32 | None = None,
    ) -> None:
        """Index documents under the caller's integer keys (which need not be unique).
        ``signatures``, if given, must be ``MinHasher(config).signatures(shingle_sets)``
        (saves computing them twice). Documents with no shingles are kept but never match."""
        if len(keys) != len(shingle_sets):
            raise ValueError("keys and shingle_sets differ in length")
        key_list = [int(k) for k in keys]
        if any(not -(1 << 63) <= k < 1 << 63 for k in key_list):
            raise ValueError("keys must fit in 64 signed bits")
        given = self._check(signatures, len(shingle_sets))
        if len(self._keys) + len(key_list) > _LOW32:
            raise ValueError("an index holds at most 2**32 - 1 documents")
        sets: list[U32] = []
        lengths: list[int] = []
        for lo, hi, flat, offsets in self._hasher._batches(shingle_sets):
            sets.extend(_split(flat, offsets))
            sizes = np.diff(offsets)
            lengths.extend(sizes.tolist())
            present = np.flatnonzero(sizes > 0)
            band = self._band_keys(self._signatures(flat, offsets, given, lo, hi)[present])
            band <<= np.uint64(32)
            band |= (present + len(self._keys) + lo).astype(np.uint64)[:, None]
            self._pending.append(band.ravel())
        self._keys.extend(key_list)
        self._sets.extend(sets)
        self._sizes = np.concatenate([self._sizes, np.array(lengths, dtype=np.int64)])

    def _check(self, signatures: U32 | None, count: int) -> U32 | None:
        if signatures is not None and (
            signatures.dtype != np.uint32 or signatures.shape != (count, self.config.num_perm)
        ):
            raise ValueError("signatures must be uint32 of shape (len(shingle_sets), num_perm)")
        return signatures

    def _settle(self) -> None:
        """Fold pending additions into the sorted runs."""
        if self._pending:
            # New entries arrive in document order, keys at random: a plain sort; then a
            # stable sort of two sorted runs, which is one merge.
            added = np.sort(np.concatenate(self._pending))
            self._recent = _Run(
                np.sort(np.concatenate([self._recent.entries, added]), kind="stable")
            )
            self._pending = []
        if self._recent.entries.size * 8 >= self._main.entries.size:
            self._main = _Run(self._entries())
            self._recent = _Run(_NO_ENTRIES)

    def _entries(self) -> U64:
        merged: U64 = np.sort(
            np.concatenate([self._main.entries, self._recent.entries]), kind="stable"
        )
        return merged

    def query(self, shingles: npt.NDArray[np.integer]) -> list[Candidate]:
        """Indexed documents with exact Jaccard similarity >= threshold, best first (ties in
        the order they were added).

        The same answer as ``query_many([shingles])[0]``, by a path with as few numpy calls
        as possible: for one document, their fixed cost is most of the time.
        """
        self._settle()
        flat, offsets = _concat_sets([shingles])
        if flat.size == 0:
            return []
        wanted = self._band_keys(self._hasher._sketch(flat, offsets).reshape(1, -1)).ravel()
        found: set[int] = set()
        for run in (self._main, self._recent):
            if run.entries.size:
                found.update(run.find_one(wanted))
        threshold, size = self.config.threshold, flat.size
        hits: list[tuple[float, int]] = []
        for doc in found:
            other = self._sets[doc]
            if min(size, other.size) < threshold * max(size, other.size):
                continue
            if size == other.size and np.array_equal(flat, other):
                inter = size
            else:
                at = np.minimum(np.searchsorted(other, flat), other.size - 1)
                inter = int(np.count_nonzero(other[at] == flat))
            similarity = inter / (size + other.size - inter)
            if similarity >= threshold:
                hits.append((-similarity, doc))
        hits.sort()
        return [Candidate(self._keys[doc], -negative) for negative, doc in hits]

    def query_many(
        self,
        shingle_sets: Sequence[npt.NDArray[np.integer]],
        *,
        signatures: U32 | None = None,
    ) -> list[list[Candidate]]:
        """``query`` for every set, as one vectorised batch (``signatures`` as in ``add``)."""
        given = self._check(signatures, len(shingle_sets))
        self._settle()
        results: list[list[Candidate]] = []
        for lo, hi, flat, offsets in self._hasher._batches(shingle_sets):
            results.extend(
                self._answer(flat, offsets, self._signatures(flat, offsets, given, lo, hi))
            )
        return results

    def _answer(self, flat: U32, offsets: I64, signatures: U32) -> list[list[Candidate]]:
        count = offsets.size - 1
        queries, docs = self._candidates(offsets, signatures)
        if queries.size == 0:
            return [[] for _ in range(count)]
        inter, union = self._overlap(flat, offsets, queries, docs)
        # The decision is inter / union >= t, on the float division anyone would do.
        similarity = inter / union
        hit = similarity >= self.config.threshold
        queries, docs, similarity = queries[hit], docs[hit], similarity[hit]
        order = np.lexsort((docs, -similarity, queries))
        keys = self._keys
        found = list(
            map(Candidate, [keys[d] for d in docs[order].tolist()], similarity[order].tolist())
        )
        # Each query's answers are one slice of the sorted list (an empty one if none).
        bounds = np.searchsorted(queries[order], np.arange(count + 1)).tolist()
        return [found[lo:hi] for lo, hi in itertools.pairwise(bounds)]

    def _candidates(self, offsets: I64, signatures: U32) -> tuple[I64, I64]:
        """Distinct (query, document) pairs sharing a band key and passing the size filter."""
        lengths = np.diff(offsets)
        present = np.flatnonzero(lengths > 0)
        wanted = self._band_keys(signatures[present]).ravel()
        owner = np.repeat(present, self._bands)
        queries: list[I64] = []
        docs: list[I64] = []
        for run in (self._main, self._recent):
            if run.entries.size == 0:
                continue
            needle, at = run.find(wanted)
            queries.append(owner[needle])
            docs.append((run.entries[at] & _LOW32).astype(np.int64))
        if not queries:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        pairs = (np.concatenate(queries) << 32) | np.concatenate(docs)
        # Pairs come out grouped by query: a merge sort makes short work of that.
        pairs.sort(kind="stable")
        distinct = np.ones(pairs.size, dtype=bool)
        np.not_equal(pairs[1:], pairs[:-1], out=distinct[1:])
        q, d = pairs[distinct] >> 32, pairs[distinct] & _LOW32
        # A pair can reach J >= t only if t * max(|A|, |B|) <= min(|A|, |B|).
        a, b = lengths[q], self._sizes[d]
        fits = np.minimum(a, b) >= self.config.threshold * np.maximum(a, b)
        return q[fits], d[fits]

    def _overlap(self, flat: U32, offsets: I64, queries: I64, docs: I64) -> tuple[I64, I64]:
        """Exact intersection and union sizes of the pairs' shingle sets.

        Identical sets (exact copies, and every document queried against itself) are
        recognised by comparing the arrays; the others by searching each query shingle in
        the document's sorted set, all pairs at once, after prefixing both sides' hashes
        with the pair number so that one sorted array holds every pair.
        """
        a = offsets[queries + 1] - offsets[queries]
        b = self._sizes[docs]
        inter = np.zeros(queries.size, dtype=np.int64)
        same = np.flatnonzero(a == b)
        if same.size:
            left = flat[_ragged_arange(offsets[queries[same]], a[same])]
            right = np.concatenate([self._sets[d] for d in docs[same].tolist()])
            differ = np.add.reduceat(left != right, np.cumsum(a[same]) - a[same])
            inter[same[differ == 0]] = a[same[differ == 0]]
        pairs = np.flatnonzero(inter == 0)
        if pairs.size:
            q, d = queries[pairs], docs[pairs]
            tag = np.arange(pairs.size, dtype=np.uint64) << 32
            left = flat[_ragged_arange(offsets[q], a[pairs])] | np.repeat(tag, a[pairs])
            right = np.concatenate([self._sets[i] for i in d.tolist()]) | np.repeat(tag, b[pairs])
            at = np.minimum(np.searchsorted(right, left), right.size - 1)
            found = right[at] == left
            inter[pairs] = np.bincount(
                np.repeat(np.arange(pairs.size), a[pairs])[found], minlength=pairs.size
            )
        return inter, a + b - inter

    @classmethod
    def merge(cls, indexes: Sequence[LSHIndex]) -> LSHIndex:
        """One index holding the documents of all ``indexes`` (same configuration), in order;
        nothing is re-hashed."""
        if not indexes:
            raise ValueError("nothing to merge")
        config = indexes[0].config
        if any(index.config != config for index in indexes):
            raise ValueError("cannot merge indexes with different configurations")
        if sum(map(len, indexes)) > _LOW32:
            raise ValueError("an index holds at most 2**32 - 1 documents")
        merged = cls(config)
        runs: list[U64] = []
        for index in indexes:
            index._settle()
            # Document numbers are the low halves: shift them past the documents before.
            shift = np.uint64(len(merged._keys))
            runs.extend(run.entries + shift for run in (index._main, index._recent))
            merged._keys.extend(index._keys)
            merged._sets.extend(index._sets)
        merged._sizes = np.concatenate([index._sizes for index in indexes])
        merged._main = _Run(np.sort(np.concatenate(runs), kind="stable"))
        return merged

    def to_bytes(self) -> bytes:
        """The whole index: a versioned header with the configuration, the keys, shingle sets
        and sorted band entries as little-endian arrays, and a BLAKE2b digest of it all."""
        self._settle()
        entries = self._entries()
        shingles = np.concatenate(self._sets) if self._sets else np.zeros(0, np.uint32)
        config = self.config
        header = _HEADER.pack(
            _MAGIC,
            _FORMAT,
            _ALGORITHM,
            config.num_perm,
            config.ngram,
            _UNITS.index(config.unit),
            config.threshold,
            config.seed,
            config.bands or 0,
            config.rows or 0,
            len(self._keys),
            shingles.size,
            entries.size,
        )
        body = b"".join(
            [
                header,
                np.array(self._keys, dtype="<i8").tobytes(),
                self._sizes.astype("<u4").tobytes(),
                shingles.astype("<u4", copy=False).tobytes(),
                entries.astype("<u8", copy=False).tobytes(),
            ]
        )
        return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> LSHIndex:
        """An index from ``to_bytes`` output, without re-hashing anything; ``ValueError`` if
        the data is truncated, corrupt, or from an incompatible version."""
        view = memoryview(data).cast("B")
        if len(view) < _HEADER.size + _DIGEST:
            raise ValueError("not a serialised LSH index: too short")
        body = view[:-_DIGEST]
        if hashlib.blake2b(body, digest_size=_DIGEST).digest() != view[-_DIGEST:]:
            raise ValueError("corrupt LSH index: digest mismatch")
        fields = _HEADER.unpack_from(body)
        magic, version, algorithm, num_perm, ngram, unit, threshold, seed = fields[:8]
        bands, rows, n, total, count = fields[8:]
        if magic != _MAGIC:
            raise ValueError("not a serialised LSH index: bad magic")
        if version != _FORMAT or algorithm != _ALGORITHM:
            raise ValueError(
                f"LSH index format {version}/algorithm {algorithm} is not supported "
                f"(this version reads {_FORMAT}/{_ALGORITHM}); rebuild it from the texts"
            )
        if unit >= len(_UNITS):
            raise ValueError("corrupt LSH index: unknown unit")
        config = MinHashConfig(
            num_perm=num_perm,
            ngram=ngram,
            unit=_UNITS[unit],
            threshold=threshold,
            seed=seed,
            bands=bands or None,
            rows=rows or None,
        )
        if len(body) != _HEADER.size + 12 * n + 4 * total + 8 * count:
            raise ValueError("corrupt LSH index: sizes do not match the header")
        at = _HEADER.size
        keys = np.frombuffer(body, dtype="<i8", count=n, offset=at)
        sizes = np.frombuffer(body, dtype="<u4", count=n, offset=at + 8 * n).astype(np.int64)
        shingles = np.frombuffer(body, dtype="<u4", count=total, offset=at + 12 * n)
        entries = np.frombuffer(body, dtype="<u8", count=count, offset=at + 12 * n + 4 * total)
        index = cls(config)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        rising = np.ones(shingles.size, dtype=bool)
        np.greater(shingles[1:], shingles[:-1], out=rising[1:])
        rising[offsets[:-1][sizes > 0]] = True
        if (
            offsets[-1] != total
            or count != index._bands * np.count_nonzero(sizes)
            or not rising.all()
            or np.any(entries[1:] < entries[:-1])
            or np.any((entries & _LOW32) >= n)
        ):
            raise ValueError("corrupt LSH index: inconsistent contents")
        index._keys = keys.tolist()
        index._sets = _split(shingles.astype(np.uint32, copy=False), offsets)
        index._sizes = sizes
        index._main = _Run(entries.astype(np.uint64, copy=False))
        return index
