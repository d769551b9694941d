"""The LSH index: band keys of MinHash signatures in one sorted array with a table of bucket
starts, candidates verified on the exact Jaccard similarity of the stored shingle sets, and a
versioned, digest-checked serialisation."""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from silolearn.ingest.minhash.arrays import (
    _LOW32,
    I64,
    U32,
    U64,
    _concat_sets,
    _ragged_arange,
    _split,
)
from silolearn.ingest.minhash.config import _ALGORITHM, MinHashConfig, _splitmix64
from silolearn.ingest.minhash.shingles import _MIX
from silolearn.ingest.minhash.signatures import MinHasher


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
