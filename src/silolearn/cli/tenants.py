"""Commands: `init`, `tenant ...` (create, list, show, health, quarantine, release, policy,
delete), `keys rotate`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _labels_table,
    _print_label_warnings,
    _table,
    app,
    command,
    emit,
    keys_app,
    opened,
    out,
    tenant_app,
)
from silolearn.errors import (
    InvalidInput,
)
from silolearn.workspace import Workspace

# -- init ------------------------------------------------------------------------------------


@app.command()
@command
def init(
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    sealed: Annotated[
        bool, typer.Option(help="Seal the keyring with the passphrase in $SILOLEARN_PASSPHRASE.")
    ] = False,
) -> None:
    """Create a workspace: config, database, key store, blob directory."""
    ws = Workspace.init(workspace, sealed=sealed)
    ws.close()
    payload = {"workspace": str(ws.path.resolve()), "sealed": sealed}
    emit(as_json, payload, lambda: out.print(f"initialised workspace at {ws.path.resolve()}"))


# -- tenants ---------------------------------------------------------------------------------


@tenant_app.command("create")
@command
def tenant_create(
    name: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    pii_policy: Annotated[
        str | None, typer.Option(help="redact | tokenize | reject [default: from config]")
    ] = None,
) -> None:
    """Create a tenant with its own data key."""
    with opened(workspace) as ws:
        info = ws.create_tenant(name, pii_policy=pii_policy)
    emit(as_json, info.to_dict(), lambda: out.print(f"created tenant {info.name} ({info.id})"))


@tenant_app.command("list")
@command
def tenant_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List tenants with their record counts."""
    with opened(workspace) as ws:
        rows = [ws.tenant(t.name).show() for t in ws.tenants.list()]
    emit(as_json, rows, lambda: out.print(_tenant_table(rows)))


def _tenant_table(rows: list[dict[str, Any]]) -> Table:
    return _table(
        "tenants",
        ["name", "status", "train", "eval", "quarantined", "blobs", "pii", "key v", "created"],
        [
            [
                r["name"],
                r["status"],
                r["train"],
                r["eval"],
                r["quarantined"],
                r["blobs"],
                r["pii_policy"],
                r["dek_version"],
                r["created_at"][:19],
            ]
            for r in rows
        ],
    )


@tenant_app.command("show")
@command
def tenant_show(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Show one tenant."""
    with opened(workspace) as ws:
        row = ws.tenant(name).show()
    emit(
        as_json,
        row,
        lambda: out.print(_table(name, ["field", "value"], list(map(list, row.items())))),
    )


@tenant_app.command("health")
@command
def tenant_health(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Per label: train, eval and quarantined records, shares, and labels missing from
    training."""
    from silolearn.ingest.health import tenant_health as health

    with opened(workspace) as ws:
        report = health(ws, name)

    def human() -> None:
        out.print(_labels_table(f"health {name}", report["labels"]))
        unlabelled = report["unlabelled"]
        if unlabelled["train"] or unlabelled["quarantined"]:
            out.print(
                f"unlabelled: {unlabelled['train']} train, {unlabelled['quarantined']} quarantined"
            )
        _print_label_warnings(report["warnings"])

    emit(as_json, report, human)


@tenant_app.command("quarantine")
@command
def tenant_quarantine(
    name: str,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop all ingestion and training of a tenant until released."""
    if not reason.strip():
        raise typer.BadParameter("--reason must not be empty")
    with opened(workspace) as ws:
        info = ws.tenant(name).quarantine(reason)
    emit(as_json, info.to_dict(), lambda: out.print(f"tenant {name} quarantined: {reason}"))


@tenant_app.command("release")
@command
def tenant_release(name: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Lift a quarantine."""
    with opened(workspace) as ws:
        info = ws.tenant(name).release()
    emit(as_json, info.to_dict(), lambda: out.print(f"tenant {name} released"))


@tenant_app.command("policy")
@command
def tenant_policy(
    name: str,
    pii: Annotated[str, typer.Option(help="redact | tokenize | reject")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's PII minimisation policy."""
    with opened(workspace) as ws:
        info = ws.tenants.set_pii_policy(name, pii)
    emit(as_json, info.to_dict(), lambda: out.print(f"tenant {name}: PII policy {pii}"))


@tenant_app.command("delete")
@command
def tenant_delete(
    name: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    shred: Annotated[
        bool, typer.Option("--shred", help="Destroy the tenant's keys, rows and blobs.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Crypto-shred a tenant: nothing of it stays readable, backups included."""
    if not shred:
        raise InvalidInput("deleting a tenant is crypto-shredding: pass --shred (and --yes)")
    if not yes:
        raise InvalidInput("shredding cannot be undone: pass --yes to confirm")
    with opened(workspace) as ws:
        result = ws.tenants.shred(name)
    emit(as_json, result, lambda: out.print(f"tenant {name} shredded: {result['deleted']}"))


# -- keys ------------------------------------------------------------------------------------


@keys_app.command("rotate")
@command
def keys_rotate(
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    tenant: Annotated[str | None, typer.Option(help="Tenant whose data key to replace.")] = None,
    data_key: Annotated[
        bool,
        typer.Option("--data-key", help="Re-encrypt the tenant's objects under a new data key."),
    ] = False,
) -> None:
    """Re-wrap all data keys under new KEKs, or (--tenant T --data-key) re-key a tenant."""
    if data_key != (tenant is not None):
        raise InvalidInput("use --tenant and --data-key together, or neither")
    with opened(workspace) as ws:
        result = ws.tenants.rotate_data_key(tenant) if tenant else ws.tenants.rotate_keks()
    emit(as_json, result, lambda: out.print(f"rotated: {result}"))
