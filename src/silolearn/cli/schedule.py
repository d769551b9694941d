"""Commands: `schedule show T`, `schedule set T ...` (what starts a tenant's rounds, and the
scheduler's decisions with their evidence), `schedule tick` (one tick now, in this process,
rounds run in it)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from silolearn.cli.base import JsonOpt, WorkspaceOpt, _table, app, command, emit, opened, out
from silolearn.clock import SYSTEM
from silolearn.errors import InvalidInput
from silolearn.operations.policy import SchedulePolicies
from silolearn.workspace import Workspace

schedule_app = typer.Typer(
    help="What starts a tenant's rounds: its policy, and the scheduler's decisions.",
    no_args_is_help=True,
)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("show")
@command
def schedule_show(
    tenant: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Decisions shown.")] = 20,
) -> None:
    """The tenant's policy, its state (round running, back-off, next scheduled time) and
    the scheduler's newest decisions with their evidence."""
    with opened(workspace) as ws:
        from silolearn.operations.scheduler import schedule_view

        view = schedule_view(ws, tenant, SYSTEM.now(), limit=limit)
    emit(as_json, view, lambda: _print_view(view))


@schedule_app.command("set")
@command
def schedule_set(
    tenant: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    triggers: Annotated[
        str | None,
        typer.Option(help="Comma-separated: schedule, volume, performance, drift."),
    ] = None,
    manual: Annotated[bool, typer.Option(help="No trigger: rounds only by hand.")] = False,
    cron: Annotated[
        str | None, typer.Option(help='Five-field cron expression in UTC, e.g. "0 3 * * 0".')
    ] = None,
    min_new_records: Annotated[
        int | None, typer.Option(help="New labelled records that start a round (volume).")
    ] = None,
    backoff_minutes: Annotated[
        float | None, typer.Option(help="Wait after an unsuccessful round (doubles).")
    ] = None,
    backoff_max_hours: Annotated[float | None, typer.Option(help="The back-off's cap.")] = None,
    reset: Annotated[
        bool, typer.Option(help="Drop the tenant's own policy first: [schedule] defaults.")
    ] = False,
) -> None:
    """Set keys of the tenant's schedule policy (the rest stay as they are)."""
    if manual and triggers is not None:
        raise InvalidInput("--manual and --triggers exclude each other")
    changes: dict[str, Any] = {}
    if manual:
        changes["triggers"] = []
    elif triggers is not None:
        changes["triggers"] = [t.strip() for t in triggers.split(",") if t.strip()]
    given = {
        "cron": cron,
        "min_new_records": min_new_records,
        "backoff_minutes": backoff_minutes,
        "backoff_max_hours": backoff_max_hours,
    }
    changes.update({key: value for key, value in given.items() if value is not None})
    if not changes and not reset:
        raise InvalidInput("nothing to set: give --triggers, --manual, --cron, ... or --reset")
    now = SYSTEM.now()
    from silolearn.operations.scheduler import schedule_view

    with opened(workspace) as ws:
        SchedulePolicies(ws).set(tenant, changes, at=now, reset=reset)
        view = schedule_view(ws, tenant, now)
    emit(as_json, view, lambda: _print_view(view))


@schedule_app.command("tick")
@command
def schedule_tick(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Decide now for every tenant, running the rounds that are due in this process (what
    the service's scheduler does on its own every ``[schedule] tick_seconds``)."""
    from silolearn.operations.scheduler import InlineLauncher, Scheduler

    with opened(workspace) as ws:
        path, actor = ws.path, ws.actor
    scheduler = Scheduler(lambda: Workspace.open(path, actor=actor), InlineLauncher(), SYSTEM)
    made = [d.to_dict() for d in scheduler.tick()]
    emit(as_json, made, lambda: out.print(_decisions_table("decisions", made)))


def _print_view(view: dict[str, Any]) -> None:
    policy, state = view["policy"], view["state"]
    triggers = ", ".join(policy["triggers"]) or "none (manual rounds only)"
    rows = [
        ["triggers", triggers],
        ["cron (UTC)", policy["cron"] or "-"],
        ["min new records", policy["min_new_records"]],
        [
            "back-off",
            f"{policy['backoff_minutes']} min, doubling, at most {policy['backoff_max_hours']} h",
        ],
        ["own keys", ", ".join(sorted(view["override"])) or "none (the workspace's defaults)"],
        ["status", view["status"]],
        ["last round since", state["since"]],
        ["round running", "yes" if state["running"] else "no"],
        ["unsuccessful in a row", state["failures"]],
        ["backing off until", state["backoff_until"] or "-"],
        ["next scheduled", state["next_scheduled"] or "-"],
    ]
    out.print(_table(f"schedule of {view['tenant']}", ["setting", "value"], _escaped(rows)))
    out.print(_decisions_table("decisions (newest first)", view["decisions"]))


def _escaped(rows: list[list[Any]]) -> list[list[Any]]:
    """Values as text, never read as rich markup (evidence holds brackets)."""
    return [[escape(str(value)) for value in row] for row in rows]


def _decisions_table(title: str, decisions: list[dict[str, Any]]) -> Table:
    return _table(
        title,
        [
            "at",
            "tenant",
            "decision",
            "trigger",
            "reason",
            "outcome",
            "version",
            "back-off until",
            "evidence",
        ],
        _escaped(
            [
                [
                    d["at"][:19],
                    d["tenant"],
                    d["decision"],
                    d["trigger"],
                    d["reason"] or "",
                    d["outcome"] or ("running" if d["decision"] == "trigger" else ""),
                    "" if d["version"] is None else d["version"],
                    (d["backoff_until"] or "")[:19],
                    _evidence(d["evidence"]),
                ]
                for d in decisions
            ]
        ),
    )


def _evidence(evidence: dict[str, Any] | None) -> str:
    if evidence is None:
        return "(sealed)"
    shown = []
    for key, value in evidence.items():
        if key == "signals":
            shown.append(
                "signals "
                + ", ".join(f"{s['kind']} {s['statistic']:.3g}>{s['threshold']:.3g}" for s in value)
            )
        elif value not in (None, [], {}):
            shown.append(f"{key}={value}")
    return "; ".join(shown)
