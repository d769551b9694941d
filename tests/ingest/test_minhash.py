"""Tests for the MinHash-LSH near-duplicate filter: normalisation and hashing against a
pure-Python specification, estimate quality against datasketch, recall and precision on planted
near-duplicates of real text, serialisation, determinism across processes."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from silolearn.datasets import bbc_news, health_tweets, rotten_tomatoes
from silolearn.ingest.minhash import (
    Candidate,
    LSHIndex,
    MinHashConfig,
    MinHasher,
    choose_banding,
    normalise,
    normalise_many,
    shingle_hashes,
    shingle_hashes_many,
)

CONFIG = MinHashConfig()
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1

# ----------------------------------------------------------------------------- specification
# The hash functions written out in plain Python, from their definitions. Indexes are stored
# and compared across processes and versions, so these values must never change silently:
# a change here needs a new algorithm version in the module.
P, Q, MIX = 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD
ROUNDS = 4


def splitmix64(seed: int, count: int) -> list[int]:
    out, state = [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def fold_reference(text: str) -> str:
    """NFKC, casefold, everything but letters, marks and numbers to spaces, collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in folded)
    return " ".join(kept.split())


def shingles_reference(text: str, config: MinHashConfig = CONFIG) -> list[int]:
    normal = fold_reference(text)
    if config.unit == "word":
        units = [
            sum(ord(c) * pow(P, i, 1 << 32) for i, c in enumerate(word)) & MASK32
            for word in normal.split()
        ]
    else:
        units = [ord(c) for c in normal]
    if not units:
        return []
    span = min(len(units), config.ngram)
    seed = splitmix64(config.seed, 1)[0]
    hashes = set()
    for i in range(len(units) - span + 1):
        x = sum(u * pow(Q, j, 1 << 64) for j, u in enumerate(units[i : i + span])) & MASK64
        hashes.add((((x + seed) & MASK64) * MIX & MASK64) >> 32)
    return sorted(hashes)


def signature_reference(shingles: Sequence[int], config: MinHashConfig = CONFIG) -> list[int]:
    """Slot j: the shingle with the smallest (round, rank) among rounds landing it in j, else
    the smallest per-slot fallback rank; ranks are affine bijections mod 2**32."""
    k = config.num_perm
    constants = splitmix64(config.seed, 1 + 2 * (ROUNDS + k))[1:]
    words = [c & MASK32 for c in constants]
    a = [w | 1 for w in words[0::2]]
    b = words[1::2]
    a[0], b[0] = 1, 0
    width = -(-(1 << 32) // k)
    best: dict[int, tuple[int, int, int]] = {}
    for x in shingles:
        for r in range(ROUNDS):
            y = (a[r] * x + b[r]) & MASK32
            slot = y // width
            best[slot] = min(best.get(slot, (ROUNDS + 1, 0, 0)), (r, y, x))
    out = []
    for j in range(k):
        if j in best:
            out.append(best[j][2])
        elif shingles:
            fallback = [((a[ROUNDS + j] * x + b[ROUNDS + j]) & MASK32, x) for x in shingles]
            out.append(min(fallback)[1])
        else:
            out.append(MASK32)
    return out


def word_ngrams(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = fold_reference(text).split()
    if not words:
        return set()
    span = min(len(words), n)
    return {tuple(words[i : i + span]) for i in range(len(words) - span + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


# ----------------------------------------------------------------------------- real text


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return [r["text"] for r in rotten_tomatoes() if len(r["text"].split()) >= 12]


@pytest.fixture(scope="module")
def articles() -> list[str]:
    return [r["text"] for r in bbc_news()]


@pytest.fixture(scope="module")
def tweets() -> list[str]:
    return [r["text"] for r in health_tweets()]


TRICKY = [
    "",
    "   \t\n ",
    "one",
    "two words",
    "Straße STRASSE straße",  # multi-letter case folding
    "ﬁnancial ﬂows ½ ²",  # ligatures, fractions, superscripts (NFKC)
    "cafe\u0301 café CAFÉ",  # decomposed and composed accents
    "\u1100\u1161 \u3131\u314f 가",  # Hangul jamo that compose
    # astral letters without and with case: mathematical bold "Bold", Deseret
    "\U0001d401\U0001d428\U0001d425\U0001d41d and \U00010400\U00010428 Deseret",
    "emoji 🙂👍🏽 between words",
    "lone \ud800 surrogate",
    "NBSP\u00a0here… and “quotes” — dashes",
    "ΣΊΣΥΦΟΣ σίσυφος",  # final sigma
    "\u0130stanbul \u0131I",  # dotted capital I folds to two code points; dotless i
    "tab\tnew\nline\r\nnul\x00end",
    "हिन्दी पाठ के शब्द",  # Devanagari with vowel signs
    "a b c d e f g",
]


def test_normalise_examples() -> None:
    assert normalise("  Hello,   WORLD!\n") == "hello world"
    assert normalise("Don't stop—believing…") == "don t stop believing"
    assert normalise("ﬁne Straße") == "fine strasse"
    assert normalise("cafe\u0301") == "café"
    assert normalise("!!! ...") == ""
    for text in TRICKY:
        assert normalise(text) == fold_reference(text)


def test_batch_normalisation_matches_the_reference(
    reviews: list[str], articles: list[str], tweets: list[str]
) -> None:
    texts = [*reviews[:2000], *articles[:200], *tweets[:5000], *TRICKY]
    assert normalise_many(texts) == [fold_reference(t) for t in texts]


def test_shingles_match_the_specification_on_real_text(
    reviews: list[str], articles: list[str], tweets: list[str]
) -> None:
    texts = [*reviews[:300], *articles[:40], *tweets[:600], *TRICKY]
    for text, fast in zip(texts, shingle_hashes_many(texts, CONFIG), strict=True):
        assert fast.dtype == np.uint32
        assert fast.tolist() == shingles_reference(text)
    char = MinHashConfig(unit="char", ngram=4)
    for text, fast in zip(texts[:200], shingle_hashes_many(texts[:200], char), strict=True):
        assert fast.tolist() == shingles_reference(text, char)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(
                [*"abcXYZ09 .,-'\n", "ß", "é", "e\u0301", "ﬁ", "\u00a0", "…", "🙂", "Σ", "ς"]
            ),
            max_size=60,
        ).map("".join),
        max_size=6,
    )
)
def test_batch_and_single_shingling_agree_with_the_specification(texts: list[str]) -> None:
    batch = shingle_hashes_many(texts, CONFIG)
    for text, hashes in zip(texts, batch, strict=True):
        assert hashes.tolist() == shingles_reference(text)
        assert np.array_equal(shingle_hashes(text, CONFIG), hashes)


def test_short_and_empty_texts() -> None:
    assert shingle_hashes("", CONFIG).size == 0
    assert shingle_hashes("?!", CONFIG).size == 0
    # Fewer than five words: one shingle of all of them.
    assert shingle_hashes("only three words", CONFIG).size == 1
    assert shingle_hashes("a b c d e f", CONFIG).size == 2


def test_exact_jaccard_equals_python_sets_on_real_text(reviews: list[str]) -> None:
    rng = random.Random(7)
    for text in reviews[:400]:
        words = text.split()
        edited = list(words)
        for _ in range(rng.randint(0, 4)):
            edited[rng.randrange(len(edited))] = rng.choice(["banana", "kettle", "ocean"])
        other = " ".join(edited)
        a, b = shingle_hashes(text, CONFIG), shingle_hashes(other, CONFIG)
        exact = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        assert exact == pytest.approx(jaccard(word_ngrams(text), word_ngrams(other)))


# ----------------------------------------------------------------------------- signatures


def test_signatures_match_the_specification(
    reviews: list[str], articles: list[str], tweets: list[str]
) -> None:
    # Short and long texts, and one long enough to be sketched round by round on its own.
    sets = shingle_hashes_many(
        [*tweets[:60], *reviews[:60], *articles[:20], "", "x", " ".join(articles[:40])], CONFIG
    )
    hasher = MinHasher(CONFIG)
    batch = hasher.signatures(sets)
    assert batch.shape == (len(sets), 128) and batch.dtype == np.uint32
    for row, shingles in zip(batch, sets, strict=True):
        assert row.tolist() == signature_reference(shingles.tolist())
        assert np.array_equal(hasher.signature(shingles), row)


def test_signature_paths_agree_on_a_large_batch(tweets: list[str], articles: list[str]) -> None:
    # Thousands of documents take the round-by-round path with both fallbacks; one at a
    # time, the all-rounds path. Same definition, same answer.
    sets = shingle_hashes_many([*tweets[:3000], *articles[:300]], CONFIG)
    hasher = MinHasher(CONFIG)
    batch = hasher.signatures(sets)
    for i in range(0, len(sets), 97):
        assert np.array_equal(hasher.signature(sets[i]), batch[i])


def test_unsorted_input_is_sorted_first() -> None:
    shingles = shingle_hashes("the quick brown fox jumps over the lazy dog again", CONFIG)
    hasher = MinHasher(CONFIG)
    shuffled = np.concatenate([shingles[::-1], shingles[:2]])
    assert np.array_equal(hasher.signature(shuffled), hasher.signature(shingles))
    with pytest.raises(ValueError, match="uint32"):
        hasher.signature(shingles.astype(np.int64))


def test_estimate_quality_against_datasketch(reviews: list[str], articles: list[str]) -> None:
    """Pairs at known Jaccard (edits of real text); our signature agreement estimates it at
    least about as well as datasketch's MinHash does on the same shingles, without bias."""
    rng = random.Random(3)
    hasher = MinHasher(CONFIG)
    ours, theirs, truth = [], [], []
    for text in [*reviews[:300], *articles[:60]]:
        words = text.split()
        edited = list(words)
        for _ in range(rng.randint(0, max(1, len(words) // 6))):
            edited[rng.randrange(len(edited))] = f"w{rng.randrange(10**6)}"
        a_grams, b_grams = word_ngrams(text), word_ngrams(" ".join(edited))
        truth.append(jaccard(a_grams, b_grams))
        a, b = shingle_hashes(text, CONFIG), shingle_hashes(" ".join(edited), CONFIG)
        ours.append(float(np.mean(hasher.signature(a) == hasher.signature(b))))
        sketches = []
        for grams in (a_grams, b_grams):
            sketch = MinHash(num_perm=128, seed=1)
            sketch.update_batch([" ".join(g).encode() for g in grams])
            sketches.append(sketch)
        theirs.append(sketches[0].jaccard(sketches[1]))
    t, o, d = np.array(truth), np.array(ours), np.array(theirs)
    bound = 3 / math.sqrt(CONFIG.num_perm)
    assert np.mean(np.abs(o - t) <= bound) >= 0.99
    assert np.mean(np.abs(o - t)) <= 1.25 * np.mean(np.abs(d - t)) + 0.005
    assert abs(np.mean(o - t)) < 0.01  # collision probability is the Jaccard similarity


# ----------------------------------------------------------------------------- banding


def test_banding() -> None:
    assert CONFIG.banding == choose_banding(0.8, 128) == (16, 6)
    bands, rows = CONFIG.banding
    assert (1 - 0.8**rows) ** bands <= 0.01
    assert MinHashConfig(bands=9, rows=13).banding == (9, 13)
    for threshold in (0.5, 0.7, 0.9, 0.95):
        b, r = choose_banding(threshold, 128)
        assert b * r <= 128 and (1 - threshold**r) ** b <= 0.01


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_perm": 1},
        {"ngram": 0},
        {"unit": "byte"},
        {"threshold": 0.0},
        {"seed": -1},
        {"bands": 4},
        {"bands": 20, "rows": 7},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MinHashConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the index


def _edit(text: str, rng: random.Random, kind: str) -> str:
    words = text.split()
    if kind == "swap":  # one adjacent transposition
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    if kind == "surface":  # case and punctuation only: identical after normalisation
        return text.upper().replace(",", " ,").replace(".", "!")
    if kind == "sentence":  # a sentence appended
        return f"{text} This sentence was added at the end by someone."
    if kind == "few":  # a few words replaced: close to the threshold on either side
        for _ in range(max(1, len(words) // 45)):
            words[rng.randrange(len(words))] = f"x{rng.randrange(10**6)}"
        return " ".join(words)
    if kind == "spread":  # every fifteenth word replaced: J near 0.5
        return " ".join(f"y{i}" if i % 15 == 7 else w for i, w in enumerate(words))
    raise AssertionError(kind)


def test_planted_near_duplicates_are_found_and_nothing_below_the_threshold(
    reviews: list[str], articles: list[str]
) -> None:
    rng = random.Random(11)
    corpus = [*articles[:400], *[t for t in reviews if len(t.split()) >= 40][:1600]]
    index = LSHIndex(CONFIG)
    index.add(range(len(corpus)), shingle_hashes_many(corpus, CONFIG))
    queries, truth = [], []
    for i in rng.sample(range(len(corpus)), 600):
        kind = rng.choice(["swap", "surface", "sentence", "few", "spread"])
        queries.append(_edit(corpus[i], rng, kind))
        truth.append((i, jaccard(word_ngrams(corpus[i]), word_ngrams(queries[-1]))))
    answers = index.query_many(shingle_hashes_many(queries, CONFIG))
    above = below = mid = 0
    for query, (source, exact), found in zip(queries, truth, answers, strict=True):
        keys = {c.key for c in found}
        if exact >= 0.8:
            above += 1
            assert source in keys, (exact, query[:80])
        else:
            below += 1
            assert source not in keys
            mid += 0.4 <= exact <= 0.6
        for candidate in found:  # every answer is exact and at or above the threshold
            assert candidate.jaccard >= 0.8
            expected = jaccard(word_ngrams(corpus[candidate.key]), word_ngrams(query))
            assert candidate.jaccard == pytest.approx(expected)
        assert [c.jaccard for c in found] == sorted((c.jaccard for c in found), reverse=True)
    assert above >= 300 and below >= 100 and mid >= 50


def test_query_agrees_with_query_many_and_incremental_adds(tweets: list[str]) -> None:
    sets = shingle_hashes_many(tweets[:6000], CONFIG)
    bulk = LSHIndex(CONFIG)
    bulk.add(range(6000), sets)
    # The same documents added in small steps between queries: recent and main runs.
    steps = LSHIndex(CONFIG)
    for lo in range(0, 6000, 700):
        steps.add(range(lo, min(lo + 700, 6000)), sets[lo : lo + 700])
        steps.query(sets[lo])
    assert len(bulk) == len(steps) == 6000
    expected = bulk.query_many(sets[:1500])
    assert steps.query_many(sets[:1500]) == expected
    assert [bulk.query(s) for s in sets[:1500]] == expected
    signatures = MinHasher(CONFIG).signatures(sets[:1500])
    assert bulk.query_many(sets[:1500], signatures=signatures) == expected
    # Retweets and repeated headlines: real duplicates beyond each tweet itself.
    assert sum(len(found) for found in expected) > 1500
    assert all(Candidate(i, 1.0) in found for i, found in enumerate(expected) if sets[i].size)
    assert all(type(c.key) is int and type(c.jaccard) is float for f in expected for c in f)


def test_empty_sets_never_match() -> None:
    index = LSHIndex(CONFIG)
    index.add([1, 2], [shingle_hashes("", CONFIG), shingle_hashes("!!", CONFIG)])
    assert len(index) == 2
    assert index.query(shingle_hashes("", CONFIG)) == []
    assert index.query_many([shingle_hashes("", CONFIG)]) == [[]]


def test_serialisation_round_trip(articles: list[str], tweets: list[str]) -> None:
    texts = [*articles[:300], *tweets[:3000]]
    sets = shingle_hashes_many(texts, CONFIG)
    index = LSHIndex(CONFIG)
    index.add(range(10**12, 10**12 + len(texts)), sets)
    data = index.to_bytes()
    loaded = LSHIndex.from_bytes(data)
    assert loaded.config == CONFIG and len(loaded) == len(index)
    probe = sets[::7]
    assert loaded.query_many(probe) == index.query_many(probe)
    assert loaded.to_bytes() == data
    # Merging segments gives the index of all their documents.
    first, second = LSHIndex(CONFIG), LSHIndex(CONFIG)
    first.add(range(10**12, 10**12 + 1000), sets[:1000])
    second.add(range(10**12 + 1000, 10**12 + len(texts)), sets[1000:])
    merged = LSHIndex.merge([LSHIndex.from_bytes(first.to_bytes()), second])
    assert merged.query_many(probe) == index.query_many(probe)


def test_empty_index_round_trip() -> None:
    loaded = LSHIndex.from_bytes(LSHIndex(CONFIG).to_bytes())
    assert len(loaded) == 0
    assert loaded.query(shingle_hashes("nothing to find here at all", CONFIG)) == []
    char = MinHashConfig(unit="char", ngram=4, threshold=0.7, seed=9)
    index = LSHIndex(char)
    index.add([5], [shingle_hashes("character grams", char)])
    again = LSHIndex.from_bytes(index.to_bytes())
    assert again.config == char
    assert again.query(shingle_hashes("Character-grams!", char)) == [Candidate(5, 1.0)]


def test_corrupt_bytes_are_refused(tweets: list[str]) -> None:
    index = LSHIndex(CONFIG)
    index.add(range(500), shingle_hashes_many(tweets[:500], CONFIG))
    data = index.to_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    for bad in (b"", data[:40], data[:-1], bytes(flipped), b"X" + data[1:]):
        with pytest.raises(ValueError):
            LSHIndex.from_bytes(bad)


def test_signatures_are_identical_in_another_process() -> None:
    code = (
        "from silolearn.ingest.minhash import MinHashConfig, MinHasher, shingle_hashes\n"
        "c = MinHashConfig()\n"
        "s = shingle_hashes('Determinism across processes: the same text, the same hashes.', c)\n"
        "print(s.tobytes().hex(), MinHasher(c).signature(s).tobytes().hex())\n"
    )
    shingles = shingle_hashes(
        "Determinism across processes: the same text, the same hashes.", CONFIG
    )
    expected = f"{shingles.tobytes().hex()} {MinHasher(CONFIG).signature(shingles).tobytes().hex()}"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": ":".join(sys.path)},
    )
    assert out.stdout.strip() == expected
    assert np.array_equal(
        MinHasher(CONFIG).signature(shingles), MinHasher(CONFIG).signature(shingles)
    )
