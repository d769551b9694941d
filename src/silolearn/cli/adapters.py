"""Commands: `adapters ...` (list, show, promote, runs, rollback)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _gates_table,
    _table,
    adapters_app,
    command,
    emit,
    opened,
    out,
)
from silolearn.workspace import Workspace

# -- adapters ----------------------------------------------------------------------------------


def _registry(ws: Workspace, tenant: str) -> Any:
    from silolearn.registry.versions import AdapterRegistry
    from silolearn.storage.scope import Purpose

    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))


def _versions(ws: Workspace, tenant: str) -> list[dict[str, Any]]:
    """The tenant's versions with the canary rollouts they took part in."""
    from silolearn.registry.rollout import with_rollouts
    from silolearn.storage.scope import Purpose

    scope = ws.scope(tenant, purpose=Purpose.REGISTRY)
    return with_rollouts(scope, [v.to_dict() for v in _registry(ws, tenant).list()])


def _versions_table(tenant: str, rows: list[dict[str, Any]]) -> Table:
    from silolearn.registry.rollout import describe

    return _table(
        f"adapters of {tenant}",
        [
            "version",
            "status",
            "rollout",
            "kind",
            "parent",
            "accuracy",
            "macro-F1",
            "sha256",
            "created",
        ],
        [
            [
                r["version"],
                r["status"],
                describe(r["rollout"]),
                r["kind"],
                r["parent"] or "",
                r["metrics"].get("accuracy", ""),
                r["metrics"].get("macro_f1", ""),
                r["sha256"][:16],
                r["created_at"][:19],
            ]
            for r in rows
        ],
    )


@adapters_app.command("list")
@command
def adapters_list(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List a tenant's adapter versions with status, metrics, SHA-256 and lineage."""
    with opened(workspace) as ws:
        rows = _versions(ws, tenant)
    emit(as_json, rows, lambda: out.print(_versions_table(tenant, rows)))


@adapters_app.command("show")
@command
def adapters_show(
    tenant: str,
    version: Annotated[int, typer.Argument(help="Version number.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one version: status, its canary rollout (share, step, feedback per version,
    evidence), gate verdicts (at its decision and every re-audit since), metrics and
    lineage."""
    from silolearn.pipeline import list_gate_runs
    from silolearn.registry.rollout import describe, with_rollouts
    from silolearn.storage.scope import Purpose

    with opened(workspace) as ws:
        scope = ws.scope(tenant, purpose=Purpose.REGISTRY)
        (row,) = with_rollouts(scope, [_registry(ws, tenant).get(version).to_dict()])
        row["gate_runs"] = list_gate_runs(ws, tenant, version)

    def human() -> None:
        out.print(f"{tenant} v{version}: {row['status']} ({row['kind']}, sha256 {row['sha256']})")
        if row["rollout"] is not None:
            out.print(f"rollout: {describe(row['rollout'])}")
        gates = (row.get("decision") or {}).get("gates") or []
        if gates:
            out.print(_gates_table(f"gates at its decision: {row['decision']['reason']}", gates))
        for run in row["gate_runs"]:
            if run["trigger"] in ("rerun", "restore"):
                out.print(_gates_table(f"{run['trigger']} {run['created_at']}", run["verdicts"]))
        rest = {k: v for k, v in row.items() if k not in ("gate_runs",)}
        out.print_json(json.dumps(rest, default=str))

    emit(as_json, row, human)


@adapters_app.command("promote")
@command
def adapters_promote(
    tenant: str,
    version: Annotated[int, typer.Argument(help="Candidate version to serve.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "manual",
) -> None:
    """Promote a candidate by hand, through the same gates a round applies (it is evaluated
    again); the active version is retired in the same transaction. A failing candidate is
    rejected and the command exits 5."""
    from silolearn.pipeline import Trainer

    with opened(workspace) as ws:
        row = Trainer(ws).promote(tenant, version, reason=reason).to_dict()
    emit(as_json, row, lambda: out.print(f"{tenant}: v{version} is {row['status']}"))


@adapters_app.command("runs")
@command
def adapters_runs(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List a tenant's training runs, failed and abandoned ones included."""
    from silolearn.pipeline import list_runs

    with opened(workspace) as ws:
        rows = list_runs(ws, tenant)
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table(
                f"training runs of {tenant}",
                ["run", "kind", "status", "version", "cutoff", "started", "error"],
                [
                    [
                        r["run_id"],
                        r["kind"],
                        r["status"],
                        r["version"] or "",
                        (r["cutoff"] or "")[:19],
                        r["started"][:19],
                        (r["error"] or "")[:60],
                    ]
                    for r in rows
                ],
            )
        ),
    )


@adapters_app.command("rollback")
@command
def adapters_rollback(
    tenant: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    to: Annotated[int | None, typer.Option("--to", help="Version to serve again.")] = None,
) -> None:
    """Serve an earlier version again (default: the one retired last); only this tenant."""
    with opened(workspace) as ws:
        row = _registry(ws, tenant).rollback(to=to).to_dict()
    emit(as_json, row, lambda: out.print(f"{tenant}: rolled back to v{row['version']}"))
