"""Normalisation and n-gram shingle hashes of texts, vectorised over whole batches.

Words are hashed with a polynomial hash over their code points, computed for a whole batch at
once from prefix sums (``sum(x_i * P**i)`` mod 2**32, made position-independent by
multiplying with ``P**-start``), and n-grams with a polynomial over the unit hashes mod 2**64,
then a multiply whose high half is kept. No Python ``hash()`` is used (it is salted per
process): the same text gives the same hashes everywhere.
"""

from __future__ import annotations

import functools
import itertools
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from silolearn.ingest.minhash.arrays import (
    _CHUNK,
    I64,
    U32,
    _ragged_arange,
    _runs,
    _sort_unique,
    _split,
)
from silolearn.ingest.minhash.config import MinHashConfig, _splitmix64
from silolearn.text import FOLD_MAP, SPACE, normalise

# Which uint32 of a uint64 holds its high half, in memory.
_HIGH_HALF = 1 if sys.byteorder == "little" else 0
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
