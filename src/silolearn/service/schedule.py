"""The scheduler in the service: a tenant's schedule policy and decisions over the API
(``GET``/``PUT /v1/tenants/{t}/schedule``, an ``admin`` or ``trainer`` of the tenant), and
the launcher that starts scheduled rounds as the service's background jobs, the path of
``POST /v1/tenants/{t}/rounds`` (``service.jobs``)."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from silolearn.clock import SYSTEM, Clock, Periodic
from silolearn.operations.policy import SchedulePolicies
from silolearn.operations.scheduler import Launched, Scheduler, schedule_view
from silolearn.service.auth import MonitorReader, allow
from silolearn.service.jobs import JobRunner
from silolearn.service.state import service_of
from silolearn.tenancy.access import Principal
from silolearn.workspace import Workspace

router = APIRouter(tags=["schedule"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
TrainerOrAdmin = Annotated[Principal, allow("trainer", "admin")]

SCHEDULER = Principal(
    grant_id="scheduler",
    tenant_id=None,
    tenant=None,
    roles=frozenset({"trainer"}),
    expires_at="",
)
"""Who the scheduler's jobs are started by (their audit actor: ``token:scheduler``)."""


class JobLauncher:
    """Starts a scheduled round as a background job of the service."""

    def __init__(self, jobs: JobRunner) -> None:
        self._jobs = jobs

    def launch(self, ws: Workspace, tenant: str, decision: str) -> Launched:
        job = self._jobs.start_round(ws, SCHEDULER, tenant, {})
        return Launched(job=str(job["id"]))

    def outcome(self, ws: Workspace, job: str) -> Launched | None:
        found = self._jobs.get(ws, job)
        if found["state"] in ("queued", "running"):
            return None
        if found["state"] == "interrupted":
            return Launched(job=job, outcome="interrupted")
        return Launched(job=job, outcome=found["outcome"] or "failed", version=found["version"])

    def in_progress(self, ws: Workspace) -> set[str]:
        rows = ws.conn.execute(
            "SELECT DISTINCT tenant_id FROM service_jobs WHERE state IN ('queued', 'running')"
        ).fetchall()
        return {str(tenant_id) for (tenant_id,) in rows}


def service_scheduler(path: FilePath, jobs: JobRunner, clock: Clock) -> Scheduler | None:
    """The service's scheduler, starting rounds as its jobs (``None`` when ``[schedule]
    enabled`` is false)."""
    with Workspace.open(path, actor="scheduler") as ws:
        settings = ws.settings.schedule
    if not settings.enabled:
        return None
    return Scheduler(lambda: Workspace.open(path, actor="scheduler"), JobLauncher(jobs), clock)


def start_scheduler(scheduler: Scheduler, *, interval: float) -> Periodic:
    """The scheduler's thread, ticking every ``interval`` seconds, started."""
    loop = Periodic(scheduler.tick, interval=interval, name="scheduler")
    loop.start()
    return loop


class ScheduleUpdate(BaseModel):
    """Keys of the tenant's policy to set; ``reset`` first drops its own policy, so the
    ``[schedule]`` defaults apply to every key not given."""

    model_config = ConfigDict(extra="forbid")

    triggers: list[Literal["schedule", "volume", "performance", "drift"]] | None = Field(
        default=None, max_length=4, description="[] for manual rounds only."
    )
    cron: StrictStr | None = Field(default=None, max_length=120)
    min_new_records: int | None = Field(default=None, ge=1, le=1_000_000_000)
    backoff_minutes: float | None = Field(default=None, gt=0.0, le=60.0 * 24 * 366)
    backoff_max_hours: float | None = Field(default=None, gt=0.0, le=24.0 * 366)
    reset: bool = False


@router.get("/tenants/{tenant}/schedule")
def show_schedule(tenant: TenantPath, request: Request, principal: MonitorReader) -> dict[str, Any]:
    """The tenant's schedule policy, state and newest decisions with their evidence (read
    by its auditor, trainer or admin, like its performance and drift; set by its trainer
    or admin)."""
    service = service_of(request)
    with service.workspace(principal) as ws:
        return schedule_view(ws, tenant, service.clock.now(), wall=service.clock is SYSTEM)


@router.put("/tenants/{tenant}/schedule")
def set_schedule(
    tenant: TenantPath, body: ScheduleUpdate, request: Request, principal: TrainerOrAdmin
) -> dict[str, Any]:
    """Set keys of the tenant's schedule policy (audited ``schedule.policy``)."""
    service = service_of(request)
    changes = body.model_dump(exclude={"reset"}, exclude_none=True)
    now = service.clock.now()
    with service.workspace(principal) as ws:
        SchedulePolicies(ws).set(tenant, changes, at=now, reset=body.reset)
        return schedule_view(ws, tenant, now, wall=service.clock is SYSTEM)
