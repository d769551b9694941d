"""The HTTP API's application: ``create_app(workspace_path)``, the seam every entry point
(``silolearn serve``, tests, benchmarks) builds on.

Starting it opens the workspace, checks the base model's digest (I3) and loads the frozen
encoder once, starts the micro-batcher, marks jobs a previous process left unfinished as
interrupted, and purges expired kept predictions; stopping it (after the server has let
in-flight requests finish, ``silolearn.service.shutdown``) drains the micro-batcher, waits
for running rounds up to their grace and closes the workspaces, signing the audit head.
``/healthz`` answers while the process is up, ``/readyz`` while it serves; everything else
is under ``/v1``, JSON in and out, described by ``/openapi.json``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from silolearn.clock import SYSTEM, Clock, Periodic, SystemClock
from silolearn.errors import ServiceUnavailable
from silolearn.operations.rollout import RolloutDriver
from silolearn.operations.scheduler import Scheduler
from silolearn.service import (
    admin,
    dashboard,
    data,
    drift,
    governance,
    labels,
    learning,
    metrics,
    performance,
    schedule,
    serving,
)
from silolearn.service.auth import Gatekeeper, RateLimiter
from silolearn.service.batcher import MicroBatcher
from silolearn.service.drift import start_drift_monitor
from silolearn.service.jobs import JobRunner
from silolearn.service.metrics import ServiceMetrics
from silolearn.service.pool import WorkspacePool
from silolearn.service.responses import BodyLimit, error_response, install_error_handlers
from silolearn.service.retention import Retention
from silolearn.service.rollouts import start_rollout_ticks
from silolearn.service.schedule import service_scheduler, start_scheduler
from silolearn.service.shutdown import DrainRequests
from silolearn.service.state import Answer, Service
from silolearn.serving.predictor import Predictor, ServingKey
from silolearn.version import __version__
from silolearn.workspace import Workspace

API_PREFIX = "/v1"


def create_app(
    workspace_path: Path | str,
    *,
    running: Running | None = None,
    retention_interval: float = 60.0,
) -> FastAPI:
    """The API on the workspace at ``workspace_path``. It starts the service (``Running``)
    when the server starts it (its lifespan), unless given one already started (the CLI
    starts it first, so that a workspace or base model that does not open is a clean
    error, not a server's traceback); either way it stops it when the server stops."""
    path = Path(workspace_path)
    with Workspace.open(path, actor="service") as ws:
        settings = ws.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = running
        if started is None:
            started = await run_in_threadpool(
                lambda: Running.start(path, retention_interval=retention_interval)
            )
        app.state.service = started.service
        try:
            yield
        finally:
            await run_in_threadpool(started.stop)

    app = FastAPI(
        title="silolearn",
        version=__version__,
        description="Continuous learning per tenant: predict, feedback, ingest, rounds.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.service.max_body_bytes)
    app.add_middleware(DrainRequests)
    for module in (
        serving,
        data,
        labels,
        learning,
        governance,
        admin,
        schedule,
        performance,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(drift.router, prefix=API_PREFIX)
    app.include_router(metrics.router)
    dashboard.install(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> Any:
        """The workspace is open, the base model was checked at start (I3) and predictions
        are served; 503 while starting or stopping."""
        service: Service | None = getattr(request.app.state, "service", None)
        if service is None or service.draining or not service.batcher.running:
            return error_response(ServiceUnavailable("the service is not serving"))
        with service.workspace() as ws:
            ws.conn.execute("SELECT 1").fetchone()
        return JSONResponse(
            {
                "status": "ready",
                "workspace": str(service.path),
                "base_model_sha256": service.base_model_sha256,
                "version": __version__,
            }
        )

    return app


class Running:
    """The parts of a started service: ``Running.start(path)``, then ``stop()`` (once)."""

    def __init__(
        self, service: Service, retention: Retention, batcher_ws: Workspace, jobs: JobRunner
    ) -> None:
        self.service = service
        self._retention = retention
        self._batcher_ws = batcher_ws
        self._jobs = jobs
        self.rollouts: Periodic | None = None
        self._stopped = False
        self.scheduler: Scheduler | None = None
        self.scheduler_loop: Periodic | None = None
        self._grace_ends: float | None = None
        self.cut_short: list[str] = []
        """Jobs whose rounds were still running when the grace ended: the process ends
        without waiting for their threads."""

    @classmethod
    def start(
        cls, path: Path, *, retention_interval: float = 60.0, clock: Clock = SYSTEM
    ) -> Running:
        """Open the workspace, check the base model (I3), load the encoder, start the
        micro-batcher and the retention purge, the scheduler's and the rollouts' loops.

        ``clock`` is what every decision by time reads (monitors, rollouts, the scheduler,
        rounds). On the system's, the loops tick every ``tick_seconds``; on any other (a
        manual clock a simulation advances) they do not run by themselves: time moves only
        when the clock's owner moves it, and the owner then calls :meth:`tick`."""
        pool = WorkspacePool(path)
        # the micro-batcher's thread has a workspace of its own: it loads adapters
        batcher_ws = pool.open()
        try:
            settings = batcher_ws.settings
            predictor = Predictor(batcher_ws)  # checks the base model's digest (I3)
            batcher: MicroBatcher[ServingKey, str, Answer] = MicroBatcher(
                predictor.answer_batch,
                window=settings.service.batch_window_ms / 1000.0,
                max_items=settings.service.max_batch_texts,
                release_delay=settings.service.release_delay_ms / 1000.0,
            )
            jobs = JobRunner(path, max_workers=settings.training.max_workers, clock=clock)
            service = Service(
                path=path,
                settings=settings,
                pool=pool,
                gate=Gatekeeper(
                    pool=pool,
                    limiter=RateLimiter(
                        rate=settings.service.rate_per_second, burst=settings.service.rate_burst
                    ),
                ),
                batcher=batcher,
                jobs=jobs,
                base_model_sha256=predictor.base_model_sha256,
                metrics=ServiceMetrics(pool),
                clock=clock,
            )
            with pool.borrow() as ws:
                jobs.recover(ws)
                ws.audit.append(
                    "service.start",
                    details={"base_model_sha256": predictor.base_model_sha256},
                )
            retention = Retention(pool, interval=retention_interval)
            retention.purge()
        except BaseException:
            batcher_ws.close()
            pool.close()
            raise
        batcher.start()
        service.drift = start_drift_monitor(path, batcher, clock)
        retention.start()
        running = cls(service, retention, batcher_ws, jobs)
        running.scheduler = service_scheduler(path, jobs, clock)
        if isinstance(clock, SystemClock):
            if running.scheduler is not None:
                interval = settings.schedule.tick_seconds
                running.scheduler_loop = start_scheduler(running.scheduler, interval=interval)
            running.rollouts = start_rollout_ticks(
                pool, clock, interval=settings.rollout.tick_seconds
            )
        return running

    def tick(self) -> dict[str, Any]:
        """What the loops do, once, now: the scheduler's decisions and the running
        rollouts' (for a clock that its owner advances)."""
        decisions = [] if self.scheduler is None else self.scheduler.tick()
        with self.service.pool.borrow() as ws:
            rollouts = RolloutDriver(ws, clock=self.service.clock).tick()
        return {"schedule": decisions, "rollouts": rollouts}

    def begin_drain(self) -> None:
        """Take no new request and start no queued round; the rounds' grace starts now."""
        self.service.drain.start()
        if self.scheduler_loop is not None:
            self.scheduler_loop.stop()
        self._jobs.stop_starting()
        self._grace_end()
        with self.service.pool.borrow() as ws:
            ws.audit.append(
                "service.draining",
                details={
                    "in_flight": self.service.drain.in_flight,
                    "rounds_running": self._jobs.running,
                    "round_grace_seconds": self.service.settings.service.round_grace_seconds,
                },
            )

    def drained(self) -> bool:
        """No request in flight, and no round running or its grace over."""
        if self.service.drain.in_flight:
            return False
        return not self._jobs.running or time.monotonic() >= self._grace_end()

    def _grace_end(self) -> float:
        """When the rounds' grace ends: so long after draining (or stopping) began."""
        if self._grace_ends is None:
            self._grace_ends = time.monotonic() + self.service.settings.service.round_grace_seconds
        return self._grace_ends

    def stop(self) -> None:
        """Drain the micro-batcher, wait for running rounds up to their grace (those still
        running are marked interrupted, ``cut_short``), close the workspaces."""
        if self._stopped:
            return
        self._stopped = True
        service = self.service
        service.drain.start()
        try:
            if service.drift is not None:
                service.drift.stop()
            service.batcher.stop()
            self._retention.stop()
            if self.rollouts is not None:
                self.rollouts.stop()
            if self.scheduler_loop is not None:
                self.scheduler_loop.stop()
            grace = max(0.0, self._grace_end() - time.monotonic())
            self.cut_short = self._jobs.shutdown(grace=grace)
            with service.pool.borrow() as ws:
                ws.audit.append("service.stop")
        finally:
            self._batcher_ws.close()
            service.pool.close()
