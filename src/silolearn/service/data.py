"""Data in: ``POST /v1/tenants/{tenant}/records`` (ingest) and ``.../feedback``, both through
the gateway like any record (validation, minimisation, content routing, contamination
check), with the gateway's per-line report as the answer.

Feedback is one record, so its answer also names what became of it, as ``outcome`` and
``reason``, and the same is audited (``feedback.received``, details sealed like every
tenant event): ``stored``; ``duplicate`` when its id is stored already (the same feedback
given again) or its text is already in training under another record id (nothing new to
learn: the gateway's ``repeats``); ``contaminated`` when it is a near-copy of evaluation
data and kept out of training (I5). None of these loses anything, so each is a 200; a
rejected record is a 422 naming why."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool

from silolearn.errors import InvalidInput
from silolearn.ingest.gateway import Gateway
from silolearn.monitoring.feedback import PerformanceMonitor
from silolearn.operations.rollout import RolloutDriver
from silolearn.records import LabelOrigin, LabelSource, MetaValue, Record
from silolearn.service.auth import Contributor
from silolearn.service.state import service_of
from silolearn.storage.scope import Purpose
from silolearn.storage.served import ServedStore, ServedText
from silolearn.tenancy.access import Principal

router = APIRouter(tags=["data"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
NDJSON = "application/x-ndjson"


class RecordsRequest(BaseModel):
    """Records as JSON: each item is checked like a line of a JSON lines file."""

    model_config = ConfigDict(extra="forbid")

    records: list[Any] = Field(description="Records {id, text, label, timestamp, meta}.")


class PredictionFeedback(BaseModel):
    """The right label of a served prediction, named by its id."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: StrictStr = Field(min_length=1, max_length=64)
    label: StrictStr = Field(min_length=1, max_length=256)
    meta: dict[Annotated[StrictStr, Field(max_length=128)], MetaValue] = Field(
        default_factory=dict,
        max_length=64,
        description="The served item's meta (region, channel, product): performance is "
        "watched per value of the fields that [performance] slice_fields names. Without "
        "one, the meta the predict request gave for this text.",
    )
    reviewed: StrictBool = Field(
        default=False,
        description="A person checked this label. Unreviewed feedback that repeats the "
        "served label is self-confirming: a round bounds its share of what it learns from.",
    )


_RECORDS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": RecordsRequest.model_json_schema()},
            NDJSON: {"schema": {"type": "string", "description": "JSON lines, one record each"}},
        },
    }
}


@router.post("/tenants/{tenant}/records", openapi_extra=_RECORDS_BODY)
async def ingest_records(
    tenant: TenantPath,
    request: Request,
    principal: Contributor,
    strict: Annotated[
        bool, Query(description="Store all or nothing: any bad line refuses the whole body.")
    ] = False,
    label_source: Annotated[
        Literal["bulk", "human"],
        Query(
            alias="source",
            description="Where the labels came from: bulk (default) or human (a person gave "
            "each one), kept sealed with each training record.",
        ),
    ] = "bulk",
) -> dict[str, Any]:
    """Ingest records of the tenant (role ``contributor``): JSON lines (``Content-Type:
    application/x-ndjson``) or ``{"records": [...]}``; the same per-line report as
    ``silolearn ingest``."""
    body = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    source: Any
    if kind == NDJSON:
        try:
            source = io.StringIO(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"the body is not UTF-8 text (byte {exc.start})") from None
    elif kind in ("application/json", ""):
        try:
            source = RecordsRequest.model_validate_json(body).records
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_input=False)) from None
    else:
        raise InvalidInput(
            f"records come as application/json or {NDJSON}, not {kind[:60]!r}",
            content_type=kind[:60],
        )
    origin = LabelOrigin(LabelSource(label_source), reviewed=label_source == "human")
    return await run_in_threadpool(_ingest, request, principal, tenant, source, strict, origin)


def _ingest(
    request: Request,
    principal: Principal,
    tenant: str,
    source: Any,
    strict: bool,
    origin: LabelOrigin,
) -> dict[str, Any]:
    service = service_of(request)
    with service.workspace(principal) as ws:
        report = Gateway(ws).ingest(tenant, source, strict=strict, origin=origin).to_dict()
    service.metrics.record_ingest(tenant, report)
    return report


@router.post("/tenants/{tenant}/feedback")
def feedback(
    tenant: TenantPath,
    body: PredictionFeedback | Record,
    request: Request,
    principal: Contributor,
) -> dict[str, Any]:
    """Production feedback (role ``contributor``): ``{"prediction_id", "label"}`` names a
    served prediction, whose kept text is stored with the right label; or a new labelled
    record. Either goes through the gateway; the answer is its report with the record's id,
    ``outcome`` and ``reason`` (see the module; a rejected record is a 422 naming why)."""
    service = service_of(request)
    served: ServedText | None = None
    with service.workspace(principal) as ws:
        if isinstance(body, PredictionFeedback):
            scope = ws.scope(tenant, purpose=Purpose.INGEST)
            served = ServedStore(scope).get(body.prediction_id)
            record: dict[str, Any] = {
                "id": f"feedback:{served.prediction_id}",
                "text": served.text,
                "label": body.label,
                "timestamp": served.served_at,
                "meta": {"source": "feedback", "served_version": served.version},
            }
            origin = _origin(served, body)
        else:
            if body.label is None:
                raise InvalidInput("feedback is a labelled record: give its label")
            record = json.loads(body.canonical_json())
            origin = LabelOrigin(LabelSource.HUMAN, reviewed=True)
        # an answer about a text: a copy of a training text is not a new observation
        report = Gateway(ws).ingest(tenant, [record], origin=origin, keep_copies=False).to_dict()
        if served is not None and not report["rejected"]:
            # answered: it leaves the label queue
            ServedStore(scope).mark_answered(served.prediction_id)
            given = report["accepted"] or report["repeats"] or report["contaminated"]
            if isinstance(body, PredictionFeedback) and given:  # not the same one again
                PerformanceMonitor(ws, clock=service.clock).feedback(
                    tenant,
                    version=served.version,
                    served=served.label,
                    label=body.label,
                    meta=body.meta or served.meta,
                )
                # a canary rollout compares its versions on it, and decides at once
                right = served.label == body.label
                RolloutDriver(ws, clock=service.clock).feedback(
                    tenant, served.version, correct=right
                )
        if report["rejected"]:
            reason = report["errors"][0]["reason"] if report["errors"] else "rejected"
            service.metrics.record_ingest(tenant, report)
            raise InvalidInput(f"feedback not stored: {reason}", report=report)
        outcome, reason = feedback_outcome(report)
        ws.audit.append(
            "feedback.received",
            tenant=tenant,
            details={
                "record_id": record["id"],
                "outcome": outcome,
                "reason": reason,
                "prediction_id": None if served is None else served.prediction_id,
                "served_version": None if served is None else served.version,
            },
        )
    service.metrics.record_ingest(tenant, report)
    # the same feedback given again is not counted twice
    if served is not None and (report["accepted"] or report["repeats"] or report["contaminated"]):
        correct = "true" if served.label == body.label else "false"
        service.metrics.feedback.labels(tenant, str(served.version), correct).inc()
    return {**report, "record_id": record["id"], "outcome": outcome, "reason": reason}


def feedback_outcome(report: dict[str, Any]) -> tuple[str, str]:
    """What became of one feedback record that was not rejected, from the gateway's
    report: an outcome and its reason."""
    if report["accepted"]:
        store = "training" if report["train"] else "evaluation"
        return "stored", f"stored in the {store} store"
    if report["repeats"]:
        return "duplicate", "its text is already in training under another record id"
    if report["contaminated"]:
        return "contaminated", "a near-copy of evaluation data: kept out of training (I5)"
    return "duplicate", "already stored under this record id (the same feedback, given again)"


def _origin(served: ServedText, body: PredictionFeedback) -> LabelOrigin:
    """Feedback on a prediction the label queue handed out is a person's answer
    (``active``); other feedback is reviewed only when the client says a person checked it."""
    confirms = served.label == body.label
    if served.queued:
        return LabelOrigin(LabelSource.ACTIVE, reviewed=True, confirms=confirms)
    return LabelOrigin(LabelSource.FEEDBACK, reviewed=body.reviewed, confirms=confirms)
