"""Opened workspaces for the service's request threads, each lent to one request at a time.

A workspace holds one SQLite connection and an audit log with its per-transaction state, so
two threads never share one: each request borrows its own, with the audit actor set to the
principal it serves (``token:<grant id>``), and gives it back. The pool grows to the number
of requests in flight and closes them all (signing the audit head) when the service stops.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from silolearn.workspace import Workspace

SERVICE_ACTOR = "service"
"""The actor of what the service does on its own (start, serve, purge)."""


class WorkspacePool:
    """Workspaces opened on ``path``, lent one request at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._free: queue.SimpleQueue[Workspace] = queue.SimpleQueue()
        self._opened: list[Workspace] = []
        self._lock = threading.Lock()

    def open(self) -> Workspace:
        """A workspace of its own, outside the pool (closed by the caller)."""
        return Workspace.open(self.path, actor=SERVICE_ACTOR)

    @contextmanager
    def borrow(self, actor: str = SERVICE_ACTOR) -> Iterator[Workspace]:
        try:
            ws = self._free.get_nowait()
        except queue.Empty:
            ws = self.open()
            with self._lock:
                self._opened.append(ws)
        ws.actor = ws.audit.actor = actor
        try:
            yield ws
        finally:
            ws.actor = ws.audit.actor = SERVICE_ACTOR
            self._free.put(ws)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for ws in opened:
            ws.close()
