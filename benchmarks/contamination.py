"""Contamination filter: silolearn's MinHash-LSH with exact verification against datasketch and
rensa, on the same documents, in one process with one thread.

What is measured, per dataset (synthetic: ``--docs`` documents of 100-300 words drawn from a
Zipfian vocabulary of the real corpora's words, 5% of them planted near-duplicates at Jaccard
0.6-0.95; real: the health-news tweets and the BBC articles):

* **end to end**: signatures, index build and a query of every document against the index of
  all of them, from raw text to the list of near-duplicate pairs. All three share the
  normalisation (``normalise_many``: NFKC, case folding, punctuation to spaces) and the word
  5-gram shingles; datasketch and rensa get them as Python strings (``" ".join`` of five
  words, bytes for datasketch), built in chunks of 5,000 documents as a pipeline would.
  silolearn: ``shingle_hashes_many``, ``MinHasher.signatures`` once, ``LSHIndex.add`` and
  ``query_many`` with those signatures; its answers are exact Jaccard >= 0.8.
  datasketch 2: ``MinHash.bulk`` (its recommended batch path, default ``affine32`` scheme) and
  ``MinHashLSH(threshold=0.8, num_perm=128)`` with its own banding, filled through an
  insertion session, one ``query`` per document. rensa: ``RMinHash.from_token_sets`` and
  ``RMinHashLSH(threshold=0.8, num_perm=128, num_bands=16)`` (16 bands of 8 rows),
  ``insert_many`` and ``query_all``.
* **recall and precision** of the returned pairs against the exact truth: every pair of
  documents whose word 5-gram sets (Python tuples) have Jaccard >= 0.8, found by an exact
  all-pairs similarity join (prefix filtering: two sets at J >= t share a token among their
  ``|x| - ceil(t|x|) + 1`` rarest) and verified on the tuple sets. datasketch and rensa return
  LSH candidates; a returned pair counts as correct only if its exact J >= 0.8. The
  "estimate" columns add the usual filter for them, keeping candidates whose signature
  estimate is >= 0.8 (its time is not in the end-to-end figure). Pairs involving a document
  with no shingles are ignored (its empty signature collides with every other empty one).
* **peak memory**: the peak resident set size during the end-to-end run above the resident
  size at its start (VmHWM, reset through ``/proc/self/clear_refs``; where that is not
  available, the ``ru_maxrss`` increase, which only sees new highs). Includes the library's
  native allocations. Before each library's run the garbage collector runs, freed memory
  goes back to the OS (``malloc_trim``) and the surviving objects are frozen (``gc.freeze``),
  so that no library pays for what ran before it; the truth is computed after all of them.
  Each library first runs once on 500 documents, unmeasured (one-time set-up such as
  silolearn's 64K-entry normalisation table is not what is compared).
* **online check**: p50 and p99 wall time of checking one new document (normalise, shingle,
  signature, query) against the index of all documents, over ``--online`` documents (half of
  them near-duplicates of indexed ones). For context, the same percentiles of a fixed piece of
  work (100 small numpy operations) measured in the same run show this machine's jitter.

"x ours" is the library's end-to-end time divided by silolearn's. Quick run:
``python benchmarks/contamination.py --quick``.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

from _common import (
    PeakMemory,
    Table,
    add_output_flags,
    fmt_float,
    fmt_int,
    fmt_ratio,
    limit_threads,
    machine,
    print_json,
    rate,
    render,
)

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import numpy as np
import rensa
from datasketch import MinHash, MinHashLSH

from silolearn import datasets
from silolearn.ingest.minhash import (
    LSHIndex,
    MinHashConfig,
    MinHasher,
    normalise,
    normalise_many,
    shingle_hashes,
    shingle_hashes_many,
)

CONFIG = MinHashConfig()
THRESHOLD, NGRAM, NUM_PERM, SEED = CONFIG.threshold, CONFIG.ngram, CONFIG.num_perm, CONFIG.seed
CHUNK = 5_000
Pairs = set[tuple[int, int]]


# ----------------------------------------------------------------------------- data


def vocabulary() -> list[str]:
    """The 50,000 commonest whitespace tokens of the real corpora, commonest first (case and
    punctuation kept, as text has them)."""
    counts: Counter[str] = Counter()
    for loader in (datasets.bbc_news, datasets.health_tweets, datasets.rotten_tomatoes):
        for row in loader():
            counts.update(row["text"].split())
    return [word for word, _ in counts.most_common(50_000)]


def synthetic(docs: int, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """``docs`` texts: 95% drawn word by word from a Zipfian vocabulary, 5% near-duplicates of
    earlier ones, edited to a Jaccard similarity drawn from 0.6-0.95. Returns the texts and the
    (source, copy) pairs planted."""
    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(), dtype=object)
    weights = 1.0 / np.arange(1, words.size + 1)
    planted_count = docs // 20
    base = docs - planted_count
    lengths = rng.integers(100, 301, base)
    drawn = words[rng.choice(words.size, size=int(lengths.sum()), p=weights / weights.sum())]
    cuts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    texts = [" ".join(drawn[lo:hi]) for lo, hi in pairwise(cuts)]
    planted = []
    for _ in range(planted_count):
        source = int(rng.integers(base))
        texts.append(near_duplicate(texts[source], float(rng.uniform(0.6, 0.95)), rng, words))
        planted.append((source, len(texts) - 1))
    return texts, planted


def near_duplicate(text: str, target: float, rng: np.random.Generator, words: Any) -> str:
    """Edits that move the word 5-gram Jaccard to about ``target``: each edit away from the
    others changes about 5 of the ``m`` shingles, so ``m (1 - t) / (5 (1 + t))`` of them."""
    tokens = text.split()
    edits = max(1, round(len(tokens) * (1 - target) / (5 * (1 + target))))
    for _ in range(edits):
        i = int(rng.integers(len(tokens) - 1))
        kind = rng.integers(4)
        if kind == 0:
            tokens[i] = str(words[rng.integers(words.size)])
        elif kind == 1:
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
        elif kind == 2:
            del tokens[i]
        else:
            tokens.insert(i, str(words[rng.integers(words.size)]))
    if rng.random() < 0.5:  # surface noise that normalisation must see through
        return " ".join(tokens).upper().replace(" ", "  ")
    return " ".join(tokens)


def real(name: str, limit: int) -> list[str]:
    loader = {"tweets": datasets.health_tweets, "bbc": datasets.bbc_news}[name]
    return [row["text"] for row in loader()][:limit]


# ----------------------------------------------------------------------------- truth


def word_ngrams(normal: str) -> list[tuple[str, ...]]:
    words = normal.split()
    span = min(len(words), NGRAM)
    return [tuple(words[i : i + span]) for i in range(len(words) - span + 1)] if words else []


def exact_pairs(texts: Sequence[str]) -> dict[tuple[int, int], float]:
    """Every pair with word 5-gram Jaccard >= THRESHOLD, exactly (prefix-filter join: tokens
    ranked rarest first; candidates verified on the tuple sets)."""
    # The reference normalisation, independent of the vectorised one being measured.
    normals = [normalise(t) for t in texts]
    # Tokens as 64-bit integers (Python's tuple hash, stable within this process) to keep
    # 20M of them in arrays; the final decision is made on the tuple sets themselves.
    sets = [np.unique(np.array([hash(g) for g in word_ngrams(s)], dtype=np.int64)) for s in normals]
    tokens, counts = np.unique(np.concatenate(sets), return_counts=True)
    rank = np.argsort(np.lexsort((tokens, counts)))  # rarest first
    entries: list[tuple[int, int]] = []
    for doc, own in enumerate(sets):
        if own.size == 0:
            continue
        order = np.sort(rank[np.searchsorted(tokens, own)])
        prefix = own.size - math.ceil(THRESHOLD * own.size) + 1
        entries.extend((int(r), doc) for r in order[:prefix])
    entries.sort()
    candidates: set[tuple[int, int]] = set()
    start = 0
    for end in range(1, len(entries) + 1):
        if end == len(entries) or entries[end][0] != entries[start][0]:
            group = [doc for _, doc in entries[start:end]]
            candidates.update((a, b) for i, a in enumerate(group) for b in group[i + 1 :])
            start = end
    truth = {}
    for a, b in candidates:
        small, large = sorted((sets[a].size, sets[b].size))
        if small < THRESHOLD * large:
            continue
        x, y = set(word_ngrams(normals[a])), set(word_ngrams(normals[b]))
        similarity = len(x & y) / len(x | y)
        if similarity >= THRESHOLD:
            truth[(a, b)] = similarity
    return truth


# ----------------------------------------------------------------------------- measuring


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    values = np.array(samples) * 1e6
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def jitter(count: int) -> tuple[float, float]:
    """p50/p99 of fixed work: 100 numpy operations on 1,000 elements."""
    block = np.arange(1000, dtype=np.uint32)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        for _ in range(50):
            scratch = block * 3
            scratch += 1
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def python_shingles(normal: str) -> list[str]:
    """Word 5-grams as strings, the fastest plain-Python way (zip of shifted lists)."""
    words = normal.split()
    if len(words) < NGRAM:
        return [" ".join(words)] if words else []
    return [" ".join(g) for g in zip(*(words[i:] for i in range(NGRAM)), strict=False)]


def pairs_of(answers: Sequence[Sequence[int]], empty: set[int]) -> Pairs:
    return {
        (min(i, j), max(i, j))
        for i, found in enumerate(answers)
        for j in found
        if i != j and i not in empty and j not in empty
    }


# ----------------------------------------------------------------------------- libraries


class Ours:
    name = "silolearn"

    def run(self, texts: Sequence[str]) -> tuple[Pairs, dict[str, float]]:
        stages = {}
        start = time.perf_counter()
        sets = shingle_hashes_many(texts, CONFIG)
        stages["shingles"] = time.perf_counter() - start
        signatures = MinHasher(CONFIG).signatures(sets)
        stages["signatures"] = time.perf_counter() - start - sum(stages.values())
        self.index = LSHIndex(CONFIG)
        self.index.add(range(len(texts)), sets, signatures=signatures)
        stages["index"] = time.perf_counter() - start - sum(stages.values())
        answers = self.index.query_many(sets, signatures=signatures)
        stages["query + verify"] = time.perf_counter() - start - sum(stages.values())
        empty = {i for i, s in enumerate(sets) if s.size == 0}
        return pairs_of([[c.key for c in found] for found in answers], empty), stages

    def online(self, text: str) -> None:
        self.index.query(shingle_hashes(text, CONFIG))

    def estimate(self, pairs: Pairs) -> Pairs:
        return pairs  # already exact


class Rensa:
    name = "rensa"

    def run(self, texts: Sequence[str]) -> tuple[Pairs, dict[str, float]]:
        self.lsh = rensa.RMinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, num_bands=16)
        self.sketches: list[Any] = []
        empty = set()
        for lo in range(0, len(texts), CHUNK):
            tokens = [python_shingles(s) for s in normalise_many(texts[lo : lo + CHUNK])]
            empty.update(lo + i for i, t in enumerate(tokens) if not t)
            chunk = rensa.RMinHash.from_token_sets(tokens, num_perm=NUM_PERM, seed=SEED)
            self.lsh.insert_many(chunk, start_key=lo)
            self.sketches.extend(chunk)
        return pairs_of(self.lsh.query_all(self.sketches), empty), {}

    def online(self, text: str) -> None:
        sketch = rensa.RMinHash(NUM_PERM, SEED)
        sketch.update(python_shingles(normalise_many([text])[0]))
        self.lsh.query(sketch)

    def estimate(self, pairs: Pairs) -> Pairs:
        return {(a, b) for a, b in pairs if self.sketches[a].jaccard(self.sketches[b]) >= 0.8}


class Datasketch:
    name = "datasketch"

    def run(self, texts: Sequence[str]) -> tuple[Pairs, dict[str, float]]:
        self.lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
        self.sketches: list[MinHash] = []
        empty = set()
        with self.lsh.insertion_session() as session:
            for lo in range(0, len(texts), CHUNK):
                tokens = [
                    [g.encode() for g in python_shingles(s)]
                    for s in normalise_many(texts[lo : lo + CHUNK])
                ]
                empty.update(lo + i for i, t in enumerate(tokens) if not t)
                for i, sketch in enumerate(
                    MinHash.bulk(tokens, num_perm=NUM_PERM, seed=SEED), start=lo
                ):
                    session.insert(i, sketch, check_duplication=False)
                    self.sketches.append(sketch)
        answers = [self.lsh.query(sketch) for sketch in self.sketches]
        return pairs_of(answers, empty), {}

    def online(self, text: str) -> None:
        sketch = MinHash(num_perm=NUM_PERM, seed=SEED)
        sketch.update_batch([g.encode() for g in python_shingles(normalise_many([text])[0])])
        self.lsh.query(sketch)

    def estimate(self, pairs: Pairs) -> Pairs:
        return {(a, b) for a, b in pairs if self.sketches[a].jaccard(self.sketches[b]) >= 0.8}


LIBRARIES: dict[str, Callable[[], Any]] = {
    "silolearn": Ours,
    "rensa": Rensa,
    "datasketch": Datasketch,
}


def score(found: Pairs, truth: dict[tuple[int, int], float]) -> tuple[float, float]:
    correct = len(found & truth.keys())
    recall = correct / len(truth) if truth else 1.0
    precision = correct / len(found) if found else 1.0
    return recall, precision


def bench(
    name: str,
    texts: list[str],
    online_texts: list[str],
    libraries: Sequence[str],
) -> dict[str, Any]:
    runs = []
    for library in libraries:
        # Warm-up on a few documents, not measured: one-time set-up (lookup tables, imports
        # of lazily loaded parts) is not what the comparison is about.
        LIBRARIES[library]().run(texts[:500])
        runner = LIBRARIES[library]()
        with PeakMemory() as memory:
            start = time.perf_counter()
            found, stages = runner.run(texts)
            seconds = time.perf_counter() - start
        start = time.perf_counter()
        filtered = runner.estimate(found)
        filter_seconds = time.perf_counter() - start
        samples = []
        for text in online_texts:
            start = time.perf_counter()
            runner.online(text)
            samples.append(time.perf_counter() - start)
        p50, p99 = percentiles(samples) if samples else (math.nan, math.nan)
        runs.append((library, seconds, stages, found, filtered, filter_seconds, memory, p50, p99))
        del runner
        gc.unfreeze()
    jitter_p50, jitter_p99 = jitter(max(len(online_texts), 1000))
    # The truth last: its objects would otherwise weigh on the libraries' runs.
    started = time.perf_counter()
    truth = exact_pairs(texts)
    result: dict[str, Any] = {
        "dataset": name,
        "docs": len(texts),
        "words": sum(len(t.split()) for t in texts),
        "true_pairs": len(truth),
        "truth_seconds": time.perf_counter() - started,
        "jitter_p50_us": jitter_p50,
        "jitter_p99_us": jitter_p99,
        "libraries": [],
    }
    for library, seconds, stages, found, filtered, filter_seconds, memory, p50, p99 in runs:
        recall, precision = score(found, truth)
        recall_est, precision_est = score(filtered, truth)
        result["libraries"].append(
            {
                "library": library,
                "seconds": seconds,
                "docs_per_second": rate(len(texts), seconds),
                "stages": stages,
                "pairs": len(found),
                "recall": recall,
                "precision": precision,
                "estimate_filter_seconds": filter_seconds,
                "recall_estimate": recall_est,
                "precision_estimate": precision_est,
                "peak_mb": memory.mb,
                "memory_method": memory.method,
                "online_p50_us": p50,
                "online_p99_us": p99,
            }
        )
    ours = next((r for r in result["libraries"] if r["library"] == "silolearn"), None)
    for entry in result["libraries"]:
        entry["vs_ours"] = entry["seconds"] / ours["seconds"] if ours else math.nan
    return result


def tables_for(result: dict[str, Any]) -> list[Table]:
    table = Table(
        f"{result['dataset']}: {fmt_int(result['docs'])} documents, "
        f"{fmt_int(result['words'])} words, {fmt_int(result['true_pairs'])} pairs at J >= 0.8",
        [
            "library",
            "end to end s",
            "docs/s",
            "x ours",
            "recall",
            "precision",
            "recall (est)",
            "precision (est)",
            "peak MB",
            "online p50 µs",
            "online p99 µs",
        ],
        note=(
            f"(est): datasketch/rensa candidates kept if their estimate >= 0.8 (silolearn's are "
            f"exact already). Peak memory: {result['libraries'][0]['memory_method']} above the "
            f"start of the run. Machine jitter, fixed 100 numpy ops: p50 "
            f"{result['jitter_p50_us']:.0f} µs, p99 {result['jitter_p99_us']:.0f} µs."
        ),
    )
    for r in result["libraries"]:
        table.add(
            r["library"],
            fmt_float(r["seconds"]),
            fmt_int(r["docs_per_second"]),
            fmt_ratio(r["vs_ours"]),
            fmt_float(r["recall"], 4),
            fmt_float(r["precision"], 4),
            fmt_float(r["recall_estimate"], 4),
            fmt_float(r["precision_estimate"], 4),
            fmt_int(r["peak_mb"]),
            fmt_int(r["online_p50_us"]),
            fmt_int(r["online_p99_us"]),
        )
    tables = [table]
    ours = next((r for r in result["libraries"] if r["library"] == "silolearn"), None)
    if ours:
        stages = Table(f"{result['dataset']}: silolearn stages", ["stage", "seconds", "docs/s"])
        for stage, seconds in ours["stages"].items():
            stages.add(stage, fmt_float(seconds, 3), fmt_int(rate(result["docs"], seconds)))
        tables.append(stages)
    return tables


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="synthetic documents (0: skip)")
    parser.add_argument(
        "--real",
        nargs="*",
        default=["tweets", "bbc"],
        choices=["tweets", "bbc"],
        help="real corpora to run (default: both)",
    )
    parser.add_argument(
        "--real-limit", type=int, default=10**9, help="at most this many documents per corpus"
    )
    parser.add_argument(
        "--online", type=int, default=2_000, help="documents checked one at a time (latency)"
    )
    parser.add_argument(
        "--libraries",
        nargs="*",
        default=list(LIBRARIES),
        choices=list(LIBRARIES),
        help="libraries to run (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument(
        "--quick", action="store_true", help="small run: 10,000 documents, 5,000 tweets, 300 checks"
    )
    add_output_flags(parser)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.real_limit, args.online = min(args.docs, 10_000), 5_000, 300
    return args


def online_texts(texts: list[str], count: int, seed: int) -> list[str]:
    """New documents: half near-duplicates (J about 0.85) of indexed ones, half fresh ones
    made by shuffling the words of indexed documents."""
    rng = np.random.default_rng(seed + 1)
    words = np.array(" ".join(texts[:1000]).split(), dtype=object)
    out = []
    for i in range(count):
        source = texts[int(rng.integers(len(texts)))]
        if i % 2:
            out.append(near_duplicate(source, 0.85, rng, words))
        else:
            tokens = source.split()
            rng.shuffle(tokens)
            out.append(" ".join(tokens))
    return out


def main() -> None:
    args = parse_args()
    limit_threads()
    results = []
    if args.docs > 0:
        texts, _ = synthetic(args.docs, args.seed)
        results.append(
            bench("synthetic", texts, online_texts(texts, args.online, args.seed), args.libraries)
        )
    for corpus in args.real:
        texts = real(corpus, args.real_limit)
        results.append(
            bench(corpus, texts, online_texts(texts, args.online, args.seed), args.libraries)
        )
    if args.json:
        print_json(
            {
                "benchmark": "contamination",
                "machine": machine(),
                "config": {"threshold": THRESHOLD, "ngram": NGRAM, "num_perm": NUM_PERM},
                "banding": CONFIG.banding,
                "results": results,
            }
        )
        return
    render([t for result in results for t in tables_for(result)], markdown=args.markdown)


if __name__ == "__main__":
    main()
