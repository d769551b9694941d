"""Commands: `train`, `predict`, `demo`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _default_workspace,
    _table,
    app,
    command,
    emit,
    err,
    opened,
    out,
)
from silolearn.errors import (
    InvalidInput,
    NotFoundError,
)
from silolearn.workspace import Workspace

# -- learning and serving ----------------------------------------------------------------------


def _gate_summary(decision: dict[str, Any]) -> str:
    """The reason of the first failed gate, or of the quality gate when all passed."""
    gates = decision.get("gates") or [{}]
    failed = [g for g in gates if not g.get("passed", True)]
    shown = failed[0] if failed else gates[0]
    prefix = f"{shown.get('gate')}: " if failed else ""
    return f"{prefix}{shown.get('reason', '')}"


def _round_table(results: list[Any]) -> Table:
    def pair(before: Any, after: Any) -> str:
        return f"{before:.3f} → {after:.3f}" if before is not None else f"{after:.3f}"

    rows = []
    for r in results:
        if r.status == "failed":
            rows.append(
                [r.tenant, "", "[red]failed[/]", "", "", "", (r.error or {}).get("message")]
            )
            continue
        before = r.before or {}
        colour = "green" if r.status == "active" else "yellow"
        privacy = r.lineage.get("privacy") or {}
        if privacy.get("mode") == "dp":
            charge = privacy.get("charge") or {}
            spent_before = charge.get("epsilon_before", 0.0)
            spent_after = charge.get("epsilon_after", 0.0)
            target = (privacy.get("plan") or {}).get("target_epsilon", 0.0)
            data = (
                f"{r.lineage.get('records', 0)} DP ε{target:g}: "
                f"{spent_before:.2f} → {spent_after:.2f}"
            )
        else:
            data = f"{r.lineage.get('new_records', 0)}+{r.lineage.get('replay_records', 0)}"
        rows.append(
            [
                r.tenant,
                f"v{r.version}",
                f"[{colour}]{r.status}[/]",
                data,
                pair(before.get("accuracy"), r.metrics.get("accuracy", 0.0)),
                pair(before.get("macro_f1"), r.metrics.get("macro_f1", 0.0)),
                f"{r.sha256[:16]}  {_gate_summary(r.decision)}",
            ]
        )
    return _table(
        "training round",
        ["tenant", "version", "status", "records", "accuracy", "macro-F1", "sha256 / gate"],
        rows,
    )


@app.command()
@command
def train(
    tenant: Annotated[str | None, typer.Argument(help="Tenant to train (or --all).")] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all", help="Every active tenant, several at once.")
    ] = False,
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="head or lora [default: training.adapter]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed [default: training.seed].")] = None,
    cutoff: Annotated[
        str | None,
        typer.Option(help="Train on records up to this time [default: newest eval record]."),
    ] = None,
    dp: Annotated[
        bool | None,
        typer.Option(
            "--dp/--no-dp",
            help="Train with DP-SGD [default: the tenant's privacy policy].",
            show_default=False,
        ),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(help="Target epsilon of this DP run (implies --dp) [default: policy]."),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One learning round: train in an isolated process, evaluate, promote or reject."""
    from silolearn.pipeline import Trainer, train_many

    if (tenant is None) == (not all_tenants):
        raise InvalidInput("name one tenant, or use --all")
    if adapter is not None and adapter not in ("head", "lora"):
        raise InvalidInput(f"unknown adapter kind {adapter!r}: use head or lora")
    if all_tenants:
        if cutoff is not None:
            raise InvalidInput("--cutoff applies to one tenant; each tenant has its own window")
        with opened(workspace) as ws:
            names = [t.name for t in ws.tenants.list() if t.status == "active"]
        if not names:
            raise NotFoundError("no active tenants to train")
        where = workspace if workspace is not None else _default_workspace()
        results = train_many(
            lambda: Workspace.open(where),
            names,
            kind=adapter,
            seed=seed,
            dp=dp,
            epsilon=epsilon,
        )
    else:
        assert tenant is not None
        with opened(workspace) as ws:
            results = [
                Trainer(ws).train(
                    tenant, kind=adapter, seed=seed, cutoff=cutoff, dp=dp, epsilon=epsilon
                )
            ]
    emit(
        as_json,
        [r.to_dict() for r in results] if all_tenants else results[0].to_dict(),
        lambda: _print_rounds(results),
    )
    if any(r.status == "failed" for r in results):
        raise typer.Exit(10)


def _feedback_loop_line(tenant: str, loop: dict[str, Any]) -> str:
    """Where a round's labels came from and its share of self-confirmed feedback."""
    sources = ", ".join(f"{k} {v}" for k, v in loop.get("label_sources", {}).items())
    line = (
        f"{tenant}: labels {sources}; self-confirmed {loop['self_confirmed_share']:.1%} "
        f"(bound {loop['max_self_confirmed_share']:.0%})"
    )
    if loop.get("left_out"):
        line += (
            f", {loop['left_out']} left out: trained on {loop['trained_self_confirmed_share']:.1%}"
        )
    return line


def _print_rounds(results: list[Any]) -> None:
    """The round table, then per tenant its remediation attempts, label warnings and, when
    nothing was promoted, the explanation."""
    out.print(_round_table(results))
    for r in results:
        if len(r.attempts) > 1:
            rows = [
                [
                    str(i + 1),
                    a["what"],
                    "" if a.get("version") is None else f"v{a['version']}",
                    a["status"],
                    ", ".join(a.get("failed") or []),
                    "" if a.get("macro_f1") is None else f"{a['macro_f1']:.3f}",
                ]
                for i, a in enumerate(r.attempts)
            ]
            out.print(
                _table(
                    f"attempts for {r.tenant}",
                    ["#", "what", "version", "status", "failed gates", "macro-F1"],
                    rows,
                )
            )
        loop = r.lineage.get("feedback_loop")
        if loop:
            out.print(_feedback_loop_line(r.tenant, loop))
        for w in r.warnings:
            err.print(f"[yellow]warning[/]: {r.tenant}: {w['message']}")
        if r.explanation:
            out.print(r.explanation)


@app.command()
@command
def predict(
    tenant: str,
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="One text per line ('-' for stdin).")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify texts with the tenant's active adapter version."""
    items = list(texts or [])
    if file is not None:
        try:
            raw = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from None
        items.extend(line for line in raw.splitlines() if line.strip())
    if not items:
        raise InvalidInput("give texts as arguments or with --file")
    with opened(workspace) as ws:
        predictions = [p.to_dict() for p in ws.tenant(tenant).predict(items)]

    def human() -> None:
        out.print(
            _table(
                f"predictions for {tenant}",
                ["text", "label", "p", "version"],
                [
                    [
                        text[:60],
                        p["label"],
                        f"{p['probabilities'][p['label']]:.3f}",
                        f"v{p['version']}",
                    ]
                    for text, p in zip(items, predictions, strict=True)
                ],
            )
        )

    emit(as_json, predictions, human)


# -- demo ------------------------------------------------------------------------------------


@app.command()
@command
def demo(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Demo workspace (recreated).")
    ] = Path(".silolearn-demo"),
    as_json: JsonOpt = False,
    per_tenant: Annotated[
        int | None,
        typer.Option(help="Records per tenant [default: 600 for articles, 1500 otherwise]."),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Rounds of arrivals and training.")] = 3,
    report: Annotated[
        Path | None, typer.Option(help="HTML report path [default: WORKSPACE/report.html].")
    ] = None,
    keep_serving: Annotated[
        bool, typer.Option(help="Leave silolearn serve running (the dashboard) at the end.")
    ] = False,
    days: Annotated[
        int,
        typer.Option(
            min=0,
            max=60,
            help="Then simulated days of production: scheduler, drift, canary, a drill.",
        ),
    ] = 0,
    federated: Annotated[
        bool,
        typer.Option(
            "--federated",
            help="Instead: three sites (workspaces of their own) federated over Flower on "
            "loopback, SecAgg+ and client-level DP, for --rounds rounds.",
        ),
    ] = False,
) -> None:
    """Run the main job on real data through the HTTP service: four tenants, records
    arriving in rounds, each round started over the API, trained in isolated processes,
    gated, promoted or rejected; production traffic through predict, feedback that the next
    round learns from; /metrics read, an HTML report written. With --federated: three
    sites federated over Flower on loopback, their accuracy per round and the ledger."""
    from silolearn.demo import run_demo

    if federated:
        from silolearn.demo.federated import run_federated_demo

        if per_tenant is not None or report is not None or keep_serving or days:
            raise InvalidInput(
                "--federated takes --workspace, --rounds and --json only (not --per-tenant, "
                "--report, --keep-serving or --days)"
            )

        outcome = run_federated_demo(workspace, rounds=rounds, console=None if as_json else out)
        if as_json:
            print(json.dumps(outcome, indent=2, sort_keys=True, default=str))
        return
    result = run_demo(
        workspace,
        per_tenant=per_tenant,
        rounds=rounds,
        console=None if as_json else out,
        report=report,
        keep_serving=keep_serving,
        days=days,
    )
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
