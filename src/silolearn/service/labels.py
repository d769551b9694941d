"""``GET /v1/tenants/{tenant}/label-queue``: the tenant's served predictions most worth a
person's label (``serving.queue``), closed by feedback that names them.

A contributor (who labels) gets the texts, and the items are handed out: the feedback that
answers one is stored as an ``active`` label. Trainers, auditors and admins see the queue's
ids, uncertainties and versions without any text, and looking does not hand anything out.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from silolearn.service.auth import allow
from silolearn.service.state import service_of
from silolearn.serving.queue import MAX_ITEMS, label_queue
from silolearn.storage.scope import Purpose
from silolearn.tenancy.access import Principal

router = APIRouter(tags=["data"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
TEXT_ROLES = frozenset({"contributor"})
"""The roles that see the queue's texts: those who label (and send records) anyway."""
QueueReader = Annotated[Principal, allow("contributor", "trainer", "auditor", "admin")]


@router.get("/tenants/{tenant}/label-queue")
def get_label_queue(
    tenant: TenantPath,
    request: Request,
    principal: QueueReader,
    limit: Annotated[int, Query(ge=1, le=MAX_ITEMS, description="How many items.")] = 20,
) -> dict[str, Any]:
    """The next predictions to label (role ``contributor``, with their texts; ``trainer``,
    ``auditor`` or ``admin``, without): uncertain by the margin of their served
    probabilities, spread over the embedding space so the batch is not one cluster. Give
    each one's label as feedback naming its ``prediction_id`` to close it."""
    service = service_of(request)
    hand_out = bool(principal.roles & TEXT_ROLES)
    with service.workspace(principal) as ws:
        scope = ws.scope(tenant, purpose=Purpose.INGEST)
        items = label_queue(scope, limit, hand_out=hand_out)
    return {
        "tenant": tenant,
        "items": [item.to_dict() for item in items],
        "texts": hand_out,
    }
