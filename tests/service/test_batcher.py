"""The micro-batcher on its own: requests from many threads answered with their own results,
flushes bounded and never splitting a request, keys served round-robin, flushes that are
not full still sent, failures confined to their flush, a stop that drains then refuses.
Its timing guarantee (answers released at tick plus the release delay, never earlier;
deadline misses counted) is in test_batcher_deadline.py."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from silolearn.service.batcher import BatcherStopped, MicroBatcher

Batch = Sequence[tuple[str, list[int]]]


class Recorder:
    """A batch function that answers each request with its key and its items doubled, and
    keeps every flush it saw."""

    def __init__(self) -> None:
        self.flushes: list[list[tuple[str, list[int]]]] = []
        self._lock = threading.Lock()

    def __call__(self, batch: Batch) -> list[tuple[str, list[int]]]:
        with self._lock:
            self.flushes.append([(k, list(v)) for k, v in batch])
        return [(key, [2 * x for x in items]) for key, items in batch]


def test_requests_from_many_threads_get_their_own_answers() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, int, tuple[str, list[int]]] = MicroBatcher(
        recorder, window=0.002, max_items=16, release_delay=0.002
    )
    batcher.start()
    try:

        def ask(i: int) -> tuple[str, list[int]]:
            key = f"tenant-{i % 5}"
            return batcher.submit(key, [i, i + 1, i + 2]).result(timeout=60)

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(ask, range(200)))
    finally:
        batcher.stop()
    assert answers == [(f"tenant-{i % 5}", [2 * i, 2 * i + 2, 2 * i + 4]) for i in range(200)]
    stats = batcher.stats()
    assert stats.requests == 200 and stats.items == 600
    assert stats.largest <= 16
    assert all(sum(len(v) for _, v in flush) <= 16 for flush in recorder.flushes)


def test_a_request_is_never_split_and_one_over_the_bound_goes_alone() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, int, tuple[str, list[int]]] = MicroBatcher(
        recorder, window=0.002, max_items=3, release_delay=0.002
    )
    big = batcher.submit("a", [1, 2, 3, 4, 5])
    small = batcher.submit("b", [6])
    batcher.start()
    try:
        assert big.result(timeout=60) == ("a", [2, 4, 6, 8, 10])
        assert small.result(timeout=60) == ("b", [12])
    finally:
        batcher.stop()
    assert recorder.flushes[0] == [("a", [1, 2, 3, 4, 5])]
    assert recorder.flushes[1] == [("b", [6])]


def test_keys_are_served_round_robin_so_a_busy_key_does_not_hold_back_a_quiet_one() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, int, tuple[str, list[int]]] = MicroBatcher(
        recorder, window=0.5, max_items=4, release_delay=0.002
    )
    # a long window: the eleven requests below share its first tick
    busy = [batcher.submit("busy", [i, i]) for i in range(10)]
    quiet = batcher.submit("quiet", [99])
    batcher.start()
    try:
        for future in [*busy, quiet]:
            future.result(timeout=60)
    finally:
        batcher.stop()
    # the first flush takes one request of each key before a second of the busy one
    assert [k for k, _ in recorder.flushes[0]] == ["busy", "quiet"]
    assert all(sum(len(v) for _, v in flush) <= 4 for flush in recorder.flushes)


def test_a_flush_that_is_not_full_is_sent_on_the_next_tick() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, int, tuple[str, list[int]]] = MicroBatcher(
        recorder, window=0.005, max_items=10_000, release_delay=0.002
    )
    batcher.start()
    try:
        assert batcher.submit("a", [7]).result(timeout=60) == ("a", [14])
    finally:
        batcher.stop()
    assert recorder.flushes == [[("a", [7])]]


def test_a_failing_flush_fails_its_own_requests_only() -> None:
    calls = 0

    def sometimes(batch: Batch) -> list[int]:
        nonlocal calls
        calls += 1
        if any(key == "poison" for key, _ in batch):
            raise ValueError("bad batch")
        return [len(items) for _, items in batch]

    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        sometimes, window=0.002, max_items=1, release_delay=0.002
    )
    poisoned = batcher.submit("poison", [1])
    fine = batcher.submit("fine", [1, 2])
    batcher.start()
    try:
        with pytest.raises(ValueError, match="bad batch"):
            poisoned.result(timeout=60)
        assert fine.result(timeout=60) == 2
        assert batcher.submit("later", [1, 2, 3]).result(timeout=60) == 3
    finally:
        batcher.stop()
    assert calls == 3


def test_stop_answers_what_is_queued_then_refuses_new_requests() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, int, tuple[str, list[int]]] = MicroBatcher(
        recorder, window=0.002, max_items=2, release_delay=0.002
    )
    queued = [batcher.submit(f"k{i}", [i, i]) for i in range(5)]
    batcher.start()
    batcher.stop()
    assert [f.result(timeout=0) for f in queued] == [(f"k{i}", [2 * i, 2 * i]) for i in range(5)]
    assert not batcher.running
    with pytest.raises(BatcherStopped):
        batcher.submit("late", [1])


def test_the_batch_function_must_answer_every_request() -> None:
    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        lambda batch: [1], window=0.002, max_items=10, release_delay=0.002
    )
    first, second = batcher.submit("a", [1]), batcher.submit("b", [2])
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="answered 1 of 2"):
            first.result(timeout=60)
        with pytest.raises(RuntimeError):
            second.result(timeout=60)
    finally:
        batcher.stop()
