"""What the running service holds: its settings, workspaces, gatekeeper, micro-batcher,
jobs and requests in flight; route modules reach it as ``service_of(request)``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request

from silolearn.clock import SYSTEM, Clock
from silolearn.config import Settings
from silolearn.errors import SiloError
from silolearn.monitoring.background import DriftQueue
from silolearn.service.auth import Gatekeeper
from silolearn.service.batcher import MicroBatcher
from silolearn.service.jobs import JobRunner
from silolearn.service.metrics import ServiceMetrics
from silolearn.service.pool import WorkspacePool
from silolearn.serving.predictor import Prediction, ServingKey
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.tenancy.access import Principal
from silolearn.workspace import Workspace

Answer = list[Prediction] | SiloError


class Drain:
    """The requests in flight, and whether the service is draining: then it takes no new
    request, and lets those in flight finish (``silolearn.service.shutdown``)."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        """Take no new request from now on. Safe in a signal handler: it takes no lock (a
        request entering at this very moment is counted in flight and finishes)."""
        self.draining = True

    def enter(self) -> bool:
        """Count a request in flight; False when draining (the request is refused)."""
        with self._lock:
            if self.draining:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight


@dataclass
class Service:
    path: Path
    settings: Settings
    pool: WorkspacePool
    gate: Gatekeeper
    batcher: MicroBatcher[ServingKey, str, Answer]
    jobs: JobRunner
    base_model_sha256: str
    metrics: ServiceMetrics
    drift: DriftQueue | None = None
    """The background drift monitor (``service.drift``), once started."""
    clock: Clock = SYSTEM
    """What decides by time (monitors, rollouts, the scheduler, rounds) reads it: the
    system's, or a manual clock a simulation advances (``Running.start(clock=...)``)."""
    drain: Drain = field(default_factory=Drain)
    _serving_scopes: dict[tuple[int, str], tuple[str, int, TenantScope]] = field(
        default_factory=dict
    )

    @property
    def draining(self) -> bool:
        return self.drain.draining

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
