"""Retention of served predictions: a thread that purges, every ``interval`` seconds, the
kept texts whose retention has ended, tenant by tenant through its serving scope (each
purge audited ``served.purge`` with its count)."""

from __future__ import annotations

import logging

from silolearn.clock import Periodic
from silolearn.errors import SiloError
from silolearn.service.pool import WorkspacePool
from silolearn.storage.scope import Purpose
from silolearn.storage.served import ServedStore, tenants_with_expired

_log = logging.getLogger("silolearn.service")


class Retention:
    def __init__(self, pool: WorkspacePool, *, interval: float = 60.0) -> None:
        self._pool = pool
        self._periodic = Periodic(self.purge, interval=interval, name="retention")

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def purge(self) -> int:
        """Purge every tenant's expired kept predictions now; returns how many."""
        purged = 0
        with self._pool.borrow() as ws:
            for tenant_id in tenants_with_expired(ws.conn):
                row = ws.conn.execute(
                    "SELECT name FROM tenants WHERE id = ?", (tenant_id,)
                ).fetchone()
                if row is None:
                    continue
                try:
                    scope = ws.scope(str(row[0]), purpose=Purpose.SERVING)
                    purged += ServedStore(scope).purge_expired()
                except SiloError:
                    _log.exception("purging the kept predictions of %s failed", row[0])
        return purged
