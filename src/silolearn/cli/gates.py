"""Commands: `gates ...` (rerun, policy, divergence, shadow), `incidents ...` (list, show,
resolve)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _gates_table,
    _table,
    command,
    emit,
    gates_app,
    incidents_app,
    opened,
    out,
)
from silolearn.errors import (
    InvalidInput,
)

# -- gates and incidents ---------------------------------------------------------------------


@gates_app.command("rerun")
@command
def gates_rerun(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Re-audit the active version under today's policy and eval data. If it fails, the newest
    earlier version that passes is restored automatically (audited) and an incident opened;
    exits 5 when the active version failed."""
    from silolearn.pipeline import Trainer

    with opened(workspace) as ws:
        report = Trainer(ws).rerun_gates(tenant)

    def human() -> None:
        out.print(_gates_table(f"{tenant} v{report['version']}: re-audit", report["gates"]))
        if report["passed"]:
            out.print(f"{tenant} v{report['version']} passes every gate")
            return
        restored = report["restored"]
        out.print(
            f"{tenant} v{report['version']} FAILED ({report['severity']}); "
            + (f"restored v{restored}" if restored else "no earlier version passes")
            + f"; incident {report['incident']}"
        )

    emit(as_json, report, human)
    if not report["passed"]:
        raise typer.Exit(5)


@gates_app.command("policy")
@command
def gates_policy(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """The effective gate policy of a tenant ([gates] with its [gates.tenants.NAME] overrides
    in silolearn.toml)."""
    with opened(workspace) as ws:
        ws.tenants.get(tenant)
        policy = ws.settings.gates.for_tenant(tenant).model_dump()
        overridden = sorted(ws.settings.gates.tenants.get(tenant, {}))
    payload = {"tenant": tenant, "policy": policy, "overridden": overridden}
    emit(
        as_json,
        payload,
        lambda: out.print(
            _table(
                f"gate policy of {tenant}",
                ["key", "value", "source"],
                [[k, v, "tenant" if k in overridden else "default"] for k, v in policy.items()],
            )
        ),
    )


@gates_app.command("divergence")
@command
def gates_divergence(
    tenant: Annotated[str | None, typer.Argument(help="Only this tenant's checks.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Run a check of every tenant now, then list.")
    ] = False,
) -> None:
    """Cross-tenant divergence checks: each tenant's active predictions on its probe set
    compared with its snapshot after other tenants' rounds and shared-model updates."""
    from silolearn.validation.divergence import check as run_check
    from silolearn.validation.divergence import history

    with opened(workspace) as ws:
        if check:
            run_check(ws, event="manual check", source=None)
        rows = history(ws, tenant)
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table(
                "divergence checks",
                ["when", "event", "tenant", "version", "shared", "identical", "KL"],
                [
                    [
                        r["created_at"],
                        r["event"],
                        r["tenant"],
                        r["version"],
                        r["shared_version"] or "",
                        r["identical"],
                        f"{r['kl']:.3g}",
                    ]
                    for r in rows
                ],
            )
        ),
    )


@gates_app.command("shadow")
@command
def gates_shadow(
    tenant: Annotated[str | None, typer.Argument(help="Only this tenant's comparisons.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    run: Annotated[
        bool,
        typer.Option("--run", help="Train an isolated shadow of TENANT and compare it now."),
    ] = False,
) -> None:
    """Shared-layer members against isolated shadows: the disagreement rate and KL of
    production vs a head trained on the member's own records only, per shared version."""
    from silolearn.pipeline import Trainer
    from silolearn.validation.shadow import history

    with opened(workspace) as ws:
        if run:
            if tenant is None:
                raise InvalidInput("--run needs a TENANT")
            Trainer(ws).shadow(tenant)
        rows = history(ws, tenant)
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table(
                "shadow comparisons",
                ["when", "tenant", "shared", "version", "shadow", "probes", "disagree", "KL"],
                [
                    [
                        r["created_at"],
                        r["tenant"],
                        "" if r["shared_version"] is None else f"v{r['shared_version']}",
                        r["version"],
                        r["shadow_version"],
                        r["probes"],
                        f"{r['disagreement']:.3f}",
                        f"{r['kl']:.3g}",
                    ]
                    for r in rows
                ],
            )
        ),
    )


@incidents_app.command("list")
@command
def incidents_list(
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's incidents.")] = None,
    status: Annotated[str | None, typer.Option(help="open | resolved")] = None,
) -> None:
    """List incidents, oldest first."""
    from silolearn.monitoring.incidents import Incidents

    with opened(workspace) as ws:
        rows = Incidents(ws).list(tenant=tenant, status=status)
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table(
                "incidents",
                ["id", "when", "tenant", "severity", "kind", "version", "status", "actions"],
                [
                    [
                        r["id"],
                        r["created_at"],
                        r["tenant"],
                        r["severity"],
                        r["kind"],
                        r["version"] if r["version"] is not None else "",
                        r["status"],
                        "; ".join(r["actions"]),
                    ]
                    for r in rows
                ],
            )
        ),
    )


@incidents_app.command("show")
@command
def incidents_show(
    incident: Annotated[int, typer.Argument(help="Incident id.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One incident: severity, summary, evidence (numbers) and the actions taken."""
    from silolearn.monitoring.incidents import Incidents

    with opened(workspace) as ws:
        row = Incidents(ws).get(incident)

    def human() -> None:
        out.print(
            f"incident {row['id']} [{row['severity']}] {row['tenant']} "
            f"{row['kind']} ({row['status']})"
        )
        out.print(row["summary"])
        out.print("actions: " + "; ".join(row["actions"]))
        out.print_json(json.dumps(row["evidence"], default=str))

    emit(as_json, row, human)


@incidents_app.command("resolve")
@command
def incidents_resolve(
    incident: Annotated[int, typer.Argument(help="Incident id.")],
    note: Annotated[str, typer.Option(help="What was done (kept in the audit log).")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Close an incident with a note. A quarantined tenant stays quarantined until
    `silolearn tenant release`."""
    from silolearn.monitoring.incidents import Incidents

    with opened(workspace) as ws:
        row = Incidents(ws).resolve(incident, note=note)
    emit(as_json, row, lambda: out.print(f"incident {incident} resolved"))
