"""Commands: `ingest`, `eval ...` (register, list), `contamination report`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _labels_table,
    _print_label_warnings,
    _table,
    app,
    command,
    contamination_app,
    emit,
    err,
    eval_app,
    opened,
    out,
)
from silolearn.errors import (
    InvalidInput,
)

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
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="Where the labels came from: bulk, or human (a person gave each one).",
        ),
    ] = "bulk",
) -> None:
    """Ingest records into a tenant through the gateway."""
    from silolearn.ingest.gateway import Gateway
    from silolearn.records import LabelOrigin, LabelSource

    if source not in ("bulk", "human"):
        raise InvalidInput(f"unknown label source {source[:40]!r}: use bulk or human")
    origin = LabelOrigin(LabelSource(source), reviewed=source == "human")
    with opened(workspace) as ws:
        gateway = Gateway(ws)
        if as_json or file == "-" or not sys.stderr.isatty():
            report = gateway.ingest(tenant, file, strict=strict, fmt=fmt, origin=origin)
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
                    origin=origin,
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
