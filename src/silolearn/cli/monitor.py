"""Commands: `monitor show T` (what the monitors found about a tenant: drift of what it
serves, performance from feedback, and their newest signals)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from silolearn.cli.base import JsonOpt, WorkspaceOpt, _table, app, command, emit, opened, out
from silolearn.monitoring.signals import Signals

monitor_app = typer.Typer(
    help="What the monitors found: drift of what a tenant serves, its performance, signals.",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@monitor_app.command("show")
@command
def monitor_show(
    tenant: str,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Signals shown.")] = 20,
) -> None:
    """The tenant's monitors (each section is one monitor's state) and its newest signals,
    confirmed or not."""
    with opened(workspace) as ws:
        signals = Signals(ws).since(tenant, _EPOCH, confirmed=False)[-limit:]
        view: dict[str, Any] = {
            "tenant": tenant,
            "signals": [s.to_dict() for s in reversed(signals)],
        }
    emit(as_json, view, lambda: _print_view(view))


def _print_view(view: dict[str, Any]) -> None:
    out.print(_signals_table(f"signals of {view['tenant']} (newest first)", view["signals"]))


def _signals_table(title: str, signals: list[dict[str, Any]]) -> Any:
    return _table(
        title,
        ["at", "kind", "version", "statistic", "threshold", "confirmed"],
        [
            [
                s["at"],
                s["kind"],
                s["version"] if s["version"] is not None else "-",
                f"{s['statistic']:.4g}",
                f"{s['threshold']:.4g}",
                "yes" if s["confirmed"] else "no",
            ]
            for s in signals
        ],
    )
