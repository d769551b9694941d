"""The run stage: the exchange with one isolated worker (I2), and the runs table.

``exchange`` builds a worker's job (its tenant's keys, its action, its parameters) and
returns what the worker answered; ``train_candidate`` is a whole training run: recorded in
``training_runs``, trained in a worker, registered as a candidate with its lineage (a
worker never writes a version: the coordinator registers what it returns)."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import ProtocolViolation, SiloError
from silolearn.learning.encoder import base_model_record
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.context import Coordinator, Progress
from silolearn.worker.job import EVAL_KEY_ACTIONS, Access, WorkerJob
from silolearn.worker.runner import Request, Worker, run_worker

if TYPE_CHECKING:
    from silolearn.workspace import Workspace


def job_for(
    ctx: Coordinator,
    tenant: str,
    action: str,
    params: dict[str, Any],
    training: dict[str, Any] | None = None,
) -> WorkerJob:
    """The job of one worker of ``tenant``: what it may hold for ``action`` and no more."""
    ws = ctx.ws
    info = ws.tenants.get(tenant)
    base = base_model_record(ws)
    blob_dir = ws.tenants.blob_dir(info.id)
    blob_dir.mkdir(parents=True, exist_ok=True)
    key = ws.tenants.data_key(info)
    token_key = ws.keys.token_key(info.id)
    access = Access(
        workspace=ws.path.resolve(),
        db_file=(ws.path / "silolearn.db").resolve(),
        blob_dir=blob_dir.resolve(),
        tenant_id=info.id,
        tenant_name=info.name,
        dek_version=key.version,
        data_key=key.material,
        token_key=token_key,
        eval_key=ws.tenants.eval_key(info).material if action in EVAL_KEY_ACTIONS else None,
    )
    if action == "train":
        # the canaries are drawn from a seed keyed with the tenant's token key, which the
        # worker never holds: the same run draws the same ones, nobody else can predict them
        parts = ("canaries", params["seed"], params["version_hint"])
        message = "\x00".join(str(p) for p in parts).encode()
        params = {**params, "canary_seed": hmac.new(token_key, message, "sha256").digest()}
    return WorkerJob(
        action=action,
        tenant_id=info.id,
        tenant_name=info.name,
        base_path=str(base.path),
        base_sha256=base.sha256,
        training={**ctx.config.model_dump(), **(training or {})},
        params=params,
        sandbox=ctx.sandbox,
        workspace=str(ws.path.resolve()),
        access=access,
    )


def exchange(
    ctx: Coordinator,
    tenant: str,
    action: str,
    params: dict[str, Any],
    progress: Progress | None,
    on_request: Request | None = None,
    training: dict[str, Any] | None = None,
    worker: Worker | None = None,
) -> dict[str, Any]:
    """Run ``action`` for ``tenant`` in an isolated worker (``worker``: one started ahead,
    warm) and return its result; progress is relayed with the tenant's name. A worker that
    breaks the protocol is reported (``report_violation``) before its error is raised."""
    job = job_for(ctx, tenant, action, params, training)
    relay = None
    if progress is not None:

        def relay(pid: int, event: str, details: dict[str, Any]) -> None:
            progress(tenant, pid, event, details)

    try:
        return run_worker(
            job,
            timeout=ctx.config.timeout_seconds,
            on_progress=relay,
            on_request=on_request,
            worker=worker,
        )
    except ProtocolViolation as exc:
        report_violation(ctx.ws, tenant, exc)
        raise


def report_violation(ws: Workspace, tenant: str, exc: ProtocolViolation) -> None:
    """An audited incident for a worker that sent what is not a message of the protocol
    (I11): SEV1 for a pickle, code aimed at the coordinator, which quarantines the tenant's
    training until someone looks at its data; SEV2 for an oversized or malformed message."""
    from silolearn.monitoring.incidents import Incidents

    reason = str(exc.details.get("reason", "malformed"))
    Incidents(ws).open(
        tenant,
        severity="SEV1" if reason == "pickle" else "SEV2",
        kind="worker-protocol",
        summary=exc.message,
        evidence={k: exc.details[k] for k in ("reason", "action", "pid") if k in exc.details},
        actions=["worker killed", "run failed"],
    )


@dataclass(frozen=True)
class StartedRun:
    """A run recorded in ``training_runs`` and the parameters its training worker gets."""

    run_id: str
    params: dict[str, Any]
    started_at: str


def start_run(
    ctx: Coordinator,
    registry: AdapterRegistry,
    *,
    kind: str,
    seed: int,
    cutoff: str,
    parent: dict[str, Any] | None,
    dp: bool,
    canaries: dict[str, int] | None = None,
    trunk: dict[str, Any] | None = None,
) -> StartedRun:
    """Record a new training run of the registry's tenant: its id and worker params."""
    run_id = secrets.token_hex(8)
    next_version = 1 + max((v.version for v in registry.list()), default=0)
    started_at = _run_started(registry._scope, run_id, kind, seed, cutoff)
    params: dict[str, Any] = {
        "kind": kind,
        "seed": seed,
        "cutoff": cutoff,
        "version_hint": next_version,
        "parent": parent,
    }
    if canaries:
        params["canaries"] = canaries
    if dp:
        # what a DP worker needs beyond its plan: the clipping-warning thresholds
        p = ctx.ws.settings.privacy
        params["dp"] = {"clipped_high": p.clipped_high, "clipped_low": p.clipped_low}
    if trunk is not None:
        params["trunk"] = trunk
    return StartedRun(run_id, params, started_at)


@dataclass(frozen=True)
class Trained:
    """A training run's outcome: the registered candidate and the worker's timings."""

    candidate: AdapterVersion
    timings: dict[str, float]


def train_candidate(
    ctx: Coordinator,
    tenant: str,
    registry: AdapterRegistry,
    run: StartedRun,
    *,
    kind: str,
    progress: Progress | None,
    on_request: Request | None = None,
    training: dict[str, Any] | None = None,
    tag: dict[str, Any] | None = None,
    after: Any = None,
) -> Trained:
    """Train in a worker and register the candidate with its lineage (plus ``tag``).
    ``after`` runs once the worker is done, before registering (the round checks the base
    model there). The caller finishes the run in the runs table."""
    trained = exchange(ctx, tenant, "train", run.params, progress, on_request, training)
    if after is not None:
        after()
    lineage = {
        **trained["lineage"],
        **(tag or {}),
        "run_id": run.run_id,
        "timings": trained["timings"],
        "started_at": run.started_at,
    }
    candidate = registry.register_candidate(
        trained["artefact"],
        kind=kind,
        lineage=lineage,
        metrics={},
        run_id=run.run_id,
        extra={
            k: trained[k]
            for k in ("replay", "records", "canaries", "oof")
            if trained.get(k) is not None
        },
    )
    loop = lineage.get("feedback_loop") or {}
    if loop.get("left_out"):
        # the bound on self-confirmed labels changed what the round learned from
        registry._scope.audit(
            "train.self_confirmed_bounded", obj=f"v{candidate.version}", details=dict(loop)
        )
    return Trained(candidate, dict(trained["timings"]))


def side_run(
    ctx: Coordinator,
    tenant: str,
    registry: AdapterRegistry,
    *,
    kind: str,
    seed: int,
    cutoff: str,
    on_request: Request | None,
    tag: dict[str, Any],
    progress: Progress | None,
) -> AdapterVersion:
    """Train a candidate from scratch that is registered with its lineage (the evidence)
    and, once evaluated, rejected (``sweep.evaluate_side_runs``): it never serves. DP when
    ``on_request`` plans it."""
    scope = registry._scope
    run = start_run(
        ctx, registry, kind=kind, seed=seed, cutoff=cutoff, parent=None, dp=on_request is not None
    )
    try:
        trained = train_candidate(
            ctx, tenant, registry, run, kind=kind, progress=progress, on_request=on_request, tag=tag
        )
    except SiloError as exc:
        run_finished(ctx, run.run_id, "failed", None, exc.code)
        # the message can name the tenant's labels: it goes in the sealed audit details
        details = {"error": exc.code, "message": exc.message}
        scope.audit("train.failed", obj=run.run_id, details=details)
        raise
    run_finished(ctx, run.run_id, "succeeded", trained.candidate.version, None)
    return trained.candidate


def _run_started(scope: Any, run_id: str, kind: str, seed: int, cutoff: str) -> str:
    started_at = utcnow()
    with scope.write() as conn:
        _abandon_dead_runs(conn, scope.tenant.id)
        conn.execute(
            "INSERT INTO training_runs (run_id, tenant_id, kind, status, host_pid, seed, "
            "cutoff, started_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
            (run_id, scope.tenant.id, kind, os.getpid(), seed, cutoff, started_at),
        )
        scope.audit_in(
            conn,
            "train.start",
            obj=run_id,
            details={"kind": kind, "seed": seed, "cutoff": cutoff},
        )
    return started_at


def run_finished(
    ctx: Coordinator, run_id: str, status: str, version: int | None, error: str | None
) -> None:
    """Record a run's end; ``error`` is the error's class name (``TrainingFailed``), never
    its message, which may name the tenant's labels and is kept in the run's sealed
    ``train.failed`` audit event."""
    with ctx.ws.audit.write() as conn:
        conn.execute(
            "UPDATE training_runs SET status = ?, version = ?, error = ?, finished_at = ? "
            "WHERE run_id = ?",
            (status, version, error, utcnow(), run_id),
        )


def _abandon_dead_runs(conn: Any, tenant_id: str) -> None:
    """Runs left ``running`` by a coordinator that died are marked ``abandoned``."""
    for run_id, pid in conn.execute(
        "SELECT run_id, host_pid FROM training_runs WHERE tenant_id = ? AND status = 'running'",
        (tenant_id,),
    ).fetchall():
        if not process_alive(int(pid)):
            conn.execute(
                "UPDATE training_runs SET status = 'abandoned', finished_at = ? WHERE run_id = ?",
                (utcnow(), run_id),
            )


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_runs(ctx: Coordinator, tenant: str) -> list[dict[str, Any]]:
    """The tenant's training runs, oldest first."""
    info = ctx.ws.tenants.get(tenant)
    rows = ctx.ws.conn.execute(
        "SELECT run_id, kind, status, seed, cutoff, version, error, started_at, finished_at "
        "FROM training_runs WHERE tenant_id = ? ORDER BY started_at",
        (info.id,),
    ).fetchall()
    keys = ("run_id", "kind", "status", "seed", "cutoff", "version", "error", "started", "finished")
    return [dict(zip(keys, row, strict=True)) for row in rows]
