"""Rounds for the tenants of a workspace: the facade over the round's stages
(``silolearn.rounds``), and rounds for many tenants at once.

``Trainer(ws)`` is what the CLI, the demo and the Python API call; each of its methods is
one composition of the stages (plan → run → judge → commit → watch), documented where it
is defined."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from silolearn.clock import SYSTEM, Clock
from silolearn.errors import SiloError
from silolearn.learning.dp import DpPlan
from silolearn.registry.versions import AdapterVersion
from silolearn.rounds import commit, judge, plan, privacy, reaudit, remediation, round, run, sweep
from silolearn.rounds import watch as watching
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.remediation import MIN_REMEDIATION_EPSILON, REGULARISATION_STEPS
from silolearn.rounds.result import RoundResult
from silolearn.validation.gates import GateVerdict
from silolearn.worker.job import WorkerJob
from silolearn.worker.runner import Worker

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

__all__ = [
    "MIN_REMEDIATION_EPSILON",
    "REGULARISATION_STEPS",
    "Progress",
    "RoundResult",
    "Trainer",
    "list_gate_runs",
    "list_runs",
    "list_sweeps",
    "train_many",
]


class Trainer:
    """Runs rounds for the tenants of one opened workspace (one thread per Trainer)."""

    def __init__(self, ws: Workspace, *, clock: Clock = SYSTEM) -> None:
        self.ws = ws
        self.ctx = Coordinator.of(ws, clock=clock)
        self.config = self.ctx.config

    def train(
        self,
        tenant: str,
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        progress: Progress | None = None,
        dp: bool | None = None,
        epsilon: float | None = None,
        canaries: dict[str, int] | None = None,
        overrides: dict[str, Any] | None = None,
        divergence: bool = True,
        remediate: bool = True,
    ) -> RoundResult:
        """One round, remediated when its candidate leaks (``rounds.remediation.train``)."""
        return remediation.train(
            self.ctx,
            tenant,
            kind=kind,
            seed=seed,
            cutoff=cutoff,
            progress=progress,
            dp=dp,
            epsilon=epsilon,
            canaries=canaries,
            overrides=overrides,
            divergence=divergence,
            remediate=remediate,
        )

    def _remediations(
        self, tenant: str, made: Sequence[RoundResult]
    ) -> Iterator[tuple[str, dict[str, Any] | None]]:
        return remediation.remediations(self.ctx, tenant, made)

    def serving_version(self, tenant: str) -> int | None:
        return remediation.serving_version(self.ctx, tenant)

    def promote(self, tenant: str, version: int, *, reason: str = "manual") -> RoundResult:
        return round.promote(self.ctx, tenant, version, reason=reason)

    def rerun_gates(self, tenant: str, *, progress: Progress | None = None) -> dict[str, Any]:
        return reaudit.rerun_gates(self.ctx, tenant, progress=progress)

    def run_gates(
        self,
        tenant: str,
        version: AdapterVersion,
        against: AdapterVersion | None,
        progress: Progress | None = None,
        *,
        worker: Worker | None = None,
        serving: bool = False,
    ) -> tuple[list[GateVerdict], dict[str, Any]]:
        return judge.run_gates(
            self.ctx, tenant, version, against, progress, worker=worker, serving=serving
        )

    def evaluate(
        self,
        tenant: str,
        candidate: AdapterVersion,
        active: AdapterVersion | None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        return judge.evaluate(self.ctx, tenant, candidate, active, progress)

    def sweep(
        self,
        tenant: str,
        epsilons: Sequence[float],
        *,
        kind: str | None = None,
        seed: int | None = None,
        cutoff: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        return sweep.sweep(
            self.ctx, tenant, epsilons, kind=kind, seed=seed, cutoff=cutoff, progress=progress
        )

    def shadow(self, tenant: str, *, progress: Progress | None = None) -> dict[str, Any]:
        return watching.shadow(self.ctx, tenant, progress=progress)

    def wants_shadow(self, tenant: str) -> bool:
        return watching.wants_shadow(self.ctx, tenant)

    def check_divergence(
        self, *, event: str, source: str | None, exclude: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        return watching.check_divergence(self.ctx, event=event, source=source, exclude=exclude)

    def probe(self, tenant: str, *, others: Sequence[str] | None = None) -> dict[str, Any]:
        return watching.probe(self.ctx, tenant, others=others)

    def privacy_mode(
        self, tenant: str, dp: bool | None, epsilon: float | None
    ) -> tuple[bool, float | None]:
        return privacy.privacy_mode(self.ctx, tenant, dp, epsilon)

    def plan_dp(self, *, records: int, kind: str, target_epsilon: float, delta: float) -> DpPlan:
        return privacy.plan_dp(
            self.ctx, records=records, kind=kind, target_epsilon=target_epsilon, delta=delta
        )

    def shared_trunk(self, tenant: str, kind: str) -> dict[str, Any] | None:
        return plan.shared_trunk(self.ctx, tenant, kind)

    def _job(
        self,
        tenant: str,
        action: str,
        params: dict[str, Any],
        training: dict[str, Any] | None = None,
    ) -> WorkerJob:
        return run.job_for(self.ctx, tenant, action, params, training)

    def _cutoff(self, tenant: str, asked: str | None, parent_cutoff: str | None) -> str:
        return plan.cutoff_for(self.ctx, tenant, asked, parent_cutoff)


def list_sweeps(ws: Workspace, tenant: str | None = None) -> list[dict[str, Any]]:
    """Accuracy-privacy sweeps, oldest first (of one tenant, or of all)."""
    return sweep.list_sweeps(Coordinator.of(ws), tenant)


def list_gate_runs(ws: Workspace, tenant: str, version: int | None = None) -> list[dict[str, Any]]:
    """Every gate run of a tenant (of one version), oldest first: trigger, verdicts."""
    return commit.list_gate_runs(Coordinator.of(ws), tenant, version)


def list_runs(ws: Workspace, tenant: str) -> list[dict[str, Any]]:
    """The tenant's training runs, oldest first."""
    return run.list_runs(Coordinator.of(ws), tenant)


def train_many(
    open_workspace: Callable[[], Workspace],
    tenants: Sequence[str],
    *,
    kind: str | None = None,
    seed: int | None = None,
    max_workers: int | None = None,
    progress: Progress | None = None,
    on_result: Callable[[RoundResult], None] | None = None,
    dp: bool | None = None,
    epsilon: float | None = None,
) -> list[RoundResult]:
    """One round for each tenant, several at once: each tenant's round runs in its own
    worker processes; each coordinating thread opens its own workspace connection
    (``open_workspace``, e.g. ``lambda: Workspace.open(path, actor=...)``)."""
    with open_workspace() as ws:
        workers = max_workers or ws.settings.training.max_workers
    lock = threading.Lock()
    # transformers resolves its names lazily, and two threads importing the same name at
    # once can see a half-initialised module ("cannot import name 'AutoModel'"): resolve
    # what the coordinator's divergence checks load before any thread starts
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    def one(tenant: str) -> RoundResult:
        with open_workspace() as ws:
            try:
                result = Trainer(ws).train(
                    tenant, kind=kind, seed=seed, progress=progress, dp=dp, epsilon=epsilon
                )
            except SiloError as exc:
                result = RoundResult(tenant=tenant, status="failed", error=exc.to_dict())
        if on_result is not None:
            with lock:
                on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="round") as pool:
        return list(pool.map(one, tenants))
