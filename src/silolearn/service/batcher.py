"""The micro-batcher: requests from many threads, answered together on a fixed cadence.

Requests are queued per key (the service's key is the tenant) and a single thread flushes
on a fixed clock, every ``window`` seconds whether the queue is full or not: a batch is
never sent early because it filled up, so below capacity the wait of one tenant's request
does not depend on how much another tenant sends (no "flush when full" timing channel). A
flush takes at most ``max_items`` items, visiting the keys round-robin, a request whole
(a request with more items than that goes alone): every item of a request is answered by
the same call, which for the service means by the same adapter version.

``process`` gets ``[(key, items), ...]`` and returns one result per request, in order; an
exception fails every request of that flush. After ``stop`` the queue is drained and new
requests are refused.
"""

from __future__ import annotations

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


class BatcherStopped(RuntimeError):
    """The batcher is stopping or stopped: it takes no new request."""


@dataclass(slots=True)
class _Pending(Generic[K, T, R]):
    key: K
    items: list[T]
    future: Future[R] = field(default_factory=Future)


@dataclass(frozen=True, slots=True)
class FlushStats:
    """What the batcher has done so far: flushes that carried requests, requests, items,
    and the largest flush (in items)."""

    flushes: int
    requests: int
    items: int
    largest: int


class MicroBatcher(Generic[K, T, R]):
    """Gathers requests and answers them together on a fixed cadence (see the module)."""

    def __init__(
        self,
        process: Callable[[Sequence[tuple[K, list[T]]]], Sequence[R]],
        *,
        window: float,
        max_items: int,
        name: str = "micro-batcher",
    ) -> None:
        if window <= 0:
            raise ValueError("the window is a positive number of seconds")
        if max_items < 1:
            raise ValueError("a flush takes at least one item")
        self._process = process
        self.window = window
        self.max_items = max_items
        self._queues: dict[K, deque[_Pending[K, T, R]]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._flushes = self._requests = self._items = self._largest = 0

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
            return FlushStats(self._flushes, self._requests, self._items, self._largest)

    # -- requests ---------------------------------------------------------------------------

    def submit(self, key: K, items: Sequence[T]) -> Future[R]:
        """Queue one request; its future is resolved by the flush that carries it."""
        pending: _Pending[K, T, R] = _Pending(key, list(items))
        with self._lock:
            if self._stopping.is_set():
                raise BatcherStopped("the batcher is stopping: no new request")
            self._queues.setdefault(key, deque()).append(pending)
        return pending.future

    # -- the flushing thread ----------------------------------------------------------------

    def _run(self) -> None:
        start = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            # the next tick of the fixed grid start + k * window; ticks missed while a slow
            # flush ran are skipped, never caught up in a burst
            now = time.monotonic()
            ticks = max(ticks, int((now - start) / self.window) + 1)
            stopping = self._stopping.wait(max(0.0, start + ticks * self.window - now))
            batch = self._take()
            if batch:
                self._flush(batch)
            elif stopping:
                return

    def _take(self) -> list[_Pending[K, T, R]]:
        """At most ``max_items`` items, whole requests, the keys visited round-robin."""
        taken: list[_Pending[K, T, R]] = []
        total = 0
        with self._lock:
            keys = list(self._queues)
            progress = True
            while progress:
                progress = False
                for key in keys:
                    queue = self._queues.get(key)
                    if not queue:
                        continue
                    size = len(queue[0].items)
                    if taken and total + size > self.max_items:
                        continue
                    taken.append(queue.popleft())
                    total += size
                    progress = True
                    if total >= self.max_items:
                        break
                if total >= self.max_items:
                    break
            served = {p.key for p in taken}
            # keys served this time go to the back: the next flush starts with the others
            order = [k for k in keys if k not in served] + [k for k in keys if k in served]
            self._queues = {k: self._queues[k] for k in order if self._queues[k]}
        return taken

    def _flush(self, batch: list[_Pending[K, T, R]]) -> None:
        try:
            results = list(self._process([(p.key, p.items) for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function answered {len(results)} of {len(batch)} requests"
                )
        except BaseException as exc:
            for pending in batch:
                pending.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for pending, result in zip(batch, results, strict=True):
                pending.future.set_result(result)
        with self._lock:
            self._flushes += 1
            self._requests += len(batch)
            size = sum(len(p.items) for p in batch)
            self._items += size
            self._largest = max(self._largest, size)
