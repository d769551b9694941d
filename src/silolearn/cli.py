"""The command line: ``silolearn --help``.

Every command takes ``--workspace DIR`` (default ``$SILOLEARN_WORKSPACE`` or ``./.silolearn``)
and ``--json`` (the result as JSON on stdout). Errors go to stderr with the exit code of
their type (see ``silolearn.errors``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from silolearn.errors import (
    AuditChainBroken,
    ConflictError,
    InvalidInput,
    NotFoundError,
    SiloError,
)
from silolearn.workspace import Workspace

app = typer.Typer(
    name="silolearn",
    help="Continuous learning per tenant, with isolation, encryption, audit and privacy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(
    help="Create, inspect, quarantine and shred tenants.", no_args_is_help=True
)
keys_app = typer.Typer(help="Key rotation.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
verify_app = typer.Typer(help="Attack suites against the workspace.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapter versions: list, promote, roll back.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluation sets: per tenant or workspace-wide.", no_args_is_help=True)
contamination_app = typer.Typer(help="The train/eval near-duplicate filter.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(verify_app, name="verify")
app.add_typer(eval_app, name="eval")
app.add_typer(adapters_app, name="adapters")
app.add_typer(contamination_app, name="contamination")
privacy_app = typer.Typer(
    help="Differential privacy: budgets, the ledger, the accuracy-privacy sweep.",
    no_args_is_help=True,
)
shared_app = typer.Typer(
    help="The shared layer: trained by DP-SGD from the tenants that join it.",
    no_args_is_help=True,
)
app.add_typer(privacy_app, name="privacy")
app.add_typer(shared_app, name="shared")
gates_app = typer.Typer(
    help="Release gates: the policy, re-audits with automatic rollback, divergence checks.",
    no_args_is_help=True,
)
incidents_app = typer.Typer(
    help="Incidents opened by failed gates and checks.", no_args_is_help=True
)
app.add_typer(gates_app, name="gates")
app.add_typer(incidents_app, name="incidents")

# piped output (CI logs, files) gets room for the round tables instead of 80 columns
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        "-w",
        help="Workspace directory [default: $SILOLEARN_WORKSPACE or ./.silolearn]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

F = TypeVar("F", bound=Callable[..., Any])


def command(func: F) -> F:
    """Turn typed errors into a message on stderr and the error's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SiloError as exc:
            _audit_refusal(func.__name__, kwargs.get("workspace"), exc)
            if kwargs.get("as_json"):
                print(json.dumps(exc.to_dict()), file=sys.stderr)
            else:
                err.print(f"[bold red]error[/] ({exc.code}): {exc.message}", highlight=False)
                for item in exc.details.get("errors", [])[:20]:
                    err.print(f"  line {item['line']}: {item['reason']}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _audit_refusal(command_name: str, workspace: Path | None, exc: SiloError) -> None:
    """Refused requests are audited too. Access denials are audited where they happen;
    integrity, config and key errors mean the workspace itself is not to be written."""
    if not isinstance(exc, InvalidInput | NotFoundError | ConflictError):
        return
    try:
        ws = Workspace.open(workspace)
    except SiloError:
        return
    try:
        ws.audit.append(
            "request.refused",
            obj=command_name,
            details={"error": exc.code, "message": exc.message[:300]},
        )
    finally:
        ws.close()


@contextmanager
def opened(workspace: Path | None) -> Iterator[Workspace]:
    ws = Workspace.open(workspace)
    try:
        yield ws
    finally:
        ws.close()


def emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        human()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row])
    return table


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


def _labels_table(title: str, labels: dict[str, dict[str, Any]]) -> Table:
    """Per-label counts: the columns are whichever counts the rows carry, in their order."""
    columns = [k for k in next(iter(labels.values()), {}) if k != "warnings"]
    rows = [
        [label, *(f"{c[k]:.1%}" if k.endswith("_share") else c[k] for k in columns)]
        + ([", ".join(c["warnings"]) or "-"] if "warnings" in c else [])
        for label, c in labels.items()
    ]
    extra = ["warnings"] if any("warnings" in c for c in labels.values()) else []
    return _table(title, ["label", *columns, *extra], rows)


def _print_label_warnings(warnings: list[dict[str, Any]]) -> None:
    for w in warnings:
        err.print(f"[bold yellow]warning[/] ({w['kind']}): {w['message']}", highlight=False)


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


# -- ingestion -------------------------------------------------------------------------------


@app.command()
@command
def ingest(
    tenant: str,
    file: Annotated[str, typer.Argument(help="JSON lines or CSV file; '-' for stdin.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Store nothing if any line is invalid.")
    ] = False,
    fmt: Annotated[
        str | None, typer.Option("--format", help="jsonl | csv [default: from the extension]")
    ] = None,
) -> None:
    """Ingest records into a tenant through the gateway."""
    from silolearn.ingest.gateway import Gateway

    with opened(workspace) as ws:
        gateway = Gateway(ws)
        if as_json or file == "-" or not sys.stderr.isatty():
            report = gateway.ingest(tenant, file, strict=strict, fmt=fmt)
        else:
            with Progress(
                TextColumn("ingesting {task.description}"),
                BarColumn(),
                TextColumn("{task.completed} lines"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as progress:
                task = progress.add_task(tenant, total=None)
                report = gateway.ingest(
                    tenant,
                    file,
                    strict=strict,
                    fmt=fmt,
                    progress=lambda n: progress.advance(task, n),
                )
    payload = report.to_dict()

    def human() -> None:
        keys = [
            "accepted",
            "rejected",
            "train",
            "eval",
            "duplicates",
            "contaminated",
            "quarantined",
            "redactions",
        ]
        out.print(_table(f"ingest {tenant}", keys, [[payload[k] for k in keys]]))
        if payload["labels"]:
            out.print(_labels_table(f"ingest {tenant} by label", payload["labels"]))
        for item in payload["errors"][:50]:
            err.print(f"  line {item['line']}: {item['reason']}", highlight=False)
        _print_label_warnings(payload["warnings"])

    emit(as_json, payload, human)


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


# -- adapters ----------------------------------------------------------------------------------


def _registry(ws: Workspace, tenant: str) -> Any:
    from silolearn.registry.versions import AdapterRegistry
    from silolearn.storage.scope import Purpose

    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))


def _versions_table(tenant: str, rows: list[dict[str, Any]]) -> Table:
    return _table(
        f"adapters of {tenant}",
        ["version", "status", "kind", "parent", "accuracy", "macro-F1", "sha256", "created"],
        [
            [
                r["version"],
                r["status"],
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
        rows = [v.to_dict() for v in _registry(ws, tenant).list()]
    emit(as_json, rows, lambda: out.print(_versions_table(tenant, rows)))


@adapters_app.command("show")
@command
def adapters_show(
    tenant: str,
    version: Annotated[int, typer.Argument(help="Version number.")],
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one version: status, gate verdicts (at its decision and every re-audit since),
    metrics and lineage."""
    from silolearn.pipeline import list_gate_runs

    with opened(workspace) as ws:
        row = _registry(ws, tenant).get(version).to_dict()
        row["gate_runs"] = list_gate_runs(ws, tenant, version)

    def human() -> None:
        out.print(f"{tenant} v{version}: {row['status']} ({row['kind']}, sha256 {row['sha256']})")
        gates = (row.get("decision") or {}).get("gates") or []
        if gates:
            out.print(_gates_table(f"gates at its decision: {row['decision']['reason']}", gates))
        for run in row["gate_runs"]:
            if run["trigger"] in ("rerun", "restore"):
                out.print(_gates_table(f"{run['trigger']} {run['created_at']}", run["verdicts"]))
        rest = {k: v for k, v in row.items() if k not in ("gate_runs",)}
        out.print_json(json.dumps(rest, default=str))

    emit(as_json, row, human)


def _gates_table(title: str, verdicts: list[dict[str, Any]]) -> Table:
    return _table(
        title,
        ["gate", "passed", "severity", "reason"],
        [
            [
                v["gate"],
                "yes" if v["passed"] else "NO",
                v.get("severity") or "",
                v["reason"] if v.get("applicable", True) else f"({v['reason']})",
            ]
            for v in verdicts
        ],
    )


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
    emit(as_json, row, lambda: out.print(f"{tenant}: v{version} is active"))


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


# -- evaluation sets and contamination ---------------------------------------------------------


@eval_app.command("register")
@command
def eval_register(
    file: Annotated[str, typer.Argument(help="JSON lines or CSV file; '-' for stdin.")],
    name: Annotated[
        str | None,
        typer.Option(help="Name of the eval set (required; with --golden: 'golden')."),
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    tenant: Annotated[
        str | None, typer.Option(help="Register into this tenant's eval store only.")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl | csv")] = None,
    golden: Annotated[
        bool,
        typer.Option(
            "--golden",
            help="Register the tenant's golden suite: labelled must-pass examples, kept "
            "apart from the regular eval set (needs --tenant).",
        ),
    ] = False,
) -> None:
    """Register an eval set: workspace-wide (every tenant) or, with --tenant, one tenant's.

    Stored training records that copy any item are moved to quarantine."""
    from silolearn.ingest.benchmarks import register_benchmark
    from silolearn.ingest.gateway import Gateway

    if golden and tenant is None:
        raise InvalidInput("--golden needs --tenant: a golden suite belongs to one tenant")
    if name is None:
        if not golden:
            raise InvalidInput("--name is required (it defaults to 'golden' only with --golden)")
        name = "golden"
    suite = "golden" if golden else None
    with opened(workspace) as ws:
        if tenant is None:
            result = register_benchmark(ws, name, file, fmt=fmt)
        else:
            report = Gateway(ws).ingest(
                tenant, file, strict=True, fmt=fmt, all_to_eval=True, suite=suite
            )
            result = {"benchmark": name, "tenant": tenant, **report.to_dict()}
            details: dict[str, Any] = {"records": report.eval}
            if suite is not None:
                details["suite"] = suite
            ws.audit.append("benchmark.register", tenant=tenant, obj=name, details=details)

    def human() -> None:
        out.print(f"registered eval set {name}: {result}")
        _print_label_warnings(result.get("warnings", []))

    emit(as_json, result, human)


@eval_app.command("list")
@command
def eval_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """List the workspace-wide eval sets."""
    from silolearn.ingest.benchmarks import list_benchmarks

    with opened(workspace) as ws:
        rows = list_benchmarks(ws)
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table("eval sets", ["name", "records", "created"], [list(r.values()) for r in rows])
        ),
    )


@contamination_app.command("report")
@command
def contamination_report(
    tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False
) -> None:
    """Counts, thresholds and recent matches of a tenant's contamination filter."""
    from silolearn.ingest.contamination import contamination_report as build

    with opened(workspace) as ws:
        report = build(ws, tenant)

    def human() -> None:
        summary = {k: v for k, v in report.items() if k not in ("matches", "index")}
        out.print(
            _table(f"contamination {tenant}", ["field", "value"], list(map(list, summary.items())))
        )
        out.print(
            _table(
                "recent matches",
                ["record", "eval seq", "similarity", "source", "direction"],
                [
                    [
                        m["object"],
                        m.get("eval_seq", ""),
                        m["similarity"],
                        m.get("source", ""),
                        m["direction"],
                    ]
                    for m in report["matches"]
                ],
            )
        )

    emit(as_json, report, human)


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
        for w in r.warnings:
            err.print(f"[yellow]warning[/]: {r.tenant}: {w['message']}")
        if r.explanation:
            out.print(r.explanation)


def _default_workspace() -> Path:
    from silolearn.workspace import default_path

    return default_path()


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
) -> None:
    """Run the main job on real data: four tenants, records arriving in rounds, each round
    trained in isolated processes, evaluated, promoted or rejected; writes an HTML report."""
    from silolearn.demo import run_demo

    result = run_demo(
        workspace,
        per_tenant=per_tenant,
        rounds=rounds,
        console=None if as_json else out,
        report=report,
    )
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))


# -- privacy ---------------------------------------------------------------------------------


def _privacy_scope(ws: Workspace, tenant: str | None, shared: bool) -> tuple[str, str | None]:
    from silolearn.privacy.ledger import SHARED, tenant_scope

    if shared == (tenant is not None):
        raise InvalidInput("name one tenant, or use --shared for the shared model")
    if shared:
        return SHARED, None
    assert tenant is not None
    return tenant_scope(ws.tenants.get(tenant).id), tenant


TenantArg = Annotated[
    str | None,
    typer.Argument(help="Tenant (or --shared for the shared model).", show_default=False),
]
SharedOpt = Annotated[bool, typer.Option("--shared", help="The shared model's scope.")]


@privacy_app.command("budget")
@command
def privacy_budget(
    tenant: TenantArg = None,
    epsilon: Annotated[float | None, typer.Option(help="Lifetime epsilon budget.")] = None,
    delta: Annotated[float | None, typer.Option(help="The scope's delta.")] = None,
    shared: SharedOpt = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set (or show) a scope's privacy budget: epsilon at delta, over all its DP runs."""
    with opened(workspace) as ws:
        scope, name = _privacy_scope(ws, tenant, shared)
        ledger = ws.ledger()
        if epsilon is not None or delta is not None:
            ledger.set_policy(scope, tenant=name, epsilon_budget=epsilon, delta=delta)
        summary = ledger.summary(scope)
    summary.pop("events")
    emit(as_json, summary, lambda: out.print(_ledger_line(tenant or "shared", summary)))


@privacy_app.command("policy")
@command
def privacy_policy(
    tenant: str,
    mode: Annotated[str, typer.Option(help="dp (DP-SGD required) or off.")],
    epsilon: Annotated[
        float | None, typer.Option(help="Target epsilon of each run under this policy.")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's privacy mode: with dp, every training run of its adapter is DP-SGD."""
    from silolearn.privacy.ledger import tenant_scope

    with opened(workspace) as ws:
        scope = tenant_scope(ws.tenants.get(tenant).id)
        policy = ws.ledger().set_policy(scope, tenant=tenant, mode=mode, run_epsilon=epsilon)
    emit(
        as_json,
        policy.to_dict(),
        lambda: out.print(
            f"tenant {tenant}: privacy mode {policy.mode}, {policy.run_epsilon:g} per run, "
            f"budget {policy.epsilon_budget:g} at delta {policy.delta:g}"
        ),
    )


def _ledger_line(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name}: epsilon spent {s['epsilon_spent']:.3f} of {s['epsilon_budget']:g} "
        f"(delta {s['delta']:g}, {s['accountant']}; RDP bound {s['epsilon_spent_rdp_bound']:.3f}), "
        f"remaining {s['epsilon_remaining']:.3f}; mode {s['mode']}, {s['runs']} run(s)"
    )


@privacy_app.command("ledger")
@command
def privacy_ledger(
    tenant: TenantArg = None,
    shared: SharedOpt = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A scope's DP events, the epsilon they spend together, and what remains."""
    with opened(workspace) as ws:
        scope, _ = _privacy_scope(ws, tenant, shared)
        summary = ws.ledger().summary(scope)

    def human() -> None:
        out.print(
            _table(
                f"privacy ledger of {tenant or 'the shared model'}",
                ["#", "run", "purpose", "q", "sigma", "steps", "epsilon after", "at"],
                [
                    [
                        e["id"],
                        e["run_id"],
                        e["purpose"],
                        f"{e['sampling_rate']:.4f}",
                        f"{e['noise_multiplier']:.3f}",
                        e["steps"],
                        f"{e['epsilon_after']:.3f}",
                        e["created_at"][:19],
                    ]
                    for e in summary["events"]
                ],
            )
        )
        out.print(_ledger_line(tenant or "shared", summary))

    emit(as_json, summary, human)


@privacy_app.command("sweep")
@command
def privacy_sweep(
    tenant: str,
    epsilons: Annotated[str, typer.Option(help="Target epsilons, comma-separated.")] = "1,2,4,8",
    adapter: Annotated[str | None, typer.Option("--adapter", help="head or lora")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed [default: training.seed].")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy and macro-F1 against epsilon: one DP candidate per epsilon (and a
    non-private one), never promoted; their cost is charged to the tenant's ledger."""
    from silolearn.pipeline import Trainer

    try:
        targets = [float(e) for e in epsilons.split(",") if e.strip()]
    except ValueError:
        raise InvalidInput(f"--epsilons {epsilons!r}: give numbers like 1,2,4,8") from None
    with opened(workspace) as ws:
        report = Trainer(ws).sweep(tenant, targets, kind=adapter, seed=seed)
    emit(as_json, report, lambda: out.print(_sweep_table(report)))


def _sweep_table(report: dict[str, Any]) -> Table:
    rows = []
    for r in report["results"]:
        rows.append(
            [
                "non-private" if r["epsilon"] is None else f"{r['epsilon']:g}",
                f"v{r['version']}",
                "" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}",
                r["steps"],
                f"{r['accuracy']:.3f}",
                f"{r['macro_f1']:.3f}",
                "" if r["clipped"] is None else f"{r['clipped']:.0%}",
                "; ".join(w.split(":")[0] for w in r["warnings"]),
            ]
        )
    charged = report.get("charged") or {}
    return _table(
        f"accuracy-privacy sweep of {report['tenant']} ({report['records']} records, "
        f"{report['eval_records']} eval records, delta {report['delta']:g}; charged "
        f"epsilon {charged.get('epsilon_before', 0):.2f} → {charged.get('epsilon_after', 0):.2f})",
        ["epsilon", "version", "sigma", "steps", "accuracy", "macro-F1", "clipped", "warnings"],
        rows,
    )


# -- the shared layer ------------------------------------------------------------------------


@shared_app.command("join")
@command
def shared_join(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Opt a tenant in: it contributes to the shared layer and its head trains on it."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        member = SharedStore(ws).join(tenant)
    emit(as_json, member, lambda: out.print(f"tenant {tenant} joined the shared layer"))


@shared_app.command("leave")
@command
def shared_leave(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Opt a tenant out: its next round trains a head without the shared layer."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        SharedStore(ws).leave(tenant)
    emit(as_json, {"tenant": tenant}, lambda: out.print(f"tenant {tenant} left the shared layer"))


@shared_app.command("pin")
@command
def shared_pin(
    tenant: str,
    version: Annotated[
        int | None, typer.Option(help="Shared version to pin [default: follow the latest].")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin the shared version a member's next rounds train on."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        member = SharedStore(ws).pin(tenant, version)
    emit(
        as_json,
        member,
        lambda: out.print(
            f"tenant {tenant} pinned to shared "
            + ("the latest version" if version is None else f"v{version}")
        ),
    )


@shared_app.command("train")
@command
def shared_train(
    tenants: Annotated[
        str | None, typer.Option(help="Members taking part, comma-separated [default: all].")
    ] = None,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon of this run.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initialisation.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One DP-SGD run of the shared layer: each member's gradients in its own process,
    noise added once by the coordinator, charged to the shared ledger first."""
    from silolearn.learning.shared import SharedTrainer

    names = None if tenants is None else [t.strip() for t in tenants.split(",") if t.strip()]
    with opened(workspace) as ws:
        version = SharedTrainer(ws).train(names, epsilon=epsilon, seed=seed)
    payload = version.to_dict()

    def human() -> None:
        privacy = version.lineage["privacy"]
        plan, charge = privacy["plan"], privacy["charge"]
        out.print(
            f"shared v{version.version}: {len(version.lineage['members'])} members, "
            f"{plan['records']} records, {plan['steps']} steps at q={plan['sampling_rate']:.4f}, "
            f"sigma={plan['noise_multiplier']:.3f}; epsilon {charge['epsilon_before']:.3f} → "
            f"{charge['epsilon_after']:.3f} of {charge['epsilon_budget']:g}"
        )
        for warning in privacy["warnings"]:
            out.print(f"[yellow]warning[/]: {warning}")

    emit(as_json, payload, human)


@shared_app.command("list")
@command
def shared_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Shared versions and members."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        store = SharedStore(ws)
        payload = {
            "versions": [v.to_dict() for v in store.versions()],
            "members": store.members(),
        }

    def human() -> None:
        out.print(
            _table(
                "shared versions",
                ["version", "members", "records", "epsilon after", "trunk sha256"],
                [
                    [
                        f"v{v['version']}",
                        ", ".join(m["tenant"] for m in v["lineage"]["members"]),
                        v["lineage"]["privacy"]["plan"]["records"],
                        f"{v['lineage']['privacy']['charge']['epsilon_after']:.3f}",
                        v["trunk_sha256"][:16],
                    ]
                    for v in payload["versions"]
                ],
            )
        )
        out.print(
            _table(
                "members",
                ["tenant", "joined", "pinned"],
                [
                    [m["tenant"], m["joined_at"][:19], m["pinned_version"] or "latest"]
                    for m in payload["members"]
                ],
            )
        )

    emit(as_json, payload, human)


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
