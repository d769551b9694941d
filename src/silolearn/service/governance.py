"""What an auditor reads (role ``auditor``): a tenant's audit events, incidents, privacy
ledger and gate verdicts. Audit details never hold record text (the log is built so), and
nothing here returns a record."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from silolearn.monitoring.incidents import Incidents
from silolearn.pipeline import list_gate_runs
from silolearn.privacy.ledger import tenant_scope
from silolearn.service.auth import Auditor
from silolearn.service.state import service_of

router = APIRouter(tags=["governance"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]


@router.get("/tenants/{tenant}/audit")
def audit_events(
    tenant: TenantPath,
    request: Request,
    principal: Auditor,
    action: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    """The tenant's audit events, newest ``limit``, oldest first."""
    with service_of(request).workspace(principal) as ws:
        ws.tenants.get(tenant)
        events = ws.audit.events(tenant=tenant, action=action, since=since, limit=limit)
    return [e.to_dict() for e in events]


@router.get("/tenants/{tenant}/incidents")
def incidents(tenant: TenantPath, request: Request, principal: Auditor) -> list[dict[str, Any]]:
    """The tenant's incidents, open and resolved."""
    with service_of(request).workspace(principal) as ws:
        ws.tenants.get(tenant)
        return Incidents(ws).list(tenant=tenant)


@router.get("/tenants/{tenant}/ledger")
def ledger(tenant: TenantPath, request: Request, principal: Auditor) -> dict[str, Any]:
    """The tenant's privacy ledger: its DP events, the epsilon spent and what remains."""
    with service_of(request).workspace(principal) as ws:
        return ws.ledger().summary(tenant_scope(ws.tenants.get(tenant).id))


@router.get("/tenants/{tenant}/gates")
def gate_runs(tenant: TenantPath, request: Request, principal: Auditor) -> list[dict[str, Any]]:
    """Every gate run of the tenant's versions, oldest first: trigger and verdicts."""
    with service_of(request).workspace(principal) as ws:
        return list_gate_runs(ws, tenant)
