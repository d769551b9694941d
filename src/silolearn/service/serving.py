"""``POST /v1/tenants/{tenant}/predict``: the tenant's active version answers, through the
shared micro-batcher; each text's prediction is kept sealed for feedback (``storage.served``)
and the request is audited ``predict`` with its count and version, never its texts."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from silolearn.audit.log import utcnow
from silolearn.errors import ServiceUnavailable, SiloError
from silolearn.learning.active import uncertainty
from silolearn.monitoring.feedback import PerformanceMonitor
from silolearn.service.auth import Reader
from silolearn.service.batcher import BatcherStopped
from silolearn.service.state import service_of
from silolearn.serving.predictor import check_texts
from silolearn.storage.served import ServedStore, ServedText

router = APIRouter(tags=["serving"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
ANSWER_TIMEOUT = 300.0


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(min_length=1, description="The texts to classify.")


class PredictionOut(BaseModel):
    label: str
    probabilities: dict[str, float]
    version: int
    prediction_id: str = Field(description="Names this prediction in feedback.")


class PredictResponse(BaseModel):
    tenant: str
    predictions: list[PredictionOut]


@router.post("/tenants/{tenant}/predict", response_model=PredictResponse)
def predict(
    tenant: TenantPath,
    body: PredictRequest,
    request: Request,
    principal: Reader,
) -> PredictResponse:
    """Labels and probabilities from the tenant's active adapter version (role ``reader``)."""
    service = service_of(request)
    started = time.perf_counter()
    check_texts(
        body.texts,
        max_text_bytes=service.settings.ingest.max_text_bytes,
        max_texts=service.settings.service.max_predict_texts,
    )
    with service.workspace(principal) as ws:
        ws.tenants.get(tenant)
    try:
        future = service.batcher.submit(tenant, body.texts)
    except BatcherStopped:
        raise ServiceUnavailable("the service is stopping: predict again shortly") from None
    answer = future.result(timeout=ANSWER_TIMEOUT)
    if isinstance(answer, SiloError):
        raise answer
    served_at = utcnow()
    served = [
        ServedText(
            "p-" + secrets.token_hex(12),
            text,
            p.label,
            p.version,
            served_at,
            uncertainty=uncertainty(list(p.probabilities.values())),
            embedding=p.embedding,
        )
        for text, p in zip(body.texts, answer, strict=True)
    ]
    retention = timedelta(hours=service.settings.service.prediction_retention_hours)
    with service.workspace(principal) as ws:
        scope = service.serving_scope(ws, tenant)
        with scope.write() as conn:
            ServedStore(scope).keep_in(conn, served, retention=retention)
            scope.audit_in(
                conn,
                "predict",
                obj=f"v{answer[0].version}",
                details={"count": len(answer), "kept": retention > timedelta(0)},
            )
            monitor = PerformanceMonitor(ws)
            probabilities = [p.probabilities for p in answer]
            monitor.served_in(conn, scope.tenant.id, answer[0].version, probabilities)
    version = str(answer[0].version)
    service.metrics.predictions.labels(tenant, version).inc(len(answer))
    service.metrics.latency.labels(tenant, version).observe(time.perf_counter() - started)
    return PredictResponse(
        tenant=tenant,
        predictions=[
            PredictionOut(
                label=p.label,
                probabilities=p.probabilities,
                version=p.version,
                prediction_id=s.prediction_id,
            )
            for p, s in zip(answer, served, strict=True)
        ],
    )
