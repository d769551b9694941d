"""Background jobs: rounds started over the API, run by the service as their coordinator.

``POST /v1/tenants/{t}/rounds`` queues a job and answers at once; a thread of the job pool
opens its own workspace (its audit actor is the token that asked) and runs the round
through ``pipeline.Trainer``, whose training, evaluation and gate workers are spawned
subprocesses as everywhere else. A job's state is a row of ``service_jobs`` (queued,
running, succeeded, failed, interrupted) with the round's outcome and version and, on
failure, the typed error's code; the round's metrics and verdicts are in its version row.

When the service drains (``silolearn.service.shutdown``), queued jobs are not started
(interrupted) and running ones are waited for up to ``[service] round_grace_seconds``, so a
round is left as the stages leave it; one still running when the grace ends is marked
interrupted and cut short with the process, as a crash would cut it. A job found queued or
running by a service that starts again was cut short by a crash and is marked interrupted.
Either way its round, if it had begun, is abandoned by the rounds' own bookkeeping (the
tenant's next round marks its training run ``abandoned``) and serves nothing (I8).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from silolearn.audit.log import utcnow
from silolearn.clock import SYSTEM, Clock
from silolearn.db import transaction
from silolearn.errors import ConflictError, NotFoundError, ServiceUnavailable, SiloError
from silolearn.pipeline import Trainer
from silolearn.tenancy.access import Principal
from silolearn.workspace import Workspace

_log = logging.getLogger("silolearn.service")

_COLUMNS = (
    "id, tenant_id, tenant, kind, state, params, started_by, outcome, version, error, "
    "created_at, started_at, finished_at"
)


def _job(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "tenant": row[2],
        "kind": row[3],
        "state": row[4],
        "params": json.loads(row[5]),
        "started_by": row[6],
        "outcome": row[7],
        "version": row[8],
        "error": row[9],
        "created_at": row[10],
        "started_at": row[11],
        "finished_at": row[12],
    }


class JobRunner:
    """Runs rounds in the background, at most ``max_workers`` at once, one per tenant."""

    def __init__(self, path: Path, *, max_workers: int, clock: Clock = SYSTEM) -> None:
        self._path = path
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._busy: dict[str, str] = {}
        """Tenant id -> the job queued or running for it."""
        self._errors: dict[str, dict[str, Any]] = {}
        """The full typed error of jobs that failed in this process (the row keeps the code)."""
        self._futures: dict[str, Future[None]] = {}
        """Jobs submitted and not finished, by id."""

    def recover(self, ws: Workspace) -> int:
        """Mark the jobs a previous service left queued or running as interrupted."""
        with transaction(ws.conn) as conn:
            count = conn.execute(
                "UPDATE service_jobs SET state = 'interrupted', finished_at = ? "
                "WHERE state IN ('queued', 'running')",
                (utcnow(),),
            ).rowcount
        if count:
            ws.audit.append("service.jobs_interrupted", details={"jobs": count})
        return int(count)

    def start_round(
        self, ws: Workspace, principal: Principal, tenant: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        info = ws.tenants.get(tenant)
        job_id = "j-" + secrets.token_hex(8)
        with self._lock:
            running = self._busy.get(info.id)
            if running is not None:
                raise ConflictError(
                    f"tenant {tenant!r} has a round in progress already (job {running})",
                    job=running,
                )
            self._busy[info.id] = job_id
        try:
            with ws.audit.write() as conn:
                conn.execute(
                    f"INSERT INTO service_jobs ({_COLUMNS}) "
                    "VALUES (?, ?, ?, 'round', 'queued', ?, ?, NULL, NULL, NULL, ?, NULL, NULL)",
                    (job_id, info.id, tenant, json.dumps(params), principal.actor, utcnow()),
                )
                ws.audit.append_in(
                    conn, "round.requested", tenant=tenant, obj=job_id, details=params
                )
            try:
                future = self._pool.submit(
                    self._run, job_id, info.id, tenant, params, principal.actor
                )
            except RuntimeError:  # the pool was shut down: the service is draining
                self._set(ws, job_id, state="interrupted", finished_at=utcnow())
                raise ServiceUnavailable("the service is stopping: start the round again") from None
            with self._lock:
                self._futures[job_id] = future
            future.add_done_callback(lambda _: self._forget(job_id))
        except BaseException:
            with self._lock:
                self._busy.pop(info.id, None)
            raise
        return self.get(ws, job_id)

    def get(self, ws: Workspace, job_id: str) -> dict[str, Any]:
        row = ws.conn.execute(
            f"SELECT {_COLUMNS} FROM service_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id[:40]!r}", job=job_id[:40])
        job = _job(row)
        job["tenant_id"] = row[1]
        if job["id"] in self._errors:
            job["error"] = self._errors[job["id"]]
        elif job["error"] is not None:
            job["error"] = {"error": job["error"], "message": "", "details": {}}
        return job

    @property
    def running(self) -> bool:
        """Whether a round is running (queued ones are not started once draining)."""
        with self._lock:
            return any(f.running() for f in self._futures.values())

    def stop_starting(self) -> None:
        """Start no job from now on: queued ones are cancelled (``shutdown`` marks them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, *, grace: float) -> list[str]:
        """Start nothing more (queued jobs are interrupted), wait up to ``grace`` seconds for
        running rounds, and mark those still running interrupted: their ids are returned,
        and the caller ends the process without waiting for them."""
        self.stop_starting()
        with self._lock:
            futures = dict(self._futures)
        _, late = wait(futures.values(), timeout=grace)
        cut = sorted(job for job, future in futures.items() if future in late)
        now = utcnow()
        with Workspace.open(self._path, actor="service") as ws:
            with transaction(ws.conn) as conn:
                conn.execute(
                    "UPDATE service_jobs SET state = 'interrupted', finished_at = ? "
                    "WHERE state = 'queued'",
                    (now,),
                )
                conn.executemany(
                    "UPDATE service_jobs SET state = 'interrupted', finished_at = ? "
                    "WHERE id = ? AND state IN ('queued', 'running')",
                    [(now, job) for job in cut],
                )
            if cut:
                ws.audit.append(
                    "service.jobs_interrupted",
                    details={"jobs": len(cut), "ids": cut, "reason": "round grace passed"},
                )
        return cut

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._futures.pop(job_id, None)

    def _set(self, ws: Workspace, job_id: str, *, ending: bool = False, **fields: Any) -> None:
        """Update a job's row; ``ending`` a running one (not one the shutdown marked
        interrupted meanwhile)."""
        assignments = ", ".join(f"{k} = ?" for k in fields)
        guard = " AND state = 'running'" if ending else ""
        with transaction(ws.conn) as conn:
            conn.execute(
                f"UPDATE service_jobs SET {assignments} WHERE id = ?{guard}",
                (*fields.values(), job_id),
            )

    def _run(
        self, job_id: str, tenant_id: str, tenant: str, params: dict[str, Any], actor: str
    ) -> None:
        try:
            with Workspace.open(self._path, actor=actor) as ws:
                self._set(ws, job_id, state="running", started_at=utcnow())
                try:
                    result = Trainer(ws, clock=self._clock).train(tenant, **params)
                except SiloError as exc:
                    self._errors[job_id] = exc.to_dict()
                    self._set(
                        ws,
                        job_id,
                        ending=True,
                        state="failed",
                        error=exc.code,
                        finished_at=utcnow(),
                    )
                    return
                except Exception as exc:
                    _log.exception("job %s (a round of %s) failed", job_id, tenant)
                    self._errors[job_id] = {
                        "error": "InternalError",
                        "message": f"{type(exc).__name__}: see the server's log",
                        "details": {},
                    }
                    self._set(
                        ws,
                        job_id,
                        ending=True,
                        state="failed",
                        error="InternalError",
                        finished_at=utcnow(),
                    )
                    return
                error = None if result.error is None else str(result.error.get("error"))
                if result.error is not None:
                    self._errors[job_id] = result.error
                self._set(
                    ws,
                    job_id,
                    ending=True,
                    state="failed" if result.status == "failed" else "succeeded",
                    outcome=result.status,
                    version=result.version,
                    error=error,
                    finished_at=utcnow(),
                )
        finally:
            with self._lock:
                self._busy.pop(tenant_id, None)
