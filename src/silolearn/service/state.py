"""What the running service holds: its settings, workspaces, gatekeeper, micro-batcher and
jobs; route modules reach it as ``service_of(request)``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from silolearn.config import Settings
from silolearn.errors import SiloError
from silolearn.service.auth import Gatekeeper
from silolearn.service.batcher import MicroBatcher
from silolearn.service.jobs import JobRunner
from silolearn.service.metrics import ServiceMetrics
from silolearn.service.pool import WorkspacePool
from silolearn.serving.predictor import Prediction
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.tenancy.access import Principal
from silolearn.workspace import Workspace

Answer = list[Prediction] | SiloError


@dataclass
class Service:
    path: Path
    settings: Settings
    pool: WorkspacePool
    gate: Gatekeeper
    batcher: MicroBatcher[str, str, Answer]
    jobs: JobRunner
    base_model_sha256: str
    metrics: ServiceMetrics
    draining: bool = False
    _serving_scopes: dict[tuple[int, str], tuple[str, int, TenantScope]] = field(
        default_factory=dict
    )

    @contextmanager
    def workspace(self, principal: Principal | None = None) -> Iterator[Workspace]:
        """A workspace of the pool for one request, acting as ``principal``."""
        with self.pool.borrow(*(() if principal is None else (principal.actor,))) as ws:
            yield ws

    def serving_scope(self, ws: Workspace, tenant: str) -> TenantScope:
        """``tenant``'s serving scope on this pooled workspace, opened (and audited) once,
        and again only after the tenant was recreated or its data key rotated."""
        info = ws.tenants.get(tenant)
        key = (id(ws), tenant)
        cached = self._serving_scopes.get(key)
        if cached is None or cached[0] != info.id or cached[1] != info.dek_version:
            cached = (info.id, info.dek_version, ws.scope(tenant, purpose=Purpose.SERVING))
            self._serving_scopes[key] = cached
        return cached[2]


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service
