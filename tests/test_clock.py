"""The one clock: a manual clock moves only forward and only when told; a periodic task
runs on its own thread until stopped."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from silolearn.clock import SYSTEM, ManualClock, Periodic


def test_manual_clock_moves_only_forward_when_told() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock.now() == start == clock.now()
    assert clock.advance(timedelta(days=3)) == start + timedelta(days=3)
    assert clock.set(start + timedelta(days=4)) == clock.now()
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="backwards"):
        clock.set(start)
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))


def test_system_clock_is_utc() -> None:
    assert SYSTEM.now().tzinfo is not None
    assert SYSTEM.now().utcoffset() == timedelta(0)


def test_periodic_runs_its_task_until_stopped_and_survives_a_failing_run() -> None:
    runs: list[int] = []
    second = threading.Event()

    def task() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("the first run fails")
        second.set()

    periodic = Periodic(task, interval=0.01, name="test")
    periodic.start()
    second.wait()
    periodic.stop()
    done = len(runs)
    assert done >= 2
    periodic.stop()  # stopping twice is harmless
    assert len(runs) == done  # nothing runs once stopped
