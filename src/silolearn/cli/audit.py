"""Commands: `audit ...` (verify, show, checkpoint), `verify isolation`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _table,
    audit_app,
    command,
    emit,
    opened,
    out,
    verify_app,
)
from silolearn.errors import (
    AuditChainBroken,
    InvalidInput,
)
from silolearn.workspace import Workspace

# -- audit -----------------------------------------------------------------------------------


@audit_app.command("verify")
@command
def audit_verify(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Check the hash chain, every signed checkpoint and the head (exit 8 names the event)."""
    ws = Workspace.open(workspace)
    try:
        report = ws.audit.verify()
    except AuditChainBroken as exc:
        ws.conn.close()
        if as_json:
            print(json.dumps({"ok": False, "seq": exc.seq, "message": exc.message}))
        raise
    ws.conn.close()
    emit(
        as_json,
        report.to_dict(),
        lambda: out.print(
            f"audit log OK: {report.events} events, {report.checkpoints} signed checkpoints, "
            f"head {report.head_hash[:16]}"
        ),
    )


@audit_app.command("show")
@command
def audit_show(
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO-8601 time.")] = None,
    action: Annotated[str | None, typer.Option(help="Action or action prefix.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the newest N events.")] = None,
) -> None:
    """Show audit events."""
    if since is not None:
        from silolearn.records import normalise_timestamp

        try:
            since = normalise_timestamp(since)
        except ValueError:
            raise InvalidInput(f"--since {since!r} is not an ISO-8601 time") from None
    ws = Workspace.open(workspace)
    try:
        events = ws.audit.events(tenant=tenant, since=since, action=action, limit=limit)
    finally:
        ws.conn.close()
    emit(
        as_json,
        [e.to_dict() for e in events],
        lambda: out.print(
            _table(
                "audit",
                ["seq", "time", "actor", "tenant", "action", "object", "details"],
                [
                    [
                        e.seq,
                        e.ts[:23],
                        e.actor,
                        e.tenant or "",
                        e.action,
                        e.object or "",
                        json.dumps(e.details)[:80],
                    ]
                    for e in events
                ],
            )
        ),
    )


@audit_app.command("checkpoint")
@command
def audit_checkpoint(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Sign a checkpoint of the current head now."""
    ws = Workspace.open(workspace)
    try:
        seq = ws.audit.checkpoint()
    finally:
        ws.conn.close()
    emit(as_json, {"seq": seq}, lambda: out.print(f"signed checkpoint at event {seq}"))


# -- verification ----------------------------------------------------------------------------


@verify_app.command("isolation")
@command
def verify_isolation(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Run the isolation attack suite; exit non-zero if any attack is not blocked."""
    from silolearn.verification import run_isolation_suite

    with opened(workspace) as ws:
        results = run_isolation_suite(ws)
    rows = [r.to_dict() for r in results]
    emit(
        as_json,
        {"blocked": all(r.blocked for r in results), "attacks": rows},
        lambda: out.print(
            _table(
                "isolation attacks",
                ["attack", "blocked", "how"],
                [[r.name, "yes" if r.blocked else "[bold red]NO[/]", r.evidence] for r in results],
            )
        ),
    )
    if not all(r.blocked for r in results):
        raise typer.Exit(8)
