"""``silolearn demo``: the main job on real data, through the service a tenant's
application calls.

Four tenants, each fed from a real dataset as a production stream arriving in rounds, in
time order. The demo starts ``silolearn serve`` on a free loopback port and grants itself a
least-privilege token per tenant and purpose with ``silolearn access grant``. Every round:
each tenant's records go through the gateway (validation, minimisation, routing to train or
eval, contamination check, encryption, audit); then every tenant's round is started through
the API and runs in the server as a background job, in its own isolated worker process,
judged by a separate gate worker (quality and forgetting with bootstrap intervals, golden
suite, membership inference, canary exposure, the one-run privacy audit) and promoted only
if every gate passes. Then each tenant's application sends held-out records of its dataset
to ``predict`` and returns the true label of half of them through ``feedback``: the next
round learns from them (its lineage counts them). At the end a deliberately leaky candidate
is rejected with its incident printed, the isolation attack suite runs, the audit chain is
verified, the service's ``/metrics`` are read and printed with the dashboard's address, an
HTML report is written and the server is stopped with SIGTERM (or left serving). With
``days``, simulated days of production follow the rounds (``silolearn.demo.days``): the
scheduler's triggers, canary rollouts on live feedback and a drill, served from this process
on a manual clock.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from silolearn.audit.log import utcnow
from silolearn.config import CONFIG_FILE
from silolearn.datasets import DATASETS, sample
from silolearn.demo import production
from silolearn.demo.client import ServiceClient
from silolearn.demo.days import DAY_TRAFFIC, run_days
from silolearn.demo.governance import (
    first_vs_last,
    gates_part,
    privacy_part,
    progress_table,
    shared_line,
)
from silolearn.demo.report import write_report
from silolearn.demo.tenants import (
    DEFAULT_SIZES,
    DP_EPSILON,
    DP_TENANT,
    POLICIES,
    SHARED_TENANTS,
    SOURCES,
    SWEEP_TENANT,
)
from silolearn.errors import WorkspaceError
from silolearn.ingest.gateway import Gateway
from silolearn.learning.shared import SharedStore
from silolearn.privacy.ledger import SHARED, tenant_scope
from silolearn.registry.versions import AdapterRegistry
from silolearn.rounds.shared import SharedTrainer
from silolearn.storage.scope import Purpose
from silolearn.verification import run_isolation_suite
from silolearn.workspace import Workspace

Row = dict[str, Any]
TOKEN_HOURS = "8h"


def _fresh_workspace(path: Path) -> Workspace:
    if path.exists():
        if not (path / CONFIG_FILE).exists():
            raise WorkspaceError(f"{path} exists and is not a silolearn workspace; not removing it")
        shutil.rmtree(path)
    return Workspace.init(path, actor="demo")


def _tenants(ws: Workspace, sizes: dict[str, int], result: Row) -> dict[str, list[Row]]:
    """The four tenants, their streams and their privacy settings (a policy, not a
    threshold: nothing here tunes a gate or a hyperparameter)."""
    streams: dict[str, list[Row]] = {}
    for name, loader in DATASETS.items():
        ws.create_tenant(name, pii_policy=POLICIES[name])
        streams[name] = sample(loader(), sizes[name], seed=7)
        result["tenants"].append(
            {
                "name": name,
                "dataset": SOURCES[name],
                "records": len(streams[name]),
                "labels": len({r["label"] for r in streams[name]}),
            }
        )
    ledger = ws.ledger()
    dp_scope = tenant_scope(ws.tenants.get(DP_TENANT).id)
    ledger.set_policy(dp_scope, tenant=DP_TENANT, mode="dp", run_epsilon=DP_EPSILON)
    sweep_scope = tenant_scope(ws.tenants.get(SWEEP_TENANT).id)
    ledger.set_policy(sweep_scope, tenant=SWEEP_TENANT, epsilon_budget=30.0)
    store = SharedStore(ws)
    for name in SHARED_TENANTS:
        store.join(name)
    return streams


def grant_tokens(client: ServiceClient, tenants: list[str]) -> None:
    """Least privilege: per tenant, its application's token (predict and feedback) and its
    trainer's (rounds and versions); one workspace-wide auditor token for /metrics and
    the dashboard."""
    for name in tenants:
        client.grant(name, ["reader", "contributor"], purpose="app", lasting=TOKEN_HOURS)
        client.grant(name, ["trainer"], purpose="trainer", lasting=TOKEN_HOURS)
    client.grant(None, ["auditor"], purpose="auditor", lasting=TOKEN_HOURS)


def _rounds(
    ws: Workspace,
    client: ServiceClient,
    streams: dict[str, list[Row]],
    rounds: int,
    result: Row,
    say: Any,
) -> None:
    """Arrivals, a round of every tenant through the API, then production traffic with
    feedback that the next round learns from."""
    gateway = Gateway(ws)
    traffic = production.held_out_traffic(streams, rounds)
    for round_no in range(1, rounds + 1):
        # a SEV1 verdict quarantines a tenant: it keeps serving, takes no records and
        # sits out the rounds until someone reviews the incident and releases it
        training = [n for n in streams if ws.tenants.get(n).status == "active"]
        for name in sorted(set(streams) - set(training)):
            say(f"{name}: quarantined by an incident (no ingest, no training), serving")
        ingested: dict[str, Row] = {}
        for name in training:
            rows = streams[name]
            chunk = rows[(round_no - 1) * len(rows) // rounds : round_no * len(rows) // rounds]
            ingested[name] = {"arrived": len(chunk), **gateway.ingest(name, chunk).to_dict()}
        say(f"round {round_no}: ingested; rounds of {len(training)} tenants started over the API…")
        entries = production.api_rounds(client, training, ingested, cutoff=utcnow())
        say(production.round_table(round_no, rounds, entries))
        result["rounds"].append({"round": round_no, "tenants": entries})
        if round_no == 1 and rounds > 1:
            members = [n for n in SHARED_TENANTS if ws.tenants.get(n).status == "active"]
            if len(members) == len(SHARED_TENANTS):
                say(shared_line(SharedTrainer(ws).train(members)))
            else:
                say("no shared layer: a member's training is quarantined (see the incidents)")
        served = production.serve_round(
            client, {name: slices[round_no - 1] for name, slices in traffic.items()}
        )
        after = "the next round learns from the feedback" if round_no < rounds else "last round"
        say(
            production.traffic_table(
                f"production after round {round_no}: predict, then feedback on "
                f"{production.FEEDBACK_SHARE:.0%} ({after})",
                served,
            )
        )
        result["traffic"].append({"round": round_no, "tenants": served})


def _versions(ws: Workspace, tenants: list[str]) -> dict[str, list[Row]]:
    versions = {}
    for name in tenants:
        registry = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY))
        versions[name] = [
            {
                "version": v.version,
                "status": v.status,
                "accuracy": v.metrics.get("accuracy"),
                "macro_f1": v.metrics.get("macro_f1"),
                "sha256": v.sha256,
                "created_at": v.created_at,
            }
            for v in registry.list()
        ]
    return versions


def run_demo(
    path: Path,
    *,
    per_tenant: int | None,
    rounds: int,
    console: Console | None,
    report: Path | None = None,
    keep_serving: bool = False,
    days: int = 0,
) -> Row:
    sizes = dict(DEFAULT_SIZES) if per_tenant is None else dict.fromkeys(DATASETS, per_tenant)
    if rounds < 1 or min(sizes.values()) < 20 * rounds:
        raise WorkspaceError("the demo needs rounds >= 1 and at least 20 records per round")
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    # default settings throughout: no per-tenant gate threshold, no tuned hyperparameter
    ws = _fresh_workspace(path)
    result: Row = {"workspace": str(path.resolve()), "rounds": [], "tenants": [], "traffic": []}
    client: ServiceClient | None = None
    try:
        streams = _tenants(ws, sizes, result)
        client = ServiceClient.start(path)
        grant_tokens(client, list(streams))
        say(
            f"[bold]silolearn demo[/] — workspace {path.resolve()}: {len(streams)} tenants, "
            f"{rounds} rounds; silolearn serve (pid {client.process.pid}) on {client.url}, "
            "a reader+contributor and a trainer token per tenant (silolearn access grant)"
        )
        ledger = ws.ledger()
        dp_policy = ledger.policy(tenant_scope(ws.tenants.get(DP_TENANT).id))
        say(
            f"privacy: {DP_TENANT} trains with DP-SGD only (ε {DP_EPSILON:g} per round, "
            f"budget {dp_policy.epsilon_budget:g} at δ {dp_policy.delta:g}); "
            f"{' and '.join(SHARED_TENANTS)} join the shared layer (DP-SGD across their "
            f"workers after round 1, budget {ledger.policy(SHARED).epsilon_budget:g})"
        )
        _rounds(ws, client, streams, rounds, result, say)
        _epilogue(ws, client, streams, rounds, result, say)
        if days > 0:
            # the days serve the workspace from this process, on a manual clock
            result["server"] = {"url": client.url, "exit_code": client.stop()}
            say(f"[bold]{days} simulated days of production[/] (silolearn.demo.days)")
            result["days"] = run_days(path, days=days, per_day=DAY_TRAFFIC, say=say)
            if keep_serving:  # the dashboard on the system's clock again
                client = ServiceClient.start(path, log=client.log)
                grant_tokens(client, [])
        result["seconds"] = round(time.perf_counter() - started, 2)
        report_path = write_report(result, report or path / "report.html")
        result["report"] = str(report_path.resolve())
        say(f"report: {result['report']}")
        say(f"done in {result['seconds']} s")
        if result["isolation"]["blocked"] != result["isolation"]["attacks"]:
            raise WorkspaceError("the isolation suite found an attack that was not blocked")
    finally:
        ws.close()
        if client is not None:
            _leave_server(client, keep_serving, result, say)
    return result


def _epilogue(
    ws: Workspace,
    client: ServiceClient,
    streams: dict[str, list[Row]],
    rounds: int,
    result: Row,
    say: Any,
) -> None:
    """After the rounds: privacy, gates, the isolation suite, the audit chain, first against
    serving version, and what the service's /metrics say."""
    if ws.tenants.get("newsroom").status == "active":
        replay = Gateway(ws).ingest(
            "newsroom", streams["newsroom"][: len(streams["newsroom"]) // rounds]
        )
        say(
            f"re-ingesting newsroom's first round stores nothing twice: "
            f"{replay.accepted} stored, {replay.duplicates} duplicates"
        )
    result["versions"] = _versions(ws, list(streams))
    result["privacy"] = privacy_part(ws, result, list(streams), say)
    result["gates"] = gates_part(ws, list(streams), streams[SWEEP_TENANT], say)
    attacks = run_isolation_suite(ws)
    blocked = sum(a.blocked for a in attacks)
    say(f"isolation attack suite: {blocked}/{len(attacks)} attacks blocked")
    ws.audit.checkpoint()
    verified = ws.audit.verify()
    say(f"audit verify: OK — {verified.events} events, {verified.checkpoints} signed checkpoints")
    progress = first_vs_last(ws, list(streams))
    say(progress_table(progress, rounds))
    improved = [p["tenant"] for p in progress if p["gain"] is not None and p["gain"] > 0]
    say(
        f"accuracy of the serving version improved from round 1 to round {rounds} for "
        f"{len(improved)}/{len(streams)} tenants: {', '.join(improved) or 'none'}"
    )
    metrics = production.metrics_summary(client.metrics())
    for table in production.metrics_tables(metrics):
        say(table)
    say(
        "/metrics: open incidents "
        + ", ".join(f"{k} {v}" for k, v in metrics["open_incidents"].items())
        + "; ε remaining "
        + ", ".join(f"{k} {v:.2f}" for k, v in metrics["epsilon_remaining"].items())
    )
    result.update(
        progress=progress,
        isolation={"blocked": blocked, "attacks": len(attacks)},
        audit={**verified.to_dict(), "ok": True},
        improved=improved,
        metrics=metrics,
        dashboard=f"{client.url}/dashboard",
        generated_at=utcnow(),
    )


def _leave_server(client: ServiceClient, keep_serving: bool, result: Row, say: Any) -> None:
    """Stop the server with SIGTERM (in-flight requests finish, running rounds are waited
    for), or leave it serving the dashboard with a token to log in with."""
    dashboard = f"{client.url}/dashboard"
    if keep_serving:
        client.http.close()
        token = client.tokens.get((None, "auditor"))
        result["server"] = {"url": client.url, "pid": client.process.pid, "serving": True}
        say(
            f"dashboard: {dashboard} — log in with this workspace-wide auditor token (valid "
            f"{TOKEN_HOURS}): {token}\nsilolearn serve (pid {client.process.pid}) keeps "
            f"serving; stop it with: kill -TERM {client.process.pid}"
        )
        return
    code = client.stop()
    if code is None:  # stopped before the simulated days
        code = (result.get("server") or {}).get("exit_code")
    result["server"] = {"url": client.url, "pid": client.process.pid, "exit_code": code}
    say(
        f"dashboard: {dashboard} while it served; to browse it, run the demo with "
        f"--keep-serving, or: silolearn serve -w {client.workspace} and log in with a token "
        "from silolearn access grant --workspace-wide --role auditor --reason dashboard --json"
    )
    say(f"silolearn serve stopped by SIGTERM (exit code {code}); its log: {client.log}")
