"""``GET /v1/tenants/{tenant}/performance``: a tenant's performance per version, from
feedback (accuracy, macro-F1, daily tallies, the control chart and its slices) and estimated
from what it served (marked as an estimate), with its latest performance signals (roles
``auditor``, ``trainer`` or ``admin`` of the tenant: it names labels and slice values)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from silolearn.monitoring.feedback import PerformanceMonitor
from silolearn.service.auth import MonitorReader
from silolearn.service.state import service_of

router = APIRouter(tags=["monitoring"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]


@router.get("/tenants/{tenant}/performance")
def performance(tenant: TenantPath, request: Request, principal: MonitorReader) -> Any:
    """The tenant's performance monitoring, newest version first (see the module)."""
    with service_of(request).workspace(principal) as ws:
        report: dict[str, Any] = PerformanceMonitor(ws).report(tenant)
    return report
