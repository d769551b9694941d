"""Retention of served predictions: a thread that purges, every ``interval`` seconds, the
kept texts whose retention has ended, tenant by tenant through its serving scope (each
purge audited ``served.purge`` with its count), and the embeddings and predicted labels
drift monitoring kept (``served.embeddings.purge``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from silolearn.clock import SYSTEM, Periodic
from silolearn.errors import SiloError
from silolearn.service.pool import WorkspacePool
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.storage.served import ServedStore, tenants_with_expired
from silolearn.storage.served_embeddings import ServedEmbeddings, tenants_with_expired_embeddings
from silolearn.workspace import Workspace

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
        """Purge every tenant's expired kept predictions and served embeddings now; returns
        how many rows went."""
        now = SYSTEM.now()
        with self._pool.borrow() as ws:
            return _each_tenant(
                ws,
                tenants_with_expired(ws.conn),
                lambda scope: ServedStore(scope).purge_expired(),
                "kept predictions",
            ) + _each_tenant(
                ws,
                tenants_with_expired_embeddings(ws.conn, now=now),
                lambda scope: ServedEmbeddings(scope).purge_expired(now=now),
                "served embeddings",
            )


def _each_tenant(
    ws: Workspace, tenant_ids: list[str], purge: Callable[[TenantScope], int], what: str
) -> int:
    """``purge`` through each tenant's serving scope; a tenant that fails is logged."""
    purged = 0
    for tenant_id in tenant_ids:
        row = ws.conn.execute("SELECT name FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
        if row is None:
            continue
        try:
            purged += purge(ws.scope(str(row[0]), purpose=Purpose.SERVING))
        except SiloError:
            _log.exception("purging the %s of %s failed", what, row[0])
    return purged
