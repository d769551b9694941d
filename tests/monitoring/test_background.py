"""The drift monitor's queue (``monitoring.background``): it never makes a request wait; what
it cannot take is dropped and counted; when it stops, what was queued before is handled and
its handler closed (the service's drift monitor keeps what it has not yet kept then); what
comes after is counted as dropped. No clock: the handler is held by an event."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from silolearn.monitoring.background import DriftQueue, Served


def _served(i: int) -> Served:
    return Served("desk", 1, np.zeros((1, 4), np.float32), [f"label-{i}"])


def test_a_stopping_queue_handles_what_was_queued_and_counts_what_it_could_not_take() -> None:
    handled: list[str] = []
    closed = threading.Event()
    release = threading.Event()
    taken = threading.Event()

    def open_handler() -> tuple[Callable[[Served], Any], Callable[[], None]]:
        def handle(served: Served) -> None:
            taken.set()
            release.wait()
            handled.append(served.labels[0])

        return handle, closed.set

    drift = DriftQueue(open_handler, capacity=3)
    drift.start()
    # the thread takes the first and waits on it; three more fill the queue, two find it full
    accepted = [drift.submit(_served(0))]
    taken.wait()
    accepted += [drift.submit(_served(i)) for i in range(1, 6)]
    assert accepted == [True] * 4 + [False] * 2 and drift.dropped == 2
    release.set()
    drift.stop()
    assert closed.is_set()
    assert handled == [f"label-{i}" for i, ok in enumerate(accepted) if ok]
    assert not drift.submit(_served(99))
    assert drift.dropped == 3 and drift.failed == 0


def test_a_failing_batch_is_counted_and_the_queue_goes_on() -> None:
    handled: list[str] = []

    def open_handler() -> tuple[Callable[[Served], Any], Callable[[], None]]:
        def handle(served: Served) -> None:
            if served.labels[0] == "label-1":
                raise RuntimeError("a bad batch")
            handled.append(served.labels[0])

        return handle, lambda: None

    drift = DriftQueue(open_handler)
    drift.start()
    for i in range(3):
        assert drift.submit(_served(i))
    drift.stop()
    assert handled == ["label-0", "label-2"] and drift.failed == 1 and drift.dropped == 0
