"""``POST /v1/tenants/{tenant}/predict``: the tenant's active version answers, through the
shared micro-batcher; each text's prediction is kept sealed for feedback (``storage.served``)
and the request is audited ``predict`` with its count and version, never its texts.

The sealing, the audit event and the response's body are made as soon as the flush is
computed and before the answer is released (``Ticket.then``): the batcher releases it at its
tick plus ``[service] release_delay_ms``, so this work, whose time depends on what other
requests write at the same moment, is hidden inside the delay too; after the release only
the prepared body goes out."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from silolearn.audit.log import utcnow
from silolearn.errors import InvalidInput, ServiceUnavailable, SiloError
from silolearn.learning.active import uncertainty
from silolearn.monitoring.feedback import PerformanceMonitor
from silolearn.registry.rollout import RolloutStore, assign
from silolearn.service.auth import Reader
from silolearn.service.batcher import BatcherStopped
from silolearn.service.drift import observe
from silolearn.service.state import Answer, Service, service_of
from silolearn.serving.predictor import ServingKey, check_texts
from silolearn.storage.scope import TenantScope
from silolearn.storage.served import ServedStore, ServedText
from silolearn.tenancy.access import Principal

router = APIRouter(tags=["serving"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
ANSWER_TIMEOUT = 300.0
REQUEST_KEY_HEADER = "X-Request-Key"
MAX_META_FIELDS = 16

MetaValue = (
    StrictBool
    | StrictInt
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | Annotated[StrictStr, Field(max_length=256)]
)
Meta = Annotated[
    dict[Annotated[StrictStr, Field(min_length=1, max_length=64)], MetaValue],
    Field(max_length=MAX_META_FIELDS),
]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[StrictStr] = Field(min_length=1, description="The texts to classify.")
    request_key: StrictStr | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Keeps the requests that carry it on one version while a canary "
        "rollout runs (or send the X-Request-Key header); without one, each request is "
        "assigned afresh.",
    )
    meta: Meta | list[Meta] | None = Field(
        default=None,
        description="Flat facts about the texts (region, channel, product: at most 16 fields, "
        "strings of at most 256 characters, numbers, booleans): one object for every text, "
        "or a list of one per text. Drift is watched per value of the fields [drift] "
        "slice_fields names; kept sealed with each prediction, so feedback on it need not "
        "repeat it.",
    )

    def metas(self) -> list[dict[str, Any]] | None:
        """One ``meta`` per text, None when the request gave none."""
        if self.meta is None:
            return None
        if isinstance(self.meta, dict):
            return [self.meta] * len(self.texts)
        if len(self.meta) != len(self.texts):
            raise InvalidInput(
                f"meta: a list of one object per text ({len(self.texts)}), got {len(self.meta)}"
            )
        return list(self.meta)


class PredictionOut(BaseModel):
    label: str
    probabilities: dict[str, float]
    version: int
    prediction_id: str = Field(description="Names this prediction in feedback.")


class PredictResponse(BaseModel):
    tenant: str
    predictions: list[PredictionOut]


def batch_key(scope: TenantScope, request_key: str | None) -> ServingKey:
    """The micro-batcher's key for a request of the scope's tenant, which decides what
    answers it: the tenant's active version, resolved once per flush
    (``Predictor.answer_batch``), so every request of a flush, and every text of a request,
    is answered by one version; while a canary rollout runs, the canary or the stable
    version, as the request key assigns it (``registry.rollout.assign``)."""
    rollout = RolloutStore(scope).serving()
    if rollout is None:
        return scope.tenant.name
    canary = assign(scope, rollout.version, rollout.share, request_key)
    return (scope.tenant.name, rollout.version if canary else rollout.stable)


@router.post("/tenants/{tenant}/predict", response_model=PredictResponse)
def predict(
    tenant: TenantPath,
    body: PredictRequest,
    request: Request,
    principal: Reader,
) -> Response:
    """Labels and probabilities from the tenant's active adapter version (role ``reader``)."""
    service = service_of(request)
    started = time.perf_counter()
    check_texts(
        body.texts,
        max_text_bytes=service.settings.ingest.max_text_bytes,
        max_texts=service.settings.service.max_predict_texts,
    )
    metas = body.metas()
    request_key = body.request_key or request.headers.get(REQUEST_KEY_HEADER)
    with service.workspace(principal) as ws:
        key = batch_key(service.serving_scope(ws, tenant), request_key)
    try:
        ticket = service.batcher.submit(key, body.texts)
    except BatcherStopped:
        raise ServiceUnavailable("the service is stopping: predict again shortly") from None
    version, response = ticket.then(
        lambda answer: _keep_and_respond(service, principal, tenant, body.texts, metas, answer),
        timeout=ANSWER_TIMEOUT,
    )
    service.metrics.predictions.labels(tenant, version).inc(len(body.texts))
    service.metrics.latency.labels(tenant, version).observe(time.perf_counter() - started)
    if ticket.late:
        service.metrics.deadline_misses.labels(tenant).inc()
    return response


def _keep_and_respond(
    service: Service,
    principal: Principal,
    tenant: str,
    texts: list[str],
    metas: list[dict[str, Any]] | None,
    answer: Answer,
) -> tuple[str, Response]:
    """Keep each prediction (with its ``meta``) sealed for feedback, audit the request, and
    make its body."""
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
            meta=metas[i] if metas is not None else {},
        )
        for i, (text, p) in enumerate(zip(texts, answer, strict=True))
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
            labels = [p.label for p in answer]
            RolloutStore(scope).record_served_in(conn, answer[0].version, labels)
    observe(service, tenant, answer, metas)
    body = PredictResponse(
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
    return str(answer[0].version), Response(body.model_dump_json(), media_type="application/json")
