"""Rounds and versions: ``POST /v1/tenants/{tenant}/rounds`` starts a round as a background
job (``GET /v1/jobs/{id}``), and a tenant's adapter versions are listed, shown, promoted
(through the same gates a round applies) and rolled back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from silolearn.errors import NotFoundError
from silolearn.pipeline import Trainer as RoundTrainer
from silolearn.pipeline import list_gate_runs
from silolearn.registry.rollout import with_rollouts
from silolearn.registry.versions import AdapterRegistry
from silolearn.service.auth import AnyToken, Trainer, TrainerOrAuditor
from silolearn.service.state import service_of
from silolearn.storage.scope import Purpose

router = APIRouter(tags=["learning"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
# bounded: a number past SQLite's 64-bit integers would not reach the query
VersionPath = Annotated[int, Path(description="The version number.", ge=1, le=2**31 - 1)]


class RoundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["head", "lora"] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    cutoff: StrictStr | None = Field(default=None, max_length=64)
    dp: bool | None = None
    epsilon: float | None = Field(default=None, gt=0.0, le=1000.0)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: StrictStr = Field(default="manual", min_length=1, max_length=500)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="Default: the version retired last."
    )
    reason: StrictStr = Field(default="rollback", min_length=1, max_length=500)


@router.post("/tenants/{tenant}/rounds", status_code=202)
def start_round(
    tenant: TenantPath, body: RoundRequest, request: Request, principal: Trainer
) -> dict[str, Any]:
    """Start a learning round of the tenant as a background job (role ``trainer``)."""
    service = service_of(request)
    params = body.model_dump(exclude_none=True)
    with service.workspace(principal) as ws:
        job = service.jobs.start_round(ws, principal, tenant, params)
    job.pop("tenant_id")
    return job


@router.get("/jobs/{job_id}")
def get_job(
    job_id: Annotated[str, Path(max_length=64)], request: Request, principal: AnyToken
) -> dict[str, Any]:
    """A background job's state and outcome (role ``trainer`` of the job's tenant)."""
    service = service_of(request)
    with service.workspace(principal) as ws:
        job = service.jobs.get(ws, job_id)
    service.gate.check_tenant(
        request, principal, job.pop("tenant_id"), NotFoundError(f"no job {job_id!r}", job=job_id)
    )
    service.gate.require_roles(request, principal, "trainer")
    return job


def _registry(ws: Any, tenant: str) -> AdapterRegistry:
    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))


@router.get("/tenants/{tenant}/versions")
def list_versions(
    tenant: TenantPath, request: Request, principal: TrainerOrAuditor
) -> list[dict[str, Any]]:
    """The tenant's adapter versions: status, the canary rollout each took part in (share,
    step, feedback per version, evidence), metrics, lineage (``trainer`` or ``auditor``)."""
    with service_of(request).workspace(principal) as ws:
        scope = ws.scope(tenant, purpose=Purpose.REGISTRY)
        return with_rollouts(scope, [v.to_dict() for v in AdapterRegistry(scope).list()])


@router.get("/tenants/{tenant}/versions/{version}")
def show_version(
    tenant: TenantPath, version: VersionPath, request: Request, principal: TrainerOrAuditor
) -> dict[str, Any]:
    """One version with its rollout and gate runs (``trainer`` or ``auditor``)."""
    with service_of(request).workspace(principal) as ws:
        scope = ws.scope(tenant, purpose=Purpose.REGISTRY)
        (row,) = with_rollouts(scope, [AdapterRegistry(scope).get(version).to_dict()])
        row["gate_runs"] = list_gate_runs(ws, tenant, version)
    return row


@router.post("/tenants/{tenant}/versions/{version}/promote")
def promote_version(
    tenant: TenantPath,
    version: VersionPath,
    body: PromoteRequest,
    request: Request,
    principal: Trainer,
) -> dict[str, Any]:
    """Promote a candidate through the gates a round applies (role ``trainer``); a failing
    candidate is rejected (409)."""
    with service_of(request).workspace(principal) as ws:
        return RoundTrainer(ws).promote(tenant, version, reason=body.reason).to_dict()


@router.post("/tenants/{tenant}/rollback")
def rollback(
    tenant: TenantPath, body: RollbackRequest, request: Request, principal: Trainer
) -> dict[str, Any]:
    """Serve an earlier version again, only this tenant's (role ``trainer``)."""
    with service_of(request).workspace(principal) as ws:
        return _registry(ws, tenant).rollback(to=body.to, reason=body.reason).to_dict()
