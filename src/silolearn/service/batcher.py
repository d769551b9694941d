"""The micro-batcher: requests of many keys answered together, on a fixed cadence in and a
fixed deadline out, so that below capacity one key's latency does not depend on another's
traffic (the service's keys are tenants: the shared batch must not be a timing channel).

In: time is a grid of ticks ``window`` seconds apart. A request belongs to the first tick at
or after its arrival and is answered ``release_delay`` seconds after that tick: its
*deadline*, fixed when it arrives, from its arrival time alone. One thread computes: on a
tick it takes the requests that are due (at most ``max_items`` items, the keys visited
round-robin, a request whole: one with more items than that goes alone), never earlier
because a flush filled up; while it is behind, it takes the next due requests as soon as a
flush ends, so compute keeps its real shapes and its pace.

Out: a caller gets its result, or its flush's error, at its deadline and never earlier
(``Ticket.result``; ``Ticket.then`` runs the caller's own finishing work first, inside the
delay). While every flush is computed by its requests' deadlines, a request's latency is
its wait for the tick plus ``release_delay``, whatever the other keys send: neither how full
a flush is nor how long its compute takes reaches it. Above capacity -- the compute thread
behind by more than the delay, or one flush longer than it -- a request computed after its
deadline is released as soon as it is computed and counted as a deadline miss
(``FlushStats``): that is where the guarantee ends.

``process`` gets ``[(key, items), ...]`` and returns one result per request, in order; every
item of a request is answered by the same call, which for the service means by the same
adapter version. An exception fails every request of that flush. After ``stop`` the queued
requests are answered and new ones refused.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

Clock = Callable[[], float]
"""Seconds on a monotonic clock (``time.monotonic``; tests may inject their own)."""
HISTORY = 1024
"""Flushes whose record ``recent_flushes`` keeps."""


class BatcherStopped(RuntimeError):
    """The batcher is stopping or stopped: it takes no new request."""


@dataclass(frozen=True, slots=True)
class FlushStats:
    """What the batcher has done so far: flushes that carried requests, requests, items, the
    largest flush (in items), and the requests computed after their deadline (deadline
    misses) with the flushes that carried them."""

    flushes: int
    requests: int
    items: int
    largest: int
    deadline_misses: int
    late_flushes: int


@dataclass(frozen=True, slots=True)
class FlushRecord:
    """One flush, on the batcher's clock: the earliest tick and deadline of its requests,
    when its compute started and ended, its size, and how many of its requests missed."""

    tick: float
    deadline: float
    started: float
    computed: float
    requests: int
    items: int
    missed: int


@dataclass(slots=True, eq=False)
class Ticket(Generic[K, T, R]):
    """One queued request: its tick and deadline, fixed at arrival; ``computed_at`` and
    ``released_at`` (batcher clock) once answered."""

    key: K
    items: list[T]
    tick: float
    deadline: float
    _batcher: MicroBatcher[K, T, R] = field(repr=False)
    computed_at: float | None = None
    released_at: float | None = None
    late: bool = False
    """Ready (computed, and the caller's ``finish`` done) only after the deadline."""
    _future: Future[R] = field(default_factory=Future, repr=False)

    @property
    def missed(self) -> bool:
        """Computed after its deadline (and so released late)."""
        return self.computed_at is not None and self.computed_at > self.deadline

    def result(self, timeout: float | None = None) -> R:
        """The result, at the deadline (or the flush's error, at the deadline)."""
        return self.then(lambda value: value, timeout)

    def then(self, finish: Callable[[R], S], timeout: float | None = None) -> S:
        """``finish(result)`` run in the caller's thread as soon as the flush is computed,
        returned at the deadline: the caller's own work after the batch (its writes, its
        response) spends the delay rather than adding to it. ``TimeoutError`` if the flush
        is not computed within ``timeout``."""
        self._future.exception(timeout)
        try:
            return finish(self._future.result())
        finally:
            self._batcher._release(self)


class MicroBatcher(Generic[K, T, R]):
    """Gathers requests on a fixed cadence and releases their answers at a fixed deadline
    (see the module)."""

    def __init__(
        self,
        process: Callable[[Sequence[tuple[K, list[T]]]], Sequence[R]],
        *,
        window: float,
        max_items: int,
        release_delay: float,
        name: str = "micro-batcher",
        clock: Clock = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError("the window is a positive number of seconds")
        if max_items < 1:
            raise ValueError("a flush takes at least one item")
        if release_delay < 0:
            raise ValueError("the release delay is a number of seconds, at least 0")
        self._process = process
        self.window = window
        self.max_items = max_items
        self.release_delay = release_delay
        self._clock = clock
        self._origin = clock()
        self._queues: dict[K, deque[Ticket[K, T, R]]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stats = FlushStats(0, 0, 0, 0, 0, 0)
        self._history: deque[FlushRecord] = deque(maxlen=HISTORY)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Refuse new requests, answer those queued, and end the flushing thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def stats(self) -> FlushStats:
        with self._lock:
            return self._stats

    def recent_flushes(self) -> list[FlushRecord]:
        """The records of the last flushes (up to ``HISTORY``), oldest first."""
        with self._lock:
            return list(self._history)

    # -- requests ---------------------------------------------------------------------------

    def submit(self, key: K, items: Sequence[T]) -> Ticket[K, T, R]:
        """Queue one request on the first tick at or after now; its ticket is answered by
        the flush that carries it and released at that tick plus the release delay."""
        tick = self._tick_at_or_after(self._clock())
        ticket: Ticket[K, T, R] = Ticket(key, list(items), tick, tick + self.release_delay, self)
        with self._lock:
            if self._stopping.is_set():
                raise BatcherStopped("the batcher is stopping: no new request")
            self._queues.setdefault(key, deque()).append(ticket)
        return ticket

    def _tick_at_or_after(self, now: float) -> float:
        return self._origin + math.ceil((now - self._origin) / self.window) * self.window

    def _release(self, ticket: Ticket[K, T, R]) -> None:
        """Hold the caller until the ticket's deadline (at once if it is past)."""
        ticket.late = self._clock() > ticket.deadline
        while (left := ticket.deadline - self._clock()) > 0:
            time.sleep(left)
        ticket.released_at = self._clock()

    # -- the flushing thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            now = self._clock()
            batch = self._take(now)
            if batch:
                self._flush(batch, now)
                continue  # behind: the next due requests go at once
            with self._lock:
                idle = not self._queues
            if idle and self._stopping.is_set():
                return
            # sleep to the next tick of the grid, never catching up missed ticks in a burst
            ticks = math.floor((now - self._origin) / self.window) + 1
            wait = max(0.0, self._origin + ticks * self.window - now)
            if self._stopping.is_set():
                time.sleep(wait)
            else:
                self._stopping.wait(wait)

    def _take(self, now: float) -> list[Ticket[K, T, R]]:
        """At most ``max_items`` items of due requests, whole, the keys round-robin."""
        taken: list[Ticket[K, T, R]] = []
        total = 0
        with self._lock:
            keys = list(self._queues)
            progress = True
            while progress and total < self.max_items:
                progress = False
                for key in keys:
                    queue = self._queues[key]
                    if not queue or queue[0].tick > now:
                        continue
                    size = len(queue[0].items)
                    if taken and total + size > self.max_items:
                        continue
                    taken.append(queue.popleft())
                    total += size
                    progress = True
                    if total >= self.max_items:
                        break
            served = {t.key for t in taken}
            # keys served this time go to the back: the next flush starts with the others
            order = [k for k in keys if k not in served] + [k for k in keys if k in served]
            self._queues = {k: self._queues[k] for k in order if self._queues[k]}
        return taken

    def _flush(self, batch: list[Ticket[K, T, R]], started: float) -> None:
        failure: BaseException | None = None
        try:
            results = list(self._process([(t.key, t.items) for t in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function answered {len(results)} of {len(batch)} requests"
                )
        except BaseException as exc:
            failure = exc
        computed = self._clock()
        for ticket in batch:
            ticket.computed_at = computed
        self._record(batch, started, computed)
        if failure is not None:
            for ticket in batch:
                ticket._future.set_exception(failure)
            if not isinstance(failure, Exception):
                raise failure
            return
        for ticket, result in zip(batch, results, strict=True):
            ticket._future.set_result(result)

    def _record(self, batch: list[Ticket[K, T, R]], started: float, computed: float) -> None:
        size = sum(len(t.items) for t in batch)
        missed = sum(1 for t in batch if t.missed)
        record = FlushRecord(
            tick=min(t.tick for t in batch),
            deadline=min(t.deadline for t in batch),
            started=started,
            computed=computed,
            requests=len(batch),
            items=size,
            missed=missed,
        )
        with self._lock:
            self._history.append(record)
            done = self._stats
            self._stats = FlushStats(
                flushes=done.flushes + 1,
                requests=done.requests + len(batch),
                items=done.items + size,
                largest=max(done.largest, size),
                deadline_misses=done.deadline_misses + missed,
                late_flushes=done.late_flushes + (missed > 0),
            )
