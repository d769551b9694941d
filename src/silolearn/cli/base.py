"""The command line's common ground: the root app and its command groups, the options
every command takes, typed errors into exit codes, output helpers.

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
from rich.table import Table

from silolearn.errors import (
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


def _default_workspace() -> Path:
    from silolearn.workspace import default_path

    return default_path()


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
