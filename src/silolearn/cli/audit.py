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
    err,
    opened,
    out,
    verify_app,
)
from silolearn.errors import (
    AuditChainBroken,
    IntegrityError,
    InvalidInput,
)
from silolearn.workspace import Workspace

# -- audit -----------------------------------------------------------------------------------


@audit_app.command("verify")
@command
def audit_verify(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Check the hash chain, every signed checkpoint and the head, and every privacy-ledger,
    adapter-version and federation row against the digest the chain holds for it (exit 8,
    one line per finding: which table, which row, what is wrong)."""
    from silolearn.audit.rows import verify_rows
    from silolearn.federation.lineage import BOUND_TABLES as FEDERATION_TABLES
    from silolearn.privacy.ledger import BOUND_TABLES
    from silolearn.registry.versions import VERSIONS_TABLE

    ws = Workspace.open(workspace)
    try:
        report, broken = None, None
        try:
            report = ws.audit.verify()
        except AuditChainBroken as exc:
            broken = exc
        rows = verify_rows(
            ws.conn,
            (*BOUND_TABLES, VERSIONS_TABLE, *FEDERATION_TABLES),
            signed_seq=ws.audit.signed_seq(),
        )
    finally:
        ws.conn.close()
    findings = [f.to_dict() for f in rows.findings]
    if broken is not None:
        chain = {"kind": "chain", "table": "audit_events", "row": f"seq={broken.seq}"}
        findings.insert(0, {**chain, "seq": broken.seq, "message": broken.message})
    payload = {
        **(report.to_dict() if report else {"seq": None if broken is None else broken.seq}),
        "ok": not findings,
        "rows": rows.rows,
        "signed_seq": rows.signed_seq,
        "findings": findings,
    }
    if findings:
        if as_json:
            print(json.dumps({**payload, "message": findings[0]["message"]}, sort_keys=True))
        elif len(findings) > 1:
            for f in findings:
                err.print(f"[bold red]{f['kind']}[/] {f['message']}", soft_wrap=True)
        more = f" ({len(findings) - 1} more above)" if len(findings) > 1 else ""
        error = AuditChainBroken if broken is not None else IntegrityError
        seq = None if broken is None else broken.seq
        raise error(findings[0]["message"] + more, seq=seq, findings=findings)
    assert report is not None
    emit(
        as_json,
        payload,
        lambda: out.print(
            f"audit log OK: {report.events} events, {report.checkpoints} signed checkpoints, "
            f"head {report.head_hash[:16]}; bound rows OK: "
            + ", ".join(f"{n} {table}" for table, n in rows.rows.items())
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
    """Show audit events. A tenant's event details are sealed under its metadata key; they
    show decrypted, or as sealed once the tenant is shredded."""
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
                        "sealed" if e.sealed else json.dumps(e.details)[:80],
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


@verify_app.command("metadata")
@command
def verify_metadata(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Scan every file the workspace stores (database, WAL, blobs, audit head, keyring) for
    any tenant's label names and per-class metric keys in clear; exit 8 if one is found."""
    from silolearn.verification import scan_metadata

    with opened(workspace) as ws:
        scan = scan_metadata(ws)
    payload = scan.to_dict()

    def human() -> None:
        labels = ", ".join(f"{n} of {t}" for t, n in scan.labels.items()) or "none"
        out.print(
            f"scanned {len(scan.files)} files ({scan.size:,} bytes) for label names ({labels}) "
            "and per-class metric keys"
        )
        if scan.unscanned:
            out.print("not scanned (not stored by silolearn): " + ", ".join(scan.unscanned))
        if scan.hits:
            out.print(
                _table(
                    "in clear",
                    ["file", "offset", "found", "tenant", "context"],
                    [[h.file, h.offset, h.needle, h.tenant or "", h.context] for h in scan.hits],
                )
            )
        else:
            out.print("no label name and no per-class metric key in clear")

    if scan.hits:
        if as_json:
            print(json.dumps(payload, sort_keys=True))
        else:
            human()
        raise IntegrityError(
            f"{len(scan.hits)} label names or per-class metric keys found in clear",
            hits=len(scan.hits),
        )
    emit(as_json, payload, human)
