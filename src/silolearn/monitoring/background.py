"""Drift monitoring off the request's path: the predict handler hands each answered request's
embeddings and predicted labels to a bounded queue and returns; one background thread,
with its own workspace, feeds them to the ``DriftMonitor``. When the queue is full (the
monitor cannot keep up) a batch is dropped and counted, never waited for: serving comes
first, and a dropped batch only thins the sample the drift tests see. When the queue stops,
what was queued before is handled (within ``stop``'s timeout); a batch submitted after, or
left when the timeout ends, is dropped and counted too."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from silolearn.errors import SiloError

_log = logging.getLogger("silolearn.monitoring")


@dataclass(frozen=True, slots=True)
class Served:
    """One request's answer as the monitor needs it."""

    tenant: str
    version: int
    embeddings: npt.NDArray[np.float32] | None
    labels: list[str]
    metas: list[dict[str, Any]] | None = None
    """Each prediction's ``meta`` from the request, for slices (tenant data: it stays in
    this process and the tenant's scope, like the embeddings)."""


class DriftQueue:
    """A bounded queue drained by one thread calling ``handle`` on each batch; ``handle``
    and ``close`` are made in the thread by ``open_handler`` (so its workspace belongs to
    that thread), ``close`` called when the queue stops."""

    def __init__(
        self,
        open_handler: Callable[[], tuple[Callable[[Served], Any], Callable[[], None]]],
        *,
        capacity: int = 1000,
    ) -> None:
        self._open_handler = open_handler
        self._queue: queue.Queue[Served | None] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0
        """Batches never handled: the queue was full, stopped, or still held them when
        ``stop`` gave up waiting."""
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
        self._thread.start()

    def submit(self, served: Served) -> bool:
        """Queue ``served`` without waiting; False (and counted) when the queue is full or
        stopped."""
        with self._lock:  # request threads submit concurrently; the count must not race
            if not self._closed:
                try:
                    self._queue.put_nowait(served)
                    return True
                except queue.Full:
                    pass
            self.dropped += 1
            return False

    def join(self) -> None:
        """Wait until every queued batch has been handled."""
        self._queue.join()

    def stop(self, timeout: float = 30.0) -> None:
        """Handle what is queued, then close the handler; what is still queued after
        ``timeout`` seconds is counted as dropped and logged."""
        with self._lock:
            self._closed = True
        if self._thread is None:
            return
        self._queue.put(None)  # the thread is draining: room comes
        self._thread.join(timeout)
        if self._thread.is_alive():
            left = max(0, self._queue.qsize() - 1)  # the stop marker is not a batch
            with self._lock:
                self.dropped += left
        self._thread = None
        if self.dropped or self.failed:
            _log.warning(
                "drift monitor stopped: %d batches dropped, %d failed", self.dropped, self.failed
            )

    def _run(self) -> None:
        handle, close = self._open_handler()
        while True:
            served = self._queue.get()
            if served is None:
                self._queue.task_done()
                close()
                return
            try:
                handle(served)
            except SiloError as exc:
                self.failed += 1
                _log.warning("drift monitoring of %s skipped a batch: %s", served.tenant, exc)
            except Exception:  # the monitor must not die with one bad batch
                self.failed += 1
                _log.exception("drift monitoring failed on a batch of %s", served.tenant)
            finally:
                self._queue.task_done()
