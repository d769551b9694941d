"""Commands: `monitor show T` (what the monitors found about a tenant: drift of what it
serves, performance from feedback, and their newest signals)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from silolearn.cli.base import JsonOpt, WorkspaceOpt, _table, app, command, emit, opened, out
from silolearn.monitoring.feedback import PerformanceMonitor
from silolearn.monitoring.signals import Signals
from silolearn.monitoring.watch import drift_view

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
        signals = Signals(ws).since(tenant, _EPOCH, confirmed=False, newest=limit)
        view: dict[str, Any] = {
            "tenant": tenant,
            "drift": drift_view(ws, tenant, limit=limit),
            "signals": [s.to_dict() for s in reversed(signals)],
            "performance": PerformanceMonitor(ws).report(tenant)["versions"],
        }
    emit(as_json, view, lambda: _print_view(view))


def _print_view(view: dict[str, Any]) -> None:
    _print_drift(view["drift"])
    _print_performance(view["tenant"], view["performance"])
    out.print(_signals_table(f"signals of {view['tenant']} (newest first)", view["signals"]))


def _print_drift(drift: dict[str, Any]) -> None:
    policy = drift["policy"]
    rows = []
    for kind, signal in drift["latest"].items():
        if signal is None:
            rows.append([kind, "-", "-", "-", "no window tested yet"])
            continue
        evidence = signal["evidence"]
        detail = (
            f"p = {evidence['p_value']:.4g} at level {evidence['alpha']:.4g}"
            if "p_value" in evidence
            else f"MMD^2 {signal['statistic']:.4g} vs {signal['threshold']:.4g}"
        )
        state = "DRIFT" if signal["confirmed"] else "no drift"
        if evidence.get("test") == "none":  # no honest reference for this version
            state, detail = "not tested", str(evidence.get("reason", ""))
        rows.append([kind, f"v{signal['version']}", signal["at"], state, detail])
    title = (
        f"drift of {drift['tenant']} (window {policy['window']}, one false alarm per "
        f"{policy['ert']:g} served expected, {drift['kept_predictions']} served kept)"
    )
    out.print(_table(title, ["test", "version", "at", "state", "latest"], rows))
    if drift["slices"]:
        _print_slices(drift)
    out.print(_signals_table("drift alarms (newest first)", drift["alarms"]))


def _print_slices(drift: dict[str, Any]) -> None:
    """Each slice's newest window test: DRIFT when it alarmed while the aggregate held."""
    rows = [
        [
            s["field"],
            s["value"],
            s["test"].split(",")[0],
            f"v{s['version']}",
            "DRIFT" if s["confirmed"] else ("with aggregate" if s["drift"] else "no drift"),
            f"p = {s['p_value']:.4g} at level {s['alpha']:.4g}",
            s["reference"],
            s["windows"],
            s["alarms"],
        ]
        for s in drift["slices"]
    ]
    columns = ["field", "value", "test", "version", "state", "latest", "vs", "windows", "alarms"]
    fields = ", ".join(drift["policy"]["slice_fields"]) or "-"
    out.print(_table(f"drift of {drift['tenant']} per slice ({fields})", columns, rows))


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


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_performance(tenant: str, versions: list[dict[str, Any]]) -> None:
    """Performance per version: measured from feedback, and estimated from what it served
    (an estimate, marked so)."""
    rows = []
    for entry in versions:
        fed, guess, chart = entry["feedback"], entry["estimate"], entry["feedback"]["chart"]
        state = (
            f"armed, {chart['level']:.0%} of limit, {chart['alarms']} alarms"
            if chart["armed"]
            else f"burn-in {chart['burn_in']['items']}"
        )
        estimated = (
            f"~{guess['accuracy']:.3f} ({'reliable' if guess['reliable'] else 'unreliable'})"
            if guess.get("accuracy") is not None
            else "-"
        )
        rows.append(
            [
                f"v{entry['version']}",
                fed["items"],
                _share(fed["accuracy"]),
                _share(fed["macro_f1"]),
                state,
                guess["served"],
                estimated,
            ]
        )
    columns = ["version", "feedback", "accuracy", "macro-F1", "chart", "served", "estimate"]
    out.print(_table(f"performance of {tenant}", columns, rows))
    slices = [
        [
            f"v{e['version']}",
            s["field"],
            s["value"],
            s["items"],
            _share(s["accuracy"]),
            "armed" if s["chart"]["armed"] else "burn-in",
            s["chart"]["alarms"],
        ]
        for e in versions
        for s in e["feedback"]["slices"]
    ]
    if slices:
        columns = ["version", "field", "value", "feedback", "accuracy", "chart", "alarms"]
        out.print(_table(f"slices of {tenant}", columns, slices))
