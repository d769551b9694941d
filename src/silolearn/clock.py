"""One clock for everything that decides by time (schedules, back-off, monitoring windows,
rollouts): the service runs on the system's, tests and the demo's simulated days on a
manual one they advance, so days of operation play out in seconds with the same code."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What time it is, timezone-aware in UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: ``advance`` by a duration or ``set`` to a
    later moment. Never goes backwards."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("a manual clock starts at a timezone-aware moment")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, by: timedelta) -> datetime:
        if by < timedelta(0):
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += by
            return self._now

    def set(self, moment: datetime) -> datetime:
        with self._lock:
            if moment.astimezone(UTC) < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = moment.astimezone(UTC)
            return self._now


SYSTEM = SystemClock()


class Periodic:
    """Runs ``task`` every ``interval`` seconds of real time in a daemon thread of its own,
    from ``start`` until ``stop`` (which waits for a run in progress); a run that raises is
    logged and the next one tried. What the task decides by time it reads from its clock:
    the interval only paces it."""

    def __init__(self, task: Callable[[], object], *, interval: float, name: str) -> None:
        self._task = task
        self._interval = interval
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._task()
            except Exception:
                logging.getLogger("silolearn").exception("%s: a periodic run failed", self._name)
