"""The coordinator's side of ``silolearn federation run``: the plan checked before anything
starts, a SuperLink of its own, the run submitted, and its outcome read from the ServerApp's
result file (``flwr run`` exits 0 whatever the ServerApp did)."""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn import errors
from silolearn.errors import FederationConfigError, FederationRoundFailed, SiloError
from silolearn.federation import processes
from silolearn.federation.plan import (
    NOISE_TAILS,
    FederationPlan,
    largest_threshold,
    plan_for,
    with_ranges,
)

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

CONNECT_SECONDS = 120.0
"""How long a run waits for its sites to connect, beside its rounds' timeouts."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    sites: int
    rounds: int
    secagg: bool = False
    epsilon: float | None = None
    min_sites: int | None = None
    max_update_norm: float = 1.0
    num_shares: int | None = None
    round_timeout: float = 600.0
    address: str = "127.0.0.1:9092"
    server_side_clipping: bool = False
    federation: str = "federation"


def refuse_tenant_data(ws: Workspace) -> None:
    """The coordinator holds no tenant data: a workspace with tenants does not coordinate."""
    names = [t.name for t in ws.tenants.list()]
    if names:
        raise FederationConfigError(
            f"the coordinating workspace holds tenant(s) {', '.join(names)}: a federation's "
            "coordinator holds no tenant data (run it from a workspace of its own)",
            tenants=names,
        )


def plan_run(ws: Workspace, request: RunRequest, weight_bound: float) -> FederationPlan:
    """The run's plan: client-level noise calibrated to the run's epsilon (the scope's run
    epsilon unless asked) over its rounds (``federation.privacy.calibrate``), SecAgg+
    ranges derived from the model.
    ``weight_bound`` is the largest weight at the start; every round moves a coordinate by at
    most C plus the noise's tails, so the weights stay below ``weight_bound + rounds x (C +
    8 sigma_site)`` and the clipping range covers them."""
    from silolearn.federation.privacy import calibrate
    from silolearn.privacy.ledger import federation_scope

    structure = _structure(request)
    # a model shared beyond one tenant is trained only under DP (I9): no epsilon asked,
    # the federation scope's run epsilon
    policy = ws.ledger().policy(federation_scope(request.federation))
    epsilon = policy.run_epsilon if request.epsilon is None else request.epsilon
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise FederationConfigError(f"epsilon must be positive, not {epsilon}")
    # a run whose target alone passes the budget is refused before calibrating its noise
    ws.ledger().precheck(
        federation_scope(request.federation),
        tenant=None,
        run_id="plan",
        purpose="federation",
        at_least=epsilon,
    )
    z = calibrate(
        target_epsilon=epsilon,
        delta=policy.delta,
        rounds=request.rounds,
        clip_norm=request.max_update_norm,
        min_sites=structure.min_sites,
        secure_aggregation=request.secagg,
        accountant=ws.settings.privacy.accountant,
    ).noise_multiplier
    sigma_site = z * request.max_update_norm / math.sqrt(structure.min_sites)
    drift = request.rounds * (request.max_update_norm + NOISE_TAILS * sigma_site)
    plan = replace(
        structure,
        noise_multiplier=z,
        weight_bound=weight_bound + drift,
        round_timeout=request.round_timeout,
        epsilon=epsilon,
        delta=policy.delta,
        federation=request.federation,
    )
    return with_ranges(plan)


def _structure(request: RunRequest) -> FederationPlan:
    """The plan without the model or the noise, its guards checked before loading the one
    or calibrating the other; ``min_sites`` defaults to two thirds of the sites, at least 2
    (under SecAgg+, at most the largest reconstruction threshold the sites allow, and never
    more than the sites); one asked for is checked as it is, never rewritten."""
    default = max(2, math.ceil(2 * request.sites / 3))
    if request.secagg:
        default = max(2, min(default, largest_threshold(request.sites)))
    min_sites = min(default, request.sites) if request.min_sites is None else request.min_sites
    processes.host_port(request.address, "--address")
    plan = plan_for(
        sites=request.sites,
        rounds=request.rounds,
        min_sites=min_sites,
        secagg=request.secagg,
        max_update_norm=request.max_update_norm,
        noise_multiplier=0.0,
        weight_bound=0.0,
        num_shares=request.num_shares,
        round_timeout=request.round_timeout,
    )
    if request.server_side_clipping:
        replace(plan, server_side_clipping=True).check()
    return plan


def run_federation(ws: Workspace, request: RunRequest) -> dict[str, Any]:
    """A federated run from this (coordinating) workspace; its result, or a typed error."""
    from silolearn.federation.book import initial_weights

    refuse_tenant_data(ws)
    _structure(request)
    weights = initial_weights(ws)
    plan = plan_run(ws, request, max(float(np.abs(w).max()) for w in weights))
    return run_plan(ws, plan, request.address)


def run_plan(ws: Workspace, plan: FederationPlan, address: str) -> dict[str, Any]:
    """A run of ``plan`` from this (coordinating) workspace, its SuperLink on ``address``.
    ``run_federation`` plans it from a request, always private (I9); a benchmark's
    non-private yardstick in a throwaway workspace runs a plan without noise."""
    from silolearn.federation.privacy import preflight

    refuse_tenant_data(ws)
    plan.check()
    run_id = secrets.token_hex(8)
    dp = plan.client_dp()
    if dp is not None:
        # the whole run's worst case, before anything starts (each round checks again)
        preflight(ws, plan.federation, dp, run_id=run_id, rounds=plan.rounds)
    workdir = ws.path / "federation" / run_id
    workdir.mkdir(parents=True)
    (workdir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    ws.audit.append(
        "federation.start", obj=f"federation/{run_id}", details={"plan": plan.to_dict()}
    )
    started = time.monotonic()
    link = processes.start(
        processes.superlink_command(address, workdir / "superlink.db"),
        workdir / "flwr-link",
        workdir / "superlink.log",
    )
    with processes.running(link):
        if not processes.wait_listening(address, link, started + CONNECT_SECONDS):
            raise FederationRoundFailed(
                f"the SuperLink did not start listening on {address}",
                reason="superlink",
                log=processes.tail(workdir / "superlink.log"),
            )
        cli_home = workdir / "flwr-cli"
        processes.write_cli_config(cli_home, address)
        app = processes.write_app(workdir / "app")
        submitted = processes.submit(app, cli_home, workdir, workdir / "run.log")
        with processes.running(submitted):
            deadline = started + CONNECT_SECONDS + plan.rounds * 2 * plan.round_timeout
            ended = processes.wait(submitted, deadline)
    return _outcome(workdir, plan, ended, time.monotonic() - started)


def _outcome(workdir: Path, plan: FederationPlan, ended: bool, seconds: float) -> dict[str, Any]:
    path = workdir / "result.json"
    if not path.exists():
        tail = processes.tail(workdir / "run.log")
        raise FederationRoundFailed(
            "the ServerApp ended without its result"
            if ended
            else "the federated run did not end before its deadline",
            run_id=workdir.name,
            reason="no-result",
            log=tail,
        )
    result: dict[str, Any] = json.loads(path.read_text())
    if result["status"] != "done":
        raise _error(result.get("error") or {}, workdir.name)
    return {
        "run_id": workdir.name,
        "version": result["version"],
        "rounds": result["rounds"],
        "plan": plan.to_dict(),
        "seconds": round(seconds, 2),
    }


def _error(error: dict[str, Any], run_id: str) -> SiloError:
    """The ServerApp's typed error, as raised there."""
    cls = getattr(errors, str(error.get("error")), None)
    message = str(error.get("message") or "the federated run failed")
    details = {**(error.get("details") or {}), "run_id": run_id}
    if isinstance(cls, type) and issubclass(cls, SiloError):
        return cls(message, **details)
    return FederationRoundFailed(f"the ServerApp failed: {message}", **details)
