"""The micro-batcher's timing guarantee, read from its own clock and records (no wall-clock
thresholds): a request's deadline is its tick plus the release delay, fixed by its arrival
alone; no answer (nor error) is released before it; the caller's finishing work runs before
the release; a flush computed after its requests' deadlines counts them as misses; every
request of a flush gets that flush's answer."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from silolearn.service.batcher import MicroBatcher, Ticket

Batch = Sequence[tuple[str, list[int]]]


class SteppedClock:
    """``time.monotonic`` plus an offset that a batch function moves forward: a flush that
    "takes" ``step`` seconds on the batcher's clock without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds


def test_answers_are_released_at_their_tick_plus_the_delay_never_before() -> None:
    flushes: list[list[str]] = []

    def process(batch: Batch) -> list[int]:
        flushes.append([key for key, _ in batch])
        return [sum(items) for _, items in batch]

    window, delay = 0.004, 0.03
    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        process, window=window, max_items=8, release_delay=delay
    )
    clock = time.monotonic  # the batcher's clock: the default
    batcher.start()
    rng = random.Random(7)

    def ask(i: int) -> tuple[float, float, Ticket[str, int, int], int, float]:
        time.sleep(rng.random() * 0.01)
        before = clock()
        ticket = batcher.submit(f"tenant-{i % 3}", [i] * (1 + i % 4))
        after = clock()  # the batcher read its clock in between: a loaded box may pause here
        return before, after, ticket, ticket.result(timeout=60), clock()

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            asked = list(pool.map(ask, range(120)))
    finally:
        batcher.stop()
    for i, (before, after, ticket, answer, returned) in enumerate(asked):
        assert answer == i * (1 + i % 4)
        # the tick is the first of the grid at or after arrival: arrival alone decides it
        assert before <= ticket.tick <= after + window + 1e-9  # float rounding
        assert ticket.deadline == ticket.tick + delay
        assert ticket.computed_at is not None and ticket.released_at is not None
        assert ticket.released_at >= ticket.deadline
        assert ticket.released_at >= ticket.computed_at
        assert returned >= ticket.released_at
    records = batcher.recent_flushes()
    assert sum(r.requests for r in records) == 120 == batcher.stats().requests
    for record in records:
        # a flush never starts before the tick of its requests (never early because full)
        assert record.started >= record.tick
        assert record.computed >= record.started
        assert (record.missed > 0) == (record.computed > record.deadline)
    assert batcher.stats().deadline_misses == sum(t.missed for _, _, t, _, _ in asked)


def test_a_flush_computed_after_the_deadline_counts_its_requests_as_misses() -> None:
    clock = SteppedClock()
    delay = 0.05

    def slow(batch: Batch) -> list[int]:
        clock.advance(3 * delay)  # this flush "takes" three release delays
        return [len(items) for _, items in batch]

    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        slow, window=0.002, max_items=100, release_delay=delay, clock=clock
    )
    tickets = [batcher.submit(key, [1, 2]) for key in ("a", "b", "c")]
    batcher.start()
    try:
        assert [t.result(timeout=60) for t in tickets] == [2, 2, 2]
    finally:
        batcher.stop()
    stats = batcher.stats()
    assert stats.deadline_misses == 3
    assert stats.late_flushes == stats.flushes >= 1
    for ticket in tickets:
        assert ticket.missed and ticket.late
        assert ticket.computed_at is not None and ticket.computed_at > ticket.deadline
        # a late answer goes as soon as it is computed, never before its deadline
        assert ticket.released_at is not None and ticket.released_at >= ticket.computed_at
    assert all(r.missed == r.requests for r in batcher.recent_flushes())


def test_finishing_work_runs_before_the_release_and_a_late_finish_is_late() -> None:
    clock = SteppedClock()
    delay = 1.0  # long enough that a loaded box computes the flush well inside it
    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        lambda batch: [sum(items) for _, items in batch],
        window=0.002,
        max_items=100,
        release_delay=delay,
        clock=clock,
    )
    finished: list[float] = []

    def finish(value: int) -> str:
        finished.append(clock())
        return f"answer {value}"

    def finish_slowly(value: int) -> str:
        clock.advance(3 * delay)  # the caller's own work overruns the delay
        return finish(value)

    quick, slow = batcher.submit("a", [1, 2]), batcher.submit("b", [3])
    batcher.start()
    try:
        assert quick.then(finish, timeout=60) == "answer 3"
        assert slow.then(finish_slowly, timeout=60) == "answer 3"
    finally:
        batcher.stop()
    assert quick.released_at is not None and slow.released_at is not None
    assert finished[0] <= quick.released_at and finished[1] <= slow.released_at
    assert slow.late and not slow.missed
    assert batcher.stats().deadline_misses == sum(t.missed for t in (quick, slow))


def test_a_failed_flush_is_released_at_the_deadline_too() -> None:
    def failing(batch: Batch) -> list[int]:
        raise ValueError("the encoder failed")

    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        failing, window=0.002, max_items=10, release_delay=0.02
    )
    ticket = batcher.submit("a", [1])
    batcher.start()
    try:
        with pytest.raises(ValueError, match="the encoder failed"):
            ticket.result(timeout=60)
    finally:
        batcher.stop()
    assert ticket.released_at is not None and ticket.released_at >= ticket.deadline


def test_every_request_of_a_flush_gets_that_flushs_answer() -> None:
    """What the service relies on for versions: ``process`` is called once per flush, and
    each request, all its items together, gets what that call answered."""
    calls = 0
    lock = threading.Lock()

    def versioned(batch: Batch) -> list[tuple[int, list[int]]]:
        nonlocal calls
        with lock:
            calls += 1
            version = calls  # a new "version" for every flush
        return [(version, list(items)) for _, items in batch]

    batcher: MicroBatcher[str, int, tuple[int, list[int]]] = MicroBatcher(
        versioned, window=0.002, max_items=6, release_delay=0.005
    )
    batcher.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            tickets = list(
                pool.map(lambda i: batcher.submit(f"k{i % 4}", [i, i + 1, i + 2]), range(40))
            )
            answers = [t.result(timeout=60) for t in tickets]
    finally:
        batcher.stop()
    assert [items for _, items in answers] == [[i, i + 1, i + 2] for i in range(40)]
    by_version: dict[int, list[int]] = {}
    for i, (version, _) in enumerate(answers):
        by_version.setdefault(version, []).append(i)
    # as many versions as flushes, each flush's requests (at most 6 items: 2 requests) one
    assert len(by_version) == batcher.stats().flushes == calls
    assert all(1 <= len(members) <= 2 for members in by_version.values())
    assert [r.requests for r in batcher.recent_flushes()] == [
        len(by_version[v]) for v in sorted(by_version)
    ]
