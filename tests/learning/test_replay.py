"""The replay buffer: class balance, uniform reservoirs, shrinking shares, sampling and its
stored form."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from silolearn.datasets import rotten_tomatoes, sample
from silolearn.errors import IntegrityError
from silolearn.learning.replay import ReplayBuffer, ReplayItem


def _items(label: str, n: int, start: int = 0) -> list[ReplayItem]:
    return [
        ReplayItem(f"{label}-{i:05d}", label, f"2025-01-01T00:00:{i % 60:02d}Z")
        for i in range(start, start + n)
    ]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _stream(counts: dict[str, int], seed: int) -> list[ReplayItem]:
    """Items of several classes interleaved at random (a stand-in for time order)."""
    items = [item for label, n in counts.items() for item in _items(label, n)]
    order = _rng(seed).permutation(len(items))
    return [items[int(i)] for i in order]


def _by_label(buffer: ReplayBuffer) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in buffer.sample(len(buffer), _rng(0)):
        out.setdefault(item.label, set()).add(item.id)
    return out


# -- class balance --------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 37])
@pytest.mark.parametrize("capacity", [90, 100])
def test_a_dominant_class_does_not_crowd_out_the_others(capacity: int, chunk: int | None) -> None:
    stream = _stream({"a": 1000, "b": 100, "c": 100}, seed=1)
    buffer = ReplayBuffer(capacity)
    rng = _rng(2)
    if chunk is None:
        buffer.offer(stream, rng)
    else:
        for start in range(0, len(stream), chunk):
            buffer.offer(stream[start : start + chunk], rng)
    counts = buffer.counts()
    assert buffer.classes == ["a", "b", "c"]
    assert max(counts.values()) - min(counts.values()) <= 1
    assert all(count == capacity // 3 for count in counts.values())
    assert len(buffer) == 3 * (capacity // 3) <= capacity
    offered = {item.id: item.label for item in stream}
    for label, ids in _by_label(buffer).items():
        assert all(offered[i] == label for i in ids)
    assert len(buffer.ids()) == len(buffer)


def test_real_label_stream_is_balanced() -> None:
    """Rotten Tomatoes in time order: 'fresh' is about 7x 'plot'."""
    rows = sample(rotten_tomatoes(), 3000, seed=4)
    mix = Counter(r["label"] for r in rows)
    assert mix["fresh"] > 5 * mix["plot"] > 5 * 60
    buffer = ReplayBuffer(180)
    buffer.offer((ReplayItem(r["id"], r["label"], r["timestamp"]) for r in rows), _rng(3))
    assert buffer.counts() == {"fresh": 60, "plot": 60, "rotten": 60}


# -- reservoir uniformity -------------------------------------------------------------------

N_ITEMS, CAPACITY, TRIALS = 1000, 100, 300
P_KEEP = CAPACITY / N_ITEMS


def _item_statistic(kept: npt.NDArray[np.int64]) -> float:
    """Sum over items of (kept - expected)^2 / variance, where ``kept[i]`` is how many of
    TRIALS buffers hold item i. Uniform reservoirs keep each item with probability
    P_KEEP independently across trials, so each count is Binomial(TRIALS, P_KEEP)
    (variance 27) and the statistic has mean exactly N_ITEMS (1000) and standard deviation
    about sqrt(2 * 1000) = 45 (the counts of one trial are only weakly, negatively
    correlated). A threshold of mean + 8 sd = 1360 is exceeded by a correct implementation
    with probability far below 1e-9; keep-the-first-100 or keep-the-last-100 gives counts
    300 and 0, a statistic of 100 * 270^2 / 27 + 900 * 30^2 / 27 = 300,000."""
    expected = TRIALS * P_KEEP
    variance = TRIALS * P_KEEP * (1 - P_KEEP)
    return float(((kept - expected) ** 2).sum() / variance)


def _decile_statistic(kept: npt.NDArray[np.int64]) -> float:
    """The same over ten blocks of 100 consecutive items (early to late), which is far more
    sensitive to a drift towards recent or towards early items. A block's total per trial is
    hypergeometric (100 of 1000 drawn, 100 marked): variance 100 * 0.1 * 0.9 * 900 / 999 =
    8.11, so over 300 trials 2432; the statistic is about chi-square with 9 degrees of
    freedom (mean 9, sd 4.2), and a correct implementation exceeds 60 with probability below
    1e-8. A reservoir that keeps each late item with only twice the right probability moves
    the last block by hundreds of counts, a statistic in the hundreds."""
    blocks = kept.reshape(10, -1).sum(axis=1)
    expected = TRIALS * CAPACITY / 10
    per_trial = 100 * P_KEEP * (1 - P_KEEP) * (N_ITEMS - 100) / (N_ITEMS - 1)
    return float(((blocks - expected) ** 2).sum() / (TRIALS * per_trial))


ITEM_LIMIT, DECILE_LIMIT = 1360.0, 60.0


def test_reservoir_keeps_every_item_with_equal_probability() -> None:
    items = _items("a", N_ITEMS)
    index = {item.id: i for i, item in enumerate(items)}
    kept = np.zeros(N_ITEMS, dtype=np.int64)
    for trial in range(TRIALS):
        buffer = ReplayBuffer(CAPACITY)
        buffer.offer(items, _rng(1000 + trial))
        assert len(buffer) == CAPACITY
        for item_id in buffer.ids():
            kept[index[item_id]] += 1
    assert kept.sum() == TRIALS * CAPACITY
    item_stat, decile_stat = _item_statistic(kept), _decile_statistic(kept)
    print(
        f"\nreservoir over {TRIALS} trials: per-item statistic {item_stat:.0f} "
        f"(mean 1000, limit {ITEM_LIMIT:.0f}), decile statistic {decile_stat:.1f} "
        f"(mean 9, limit {DECILE_LIMIT:.0f}), inclusion frequency "
        f"{kept.min() / TRIALS:.3f}..{kept.max() / TRIALS:.3f}"
    )
    assert item_stat < ITEM_LIMIT
    assert decile_stat < DECILE_LIMIT
    # no single item is far off 0.1: 6 sd of a Binomial(300, 0.1) count is 31
    assert np.abs(kept - TRIALS * P_KEEP).max() < 31


def test_the_uniformity_statistics_reject_biased_reservoirs() -> None:
    """The same statistics on what biased implementations would keep."""
    first = np.zeros(N_ITEMS, dtype=np.int64)
    first[:CAPACITY] = TRIALS
    last = first[::-1].copy()
    for kept in (first, last):
        assert _item_statistic(kept) == pytest.approx(300_000)
        assert _item_statistic(kept) > ITEM_LIMIT
        assert _decile_statistic(kept) > DECILE_LIMIT
    # a recency-biased reservoir: late items kept with twice the probability of early ones
    weights = np.linspace(1.0, 2.0, N_ITEMS)
    drifting = np.zeros(N_ITEMS, dtype=np.int64)
    rng = _rng(9)
    for _ in range(TRIALS):
        keep = rng.choice(N_ITEMS, size=CAPACITY, replace=False, p=weights / weights.sum())
        drifting[keep] += 1
    assert _decile_statistic(drifting) > DECILE_LIMIT


# -- shares, round trip, capacity 0, garbage, determinism -----------------------------------


def test_a_new_class_shrinks_the_shares() -> None:
    buffer = ReplayBuffer(60)
    rng = _rng(5)
    buffer.offer(_items("a", 100), rng)
    assert buffer.counts() == {"a": 60}
    kept_a = buffer.ids()

    buffer.offer(_items("b", 100), rng)
    assert buffer.counts() == {"a": 30, "b": 30}
    now_a = {i for i in buffer.ids() if i.startswith("a-")}
    assert now_a < kept_a  # cut down, nothing new

    buffer.offer(_items("c", 5), rng)
    assert buffer.counts() == {"a": 20, "b": 20, "c": 5}
    assert {i for i in buffer.ids() if i.startswith("a-")} < now_a
    assert buffer.classes == ["a", "b", "c"]

    # later records of a class still enter its (smaller) reservoir
    buffer.offer(_items("c", 100, start=5), rng)
    assert buffer.counts() == {"a": 20, "b": 20, "c": 20}


def test_serialisation_round_trip() -> None:
    buffer = ReplayBuffer(50)
    buffer.offer(_stream({"x": 80, "y": 30, "z": 7}, seed=6), _rng(7))
    data = buffer.to_bytes()
    size = len(buffer)
    document = json.loads(data)
    assert document["format"] == 1 and document["capacity"] == 50
    assert document["seen"] == {"x": 80, "y": 30, "z": 7}

    restored = ReplayBuffer.from_bytes(data)
    assert restored.to_bytes() == data
    assert restored.capacity == 50 and restored.counts() == buffer.counts() == {
        "x": 16,
        "y": 16,
        "z": 7,
    }
    assert restored.ids() == buffer.ids()
    assert restored.sample(20, _rng(8)) == buffer.sample(20, _rng(8))
    # and both go on identically
    more = _stream({"x": 10, "w": 40}, seed=9)
    buffer.offer(more, _rng(10))
    restored.offer(more, _rng(10))
    assert restored.to_bytes() == buffer.to_bytes()

    # resized on load, cut down at the next offer
    smaller = ReplayBuffer.from_bytes(data, capacity=30)
    assert smaller.capacity == 30 and len(smaller) == size == 39
    smaller.offer([], _rng(11))
    assert smaller.counts() == {"x": 10, "y": 10, "z": 7}


def test_capacity_zero_keeps_nothing() -> None:
    buffer = ReplayBuffer(0)
    buffer.offer(_stream({"a": 50, "b": 5}, seed=1), _rng(1))
    assert len(buffer) == 0 and buffer.ids() == set()
    assert buffer.counts() == {"a": 0, "b": 0}
    assert buffer.sample(10, _rng(2)) == []
    assert ReplayBuffer.from_bytes(buffer.to_bytes()).to_bytes() == buffer.to_bytes()
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(-1)
    # more classes than capacity: shares of 0, nothing kept
    tight = ReplayBuffer(2)
    tight.offer(_stream({"a": 5, "b": 5, "c": 5}, seed=2), _rng(3))
    assert len(tight) == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b'{"format": 2, "capacity": 3, "seen": {}, "items": {}}',
        b'{"format": 1, "capacity": 3}',
        b'{"format": 1, "capacity": -3, "seen": {}, "items": {}}',
        b'{"format": 1, "capacity": 3, "seen": {"a": "many"}, "items": {}}',
        b'{"format": 1, "capacity": 3, "seen": {"a": 1}, "items": {"a": [["only-id"]]}}',
        b'{"format": 1, "capacity": 3, "seen": {"a": 1}, "items": {"a": [7]}}',
    ],
)
def test_garbage_is_an_integrity_error(garbage: bytes) -> None:
    with pytest.raises(IntegrityError, match="malformed replay buffer"):
        ReplayBuffer.from_bytes(garbage)


def test_truncated_buffer_is_an_integrity_error() -> None:
    buffer = ReplayBuffer(20)
    buffer.offer(_items("a", 30), _rng(1))
    data = buffer.to_bytes()
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(IntegrityError):
            ReplayBuffer.from_bytes(data[:cut])


@pytest.mark.parametrize(
    "garbage",
    [
        b"[]",
        b"null",
        b"7",
        b'"replay"',
        b'{"format": 1, "capacity": 3, "seen": [], "items": {}}',
        b'{"format": 1, "capacity": 3, "seen": {}, "items": []}',
    ],
)
def test_json_of_the_wrong_shape_is_an_integrity_error(garbage: bytes) -> None:
    with pytest.raises(IntegrityError, match="malformed replay buffer"):
        ReplayBuffer.from_bytes(garbage)


def test_deterministic_for_a_seed() -> None:
    stream = _stream({"a": 300, "b": 120, "c": 40}, seed=12)

    def run(seed: int) -> tuple[bytes, list[ReplayItem]]:
        buffer = ReplayBuffer(60)
        rng = _rng(seed)
        for start in range(0, len(stream), 100):
            buffer.offer(stream[start : start + 100], rng)
        return buffer.to_bytes(), buffer.sample(25, rng)

    assert run(1) == run(1)
    assert run(1)[0] != run(2)[0]


# -- sampling -------------------------------------------------------------------------------


def _balanced(drawn: list[ReplayItem], available: dict[str, int]) -> None:
    """Every class either gave all it holds or is within one of the class drawn most."""
    counts = Counter(item.label for item in drawn)
    top = max(counts.values(), default=0)
    for label, held in available.items():
        assert counts[label] == held or counts[label] >= top - 1, counts


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 17, 30, 55, 56, 1000])
def test_sample_is_balanced_and_without_duplicates(n: int) -> None:
    buffer = ReplayBuffer(60)
    buffer.offer(_stream({"a": 200, "b": 50, "c": 6}, seed=13), _rng(14))
    available = buffer.counts()
    assert available == {"a": 20, "b": 20, "c": 6}

    drawn = buffer.sample(n, _rng(15))
    assert len(drawn) == min(n, len(buffer))
    ids = [item.id for item in drawn]
    assert len(set(ids)) == len(ids)
    assert set(ids) <= buffer.ids()
    _balanced(drawn, available)
    if n >= len(buffer):
        assert set(ids) == buffer.ids()
    # the same seed draws the same sample; another seed another one
    assert buffer.sample(n, _rng(15)) == drawn
    if 0 < n < len(buffer):
        assert buffer.sample(n, _rng(16)) != drawn


def test_sample_of_an_empty_buffer() -> None:
    assert ReplayBuffer(10).sample(5, _rng(0)) == []
