"""The coordinator's Flower ServerApp: the round as stages around Flower's own round.

plan (the guards, checked before the run; the ledger's preflight before each round) → run
(Flower's fit round: FedAvg, through SecAgg+ when asked) → judge (``judge_round``: enough
replies, an aggregate that moved) → commit (the ledger's charge of the achieved noise, the
round's audit, and at the end a shared version). Whatever happens, the ServerApp writes its
result file: ``flwr run`` exits 0 even when the ServerApp crashed, so the coordinator reads
that file, never the CLI's exit code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import ServerApp

from silolearn.errors import FederationRoundFailed, SiloError
from silolearn.federation.aggregate import digest, halted_round, judge_round
from silolearn.federation.book import RoundBook
from silolearn.federation.plan import FederationPlan

PARAMS_RECORD = "parameters"
"""Where flwr's legacy workflows keep the current weights in the ServerApp's state."""


class SiloFedAvg(FedAvg):
    """Flower's legacy FedAvg that gives each round its settings and records what reached
    it: under SecAgg+, n copies of the unmasked aggregate, never one site's update."""

    def __init__(self, plan: FederationPlan, run_id: str, initial: list[np.ndarray]) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=plan.min_sites,
            min_evaluate_clients=plan.min_sites,
            min_available_clients=plan.min_sites,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=self._fit_config,
            on_evaluate_config_fn=self._evaluate_config,
        )
        self.plan = plan
        self.run_id = run_id
        self.sampled: dict[int, list[str]] = {}
        self.received: dict[int, dict[str, Any]] = {}
        self.rounds: list[dict[str, Any]] = []
        """The rounds' records so far, sent to the sites with the last round's aggregate."""

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        instructions = list(super().configure_fit(server_round, parameters, client_manager))
        self.sampled[server_round] = [str(proxy.node_id) for proxy, _ in instructions]
        return instructions

    def _fit_config(self, server_round: int) -> dict[str, Any]:
        plan = self.plan
        dp = plan.client_dp()
        return {
            "federation": plan.federation,
            "run": self.run_id,
            "round": server_round,
            "clipping_norm": plan.max_update_norm,
            "dp": "" if dp is None else json.dumps(dp.to_dict()),
            "unweighted": plan.private or plan.secagg,
        }

    def _evaluate_config(self, server_round: int) -> dict[str, Any]:
        return {
            "federation": self.plan.federation,
            "run": self.run_id,
            "round": server_round,
            "rounds": json.dumps(self.rounds),
        }

    def aggregate_fit(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[Any, dict[str, Any]]:
        self.received[server_round] = {
            "sampled": self.sampled.get(server_round, []),
            "replies": len(results),
            "failures": len(failures),
            "nodes": [str(proxy.node_id) for proxy, _ in results],
            "weights": [int(res.num_examples) for _, res in results],
            "sha256": [digest(parameters_to_ndarrays(res.parameters)) for _, res in results],
        }
        return super().aggregate_fit(server_round, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Any, client_manager: Any
    ) -> list[Any]:
        """Only the last round's aggregate goes back to the sites (as their own shared
        version): an evaluation round costs every site a message and a process."""
        if server_round < self.plan.rounds:
            return []
        return list(super().configure_evaluate(server_round, parameters, client_manager))

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Any]]:
        return None, {}


class TrackedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow that keeps, for the round in progress, the sites still
    taking part after each of its stages. Flower keeps them in the round's local state and
    only logs "Secure aggregation halted": the round's audit says who dropped at which stage
    (a site lost after share-keys is unmasked from the survivors' shares of its key), and a
    halted round fails with how many were left."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sampled: list[str] = []
        self.stages: dict[str, list[str]] = {}
        """Each stage reached in the round, the sites still taking part after it."""
        self.halted: str | None = None
        self.threshold = 0

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        self.sampled, self.stages, self.halted = [], {}, None
        return self._after("setup", super().setup_stage(grid, context, state), state)

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        return self._after("share-keys", super().share_keys_stage(grid, context, state), state)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        done = super().collect_masked_vectors_stage(grid, context, state)
        return self._after("collect-masked-vectors", done, state)

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        return self._after("unmask", super().unmask_stage(grid, context, state), state)

    def _after(self, stage: str, done: bool, state: WorkflowState) -> bool:
        if not self.sampled:
            self.sampled = [str(n) for n in sorted(state.sampled_node_ids)]
        self.threshold = state.threshold
        self.stages[stage] = [str(n) for n in sorted(state.active_node_ids)]
        if not done:
            self.halted = stage
        return done


class JudgedFit:
    """Flower's fit round between the ledger's preflight and the judge and charge."""

    def __init__(self, inner: Any, strategy: SiloFedAvg, book: RoundBook) -> None:
        self.inner = inner
        self.strategy = strategy
        self.book = book

    def __call__(self, grid: Grid, context: Any) -> None:
        server_round = int(str(context.state.config_records["config"]["current_round"]))
        before = _weights(context)
        self.book.before_round(server_round)
        started = time.monotonic()
        self.inner(grid, context)
        got = self.strategy.received.get(server_round)
        tracked = self.inner if isinstance(self.inner, TrackedSecAggPlus) else None
        if tracked is not None and tracked.halted is not None and got is None:
            self._halted(server_round, tracked)
        if tracked is not None and got is not None:
            got["stages"] = {stage: len(nodes) for stage, nodes in tracked.stages.items()}
            # Flower's collect-masked-vectors stage lists each of its failures twice
            got["failures"] = len(tracked.sampled) - int(got["replies"])
        after = _weights(context) if got is not None else None
        try:
            judge_round(
                server_round,
                before,
                after,
                replies=0 if got is None else int(got["replies"]),
                failures=0 if got is None else int(got["failures"]),
                min_sites=self.strategy.plan.min_sites,
            )
        except FederationRoundFailed as exc:
            self.book.round_failed(server_round, exc, got or {})
            raise
        assert after is not None and got is not None
        self.book.after_round(server_round, got, after, seconds=time.monotonic() - started)
        self.strategy.rounds = self.book.result["rounds"]

    def _halted(self, server_round: int, tracked: TrackedSecAggPlus) -> None:
        """A SecAgg+ round that stopped with too few sites: failed, audited, not charged."""
        assert tracked.halted is not None
        survivors = tracked.stages[tracked.halted]
        error = halted_round(
            server_round,
            stage=tracked.halted,
            sampled=tracked.sampled,
            survivors=survivors,
            threshold=tracked.threshold or self.strategy.plan.min_sites,
        )
        got = {
            "sampled": tracked.sampled,
            "nodes": survivors,
            "replies": len(survivors),
            "stages": {stage: len(nodes) for stage, nodes in tracked.stages.items()},
        }
        self.book.round_failed(server_round, error, got)
        raise error


def _weights(context: LegacyContext) -> list[np.ndarray]:
    from flwr.compat.common import recorddict_compat as compat

    record = context.state.array_records[PARAMS_RECORD]
    return parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))


def _wait_for_sites(grid: Grid, plan: FederationPlan, deadline: float) -> None:
    """Flower's ServerApp waits for its sites forever: this wait has a deadline."""
    while True:
        connected = len(list(grid.get_node_ids()))
        if connected >= plan.sites:
            return
        if time.monotonic() > deadline:
            raise FederationRoundFailed(
                f"{connected} of the {plan.sites} site(s) connected before the deadline",
                connected=connected,
                sites=plan.sites,
                reason="sites-missing",
            )
        time.sleep(1.0)


def serve(grid: Grid, context: Any) -> None:
    """The ServerApp's body: the run described by its plan file in the coordinator's
    workspace, and its result file, whatever happens."""
    workdir = Path(str(context.run_config["workdir"]))
    plan = FederationPlan.from_dict(json.loads((workdir / "plan.json").read_text()))
    result: dict[str, Any] = {"status": "failed", "rounds": []}
    book = RoundBook(workdir, plan, result)
    try:
        strategy = SiloFedAvg(plan, book.run_id, book.initial_weights())
        inner: Any = (
            TrackedSecAggPlus(
                num_shares=plan.num_shares,
                reconstruction_threshold=plan.min_sites,
                max_weight=1.0,
                clipping_range=plan.clipping_range,
                quantization_range=plan.quantization_range,
                timeout=plan.round_timeout,
            )
            if plan.secagg
            else None
        )
        fit = JudgedFit(inner or _default_fit, strategy, book)
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=plan.rounds, round_timeout=plan.round_timeout),
            strategy=strategy,
        )
        _wait_for_sites(grid, plan, time.monotonic() + plan.round_timeout)
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        result["version"] = book.commit(str(context.run_id))
        result["status"] = "done"
    except SiloError as exc:
        result["error"] = exc.to_dict()
        book.failed(exc)
        raise
    except BaseException as exc:
        result["error"] = {"error": type(exc).__name__, "message": str(exc), "details": {}}
        raise
    finally:
        book.write_result()


def _default_fit(grid: Grid, context: LegacyContext) -> None:
    from flwr.server.workflow.default_workflows import default_fit_workflow

    default_fit_workflow(grid, context)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Any) -> None:
    serve(grid, context)
