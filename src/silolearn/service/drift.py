"""Drift monitoring in the service: ``GET /v1/tenants/{tenant}/drift`` (roles ``auditor``,
``trainer`` or ``admin`` of the tenant, like its performance), and the background monitor the
predict handler hands each answer to (``observe``), off the request's path
(``monitoring.background``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path as FsPath
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Path, Query, Request

from silolearn.clock import SYSTEM, Clock
from silolearn.errors import ConflictError, SiloError
from silolearn.monitoring.background import DriftQueue, Served
from silolearn.monitoring.watch import DriftMonitor, drift_view
from silolearn.service.auth import MonitorReader
from silolearn.service.batcher import MicroBatcher
from silolearn.service.state import Answer, Service, service_of
from silolearn.serving.predictor import Prediction
from silolearn.workspace import Workspace

router = APIRouter(tags=["monitoring"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
ANSWER_TIMEOUT = 600.0
CHUNK = 64
"""Texts per request when a reference is answered, so serving traffic interleaves."""


@router.get("/tenants/{tenant}/drift")
def drift(
    tenant: TenantPath,
    request: Request,
    principal: MonitorReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, Any]:
    """The tenant's drift: its policy, the newest result of each test (embeddings, predicted
    labels, feedback labels) and its newest alarms with their evidence."""
    with service_of(request).workspace(principal) as ws:
        return drift_view(ws, tenant, limit=limit)


def observe(
    service: Service, tenant: str, answer: Answer, metas: list[dict[str, Any]] | None = None
) -> None:
    """Hand an answered request (with each text's ``meta``, for slices) to the drift
    monitor, without waiting for it."""
    if service.drift is None or isinstance(answer, SiloError) or not answer:
        return
    labels = [p.label for p in answer]
    service.drift.submit(Served(tenant, answer[0].version, _embeddings(answer), labels, metas))


def _embeddings(predictions: Sequence[Prediction]) -> npt.NDArray[np.float32] | None:
    """The predictions' embeddings as rows; None when the adapter embedded on its own."""
    rows = [p.embedding for p in predictions if p.embedding is not None]
    return np.stack(rows) if rows and len(rows) == len(predictions) else None


def start_drift_monitor(
    path: FsPath, batcher: MicroBatcher[Any, str, Answer], clock: Clock = SYSTEM
) -> DriftQueue:
    """The background drift monitor: its thread opens its own workspace and builds a
    version's reference by asking the micro-batcher for that version, like a request a
    canary rollout assigned to it (a version that no longer serves is answered by the
    active one: that reference is refused and built again with the next batch)."""

    def answer(
        tenant: str, version: int, texts: Sequence[str]
    ) -> tuple[int, npt.NDArray[np.float32] | None, list[str]]:
        key = (tenant, version)  # that version while it serves, a canary's included
        tickets = [
            batcher.submit(key, list(texts[i : i + CHUNK])) for i in range(0, len(texts), CHUNK)
        ]
        answered = []
        for ticket in tickets:
            result = ticket.result(timeout=ANSWER_TIMEOUT)
            if isinstance(result, SiloError):
                raise result
            answered += result
        if len({p.version for p in answered}) != 1:
            raise ConflictError(f"tenant {tenant!r} changed versions while its reference was built")
        return answered[0].version, _embeddings(answered), [p.label for p in answered]

    def open_handler() -> tuple[Callable[[Served], Any], Callable[[], None]]:
        ws = Workspace.open(path, actor="drift-monitor")
        monitor = DriftMonitor(ws, answer, clock=clock)

        def close() -> None:
            try:
                monitor.flush()
            finally:
                ws.close()

        def handle(s: Served) -> Any:
            return monitor.observe(s.tenant, s.version, s.embeddings, s.labels, s.metas)

        return handle, close

    queue = DriftQueue(open_handler)
    queue.start()
    return queue
