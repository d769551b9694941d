"""The demo's HTML report: one self-contained file rendered from the service's Jinja2
templates (``service/templates/report*.html``, autoescaped), its charts drawn by Plotly from
the installed ``plotly`` package, inlined with the dashboard's drawing script (no CDN: the
file opens offline).

What it shows: a header (workspace, run time, the audit chain, the isolation suite), each
tenant's serving accuracy and macro-F1 after each round (rejected and failed rounds get
hollow markers: the previous version keeps serving), a table per round, the production
traffic sent through ``predict`` with its feedback and the service's ``/metrics``, the
versions, the differential-privacy section (ledgers, sweeps with a plot of accuracy
against epsilon, DP rounds, the shared layer) and the release gates. Every string from the
result is escaped by the templates; a figure's data is JSON (``tojson``), never markup; CSS
classes come from fixed sets; a Content-Security-Policy allows only the page's own two
scripts (by hash) as defence in depth.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import secrets
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined

from silolearn.service.dashboard import STATIC_FILES

__all__ = ["render_report", "write_report"]

TITLE = "silolearn demo report"
DASH = "\N{EM DASH}"
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#b07aa1",
    "#76b7b2",
    "#9c755f",
    "#ff9da7",
    "#edc948",
    "#bab0ac",
)
ROUND_STATUSES = frozenset({"active", "rejected", "failed"})
VERSION_STATUSES = frozenset({"active", "rejected", "failed", "retired", "candidate", "canary"})
MARKERS = {"active": "circle", "kept": "circle", "rejected": "circle-open", "failed": "square-open"}
"""What serves after a round: a promoted or kept version (filled), the previous version
after a rejected candidate (hollow circle) or a failed run (hollow square)."""
SWEEP_METRICS = (("accuracy", "accuracy", PALETTE[0]), ("macro_f1", "macro-F1", PALETTE[1]))

Row = Mapping[str, Any]


# -- input: whatever the result holds, read defensively ------------------------------------


def _num(value: object) -> float | None:
    """A finite number, or None for anything else (None, bools, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    return None if isinstance(value, bool) or not isinstance(value, int) else value


def _dicts(value: object) -> list[Row]:
    """The mappings in a list; anything else in the input is ignored."""
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: object) -> Row:
    return value if isinstance(value, Mapping) else {}


# -- filters the templates use --------------------------------------------------------------


def _fmt(spec: str, value: object) -> str:
    number = _num(value)
    return DASH if number is None else format(number, spec)


def fmt_share(value: object) -> str:
    """A fraction as a percentage, with a decimal below 10% (0.4% is not 0%)."""
    number = _num(value)
    if number is None:
        return DASH
    return f"{number:.1%}" if abs(number) < 0.1 else f"{number:.0%}"


def fmt_count(value: object) -> str:
    number = _int(value)
    return DASH if number is None else f"{number:,}"


def fmt_version(value: object) -> str:
    number = _int(value)
    return DASH if number is None else f"v{number}"


def fmt_text(value: object) -> str:
    missing = value is None or value == "" or isinstance(value, Undefined)
    return DASH if missing else str(value)


def fmt_target(value: object) -> str:
    """A swept epsilon: ``non-private`` for the candidate without DP."""
    return "non-private" if value is None else _fmt("g", value)


def status_class(status: object, allowed: frozenset[str] = VERSION_STATUSES) -> str:
    """A badge's class, from a fixed set (never from input)."""
    return f"status-{status}" if isinstance(status, str) and status in allowed else "status-other"


def change(before: object, after: object) -> dict[str, str]:
    """``before → after`` and the change, with a class saying which way it went."""
    b, a = _num(before), _num(after)
    text = f"{_fmt('.3f', before)} \N{RIGHTWARDS ARROW} {_fmt('.3f', after)}"
    if a is None or b is None:
        return {"text": text, "delta": "", "css": ""}
    delta = a - b
    css = "up" if delta > 0 else "down" if delta < 0 else "muted"
    return {"text": text, "delta": f"({delta:+.3f})", "css": css}


def budget_bar(spent: object, budget: object) -> dict[str, Any] | None:
    """Spent over budget as a bar: its width is a computed number, never input."""
    s, b = _num(spent), _num(budget)
    if s is None or b is None or b <= 0:
        return None
    share = max(0.0, s / b)
    css = "bar-over" if share > 1 else "bar-high" if share >= 0.8 else "bar-ok"
    return {"share": f"{share:.0%}", "css": css, "width": f"{min(share, 1.0) * 100:.1f}"}


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("silolearn.service", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        metric=lambda v: _fmt(".3f", v),
        eps=lambda v: _fmt(",.2f", v),
        delta=lambda v: _fmt("g", v),
        sigma=lambda v: _fmt(".3f", v),
        seconds=lambda v: DASH if _num(v) is None else f"{_fmt(',.1f', v)} s",
        share=fmt_share,
        count=fmt_count,
        version=fmt_version,
        text=fmt_text,
        target=fmt_target,
        status_class=status_class,
        sha16=lambda v: str(v or "")[:16] or DASH,
        dicts=_dicts,
        mapping=_mapping,
    )
    env.globals.update(
        change=change,
        budget_bar=budget_bar,
        ROUND_STATUSES=ROUND_STATUSES,
        VERSION_STATUSES=VERSION_STATUSES,
    )
    return env


# -- the data of the sections and their figures ----------------------------------------------


def rounds_of(result: Row) -> list[tuple[int, list[Row]]]:
    """(round number, tenant entries) sorted by round; a missing number is the position."""
    found = []
    for index, entry in enumerate(_dicts(result.get("rounds")), start=1):
        number = _int(entry.get("round"))
        found.append((index if number is None else number, _dicts(entry.get("tenants"))))
    return sorted(found, key=lambda item: item[0])


def tenant_names(result: Row) -> list[str]:
    """Tenants in the order the demo lists them, then any that only appear later."""
    names: list[str] = []
    candidates = [t.get("name") for t in _dicts(result.get("tenants"))]
    candidates += [e.get("tenant") for _, entries in rounds_of(result) for e in entries]
    candidates += list(_mapping(result.get("versions")))
    for name in candidates:
        if name is not None and str(name) not in names:
            names.append(str(name))
    return names


def serving_after(entry: Row, metric: str) -> tuple[float, str] | None:
    """What serves after the round (the new version if promoted, else the previous one)
    and how it came to serve; None when nothing serves (a first round that did not pass)."""
    status = entry.get("status")
    after, before = _num(entry.get(f"{metric}_after")), _num(entry.get(f"{metric}_before"))
    if status == "active" and after is not None:
        return after, "active"
    if before is None:
        return None
    return before, status if status in ("rejected", "failed") else "kept"


def serving_figure(result: Row, metric: str, label: str, height: int) -> dict[str, Any]:
    """The Plotly figure of each tenant's serving ``metric`` after each round."""
    points: dict[str, list[tuple[int, float, str]]] = {name: [] for name in tenant_names(result)}
    for number, entries in rounds_of(result):
        for entry in entries:
            served = serving_after(entry, metric)
            if served is not None and entry.get("tenant") is not None:
                points[str(entry["tenant"])].append((number, *served))
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": [p[0] for p in found],
            "y": [p[1] for p in found],
            "customdata": [p[2] for p in found],
            "line": {"color": PALETTE[index % len(PALETTE)]},
            "marker": {"size": 9, "symbol": [MARKERS[p[2]] for p in found]},
            "hovertemplate": f"{label} after round %{{x}}: %{{y:.3f}} (%{{customdata}})"
            "<extra>%{fullData.name}</extra>",
        }
        for index, (name, found) in enumerate(points.items())
    ]
    return {
        "data": data,
        "layout": _layout(height, "round", label, {"dtick": 1}),
        "config": {"displaylogo": False, "responsive": True, "staticPlot": False},
    }


def _layout(height: int, x: str, y: str, xaxis: dict[str, Any]) -> dict[str, Any]:
    return {
        "height": height,
        "margin": {"l": 55, "r": 20, "t": 20, "b": 45},
        "xaxis": {"title": {"text": x}, **xaxis},
        "yaxis": {"title": {"text": y}, "range": [0, 1.02]},
        "legend": {"orientation": "h", "y": -0.25},
    }


def sweep_figure(sweep: Row) -> dict[str, Any]:
    """Accuracy and macro-F1 of the DP candidates against epsilon (log2 axis), the
    non-private candidate's scores as dashed lines."""
    results = _dicts(sweep.get("results"))
    points = sorted(
        ((eps, r) for r in results if (eps := _num(r.get("epsilon"))) is not None and eps > 0),
        key=lambda item: item[0],
    )
    baseline = next((r for r in results if r.get("epsilon") is None), None)
    data: list[dict[str, Any]] = []
    shapes, notes = [], []
    for metric, label, colour in SWEEP_METRICS:
        drawn = [(e, v) for e, r in points if (v := _num(r.get(metric))) is not None]
        if drawn:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": label,
                    "meta": metric,
                    "x": [e for e, _ in drawn],
                    "y": [v for _, v in drawn],
                    "line": {"color": colour},
                    "marker": {"size": 9},
                    "hovertemplate": f"{label} at ε %{{x:g}}: %{{y:.3f}}<extra></extra>",
                }
            )
        base = None if baseline is None else _num(baseline.get(metric))
        if base is not None:
            shapes.append(
                {
                    "type": "line",
                    "name": metric,
                    "xref": "paper",
                    "x0": 0,
                    "x1": 1,
                    "y0": base,
                    "y1": base,
                    "line": {"color": colour, "dash": "dash", "width": 1.6},
                }
            )
            notes.append(
                {
                    "xref": "paper",
                    "x": 1,
                    "y": base,
                    "xanchor": "right",
                    "yanchor": "bottom" if metric == "accuracy" else "top",
                    "showarrow": False,
                    "font": {"color": colour},
                    "text": f"non-private {label} {base:.3f}",
                }
            )
    if not points:
        notes.append(
            {
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
                "text": "no DP candidates in this sweep",
            }
        )
    epsilons = sorted({e for e, _ in points})
    xaxis = {"type": "log", "tickvals": epsilons, "ticktext": [f"{e:g}" for e in epsilons]}
    layout = _layout(300, "epsilon (log2 scale)", "score", xaxis)
    layout.update(shapes=shapes, annotations=notes)
    return {"data": data, "layout": layout, "config": {"displaylogo": False, "responsive": True}}


def _ledgers(privacy: Row) -> list[dict[str, Any]]:
    return [
        {**ledger, "bar": budget_bar(ledger.get("epsilon_spent"), ledger.get("epsilon_budget"))}
        for ledger in _dicts(privacy.get("ledgers"))
    ]


def _context(result: Row) -> dict[str, Any]:
    privacy = _mapping(result.get("privacy"))
    gates = _mapping(result.get("gates"))
    sweeps = [
        {"sweep": sweep, "figure": sweep_figure(sweep), "id": f"privacy-sweep-{index}"}
        for index, sweep in enumerate(_dicts(privacy.get("sweeps")), start=1)
    ]
    return {
        "title": TITLE,
        "result": result,
        "audit": _mapping(result.get("audit")),
        "isolation": _mapping(result.get("isolation")),
        "tenants": _dicts(result.get("tenants")),
        "rounds": rounds_of(result),
        "versions": [
            (name, _dicts(_mapping(result.get("versions")).get(name)))
            for name in tenant_names(result)
        ],
        "figures": {
            "accuracy": serving_figure(result, "accuracy", "accuracy", 320),
            "macro_f1": serving_figure(result, "macro_f1", "macro-F1", 260),
        },
        "traffic": [
            (_int(t.get("round")), _dicts(t.get("tenants"))) for t in _dicts(result.get("traffic"))
        ],
        "metrics": _mapping(result.get("metrics")),
        "privacy": {
            "ledgers": _ledgers(privacy),
            "sweeps": sweeps,
            "dp_rounds": _dicts(privacy.get("dp_rounds")),
            "shared_versions": _dicts(_mapping(privacy.get("shared")).get("versions")),
            "comparison": _dicts(_mapping(privacy.get("shared")).get("comparison")),
        },
        "gates": {
            "serving": _dicts(gates.get("serving")),
            "divergence": _mapping(gates.get("divergence")),
            "drill": _mapping(gates.get("drill")),
            "incidents": _dicts(gates.get("incidents")),
        },
    }


# -- the document ------------------------------------------------------------------------------


@cache
def _scripts() -> tuple[str, str]:
    """Plotly from the installed package and the dashboard's script that draws each
    ``data-figure`` element from the JSON beside it."""
    plotly = STATIC_FILES["plotly.min.js"][0].read_text(encoding="utf-8")
    draw = STATIC_FILES["dashboard.js"][0].read_text(encoding="utf-8")
    return plotly, draw


def _csp(scripts: tuple[str, ...]) -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts
    )
    return (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
        "font-src data:; base-uri 'none'; form-action 'none'"
    )


def render_report(result: dict[str, Any]) -> str:
    """The complete HTML document for a demo ``result`` (see :func:`silolearn.demo.run_demo`)."""
    plotly, draw = _scripts()
    css = STATIC_FILES["dashboard.css"][0]
    return (
        _env()
        .get_template("report.html")
        .render(
            **_context(_mapping(result)),
            csp=_csp((plotly, draw)),
            dashboard_css=css.read_text(encoding="utf-8"),
            plotly_js=plotly,
            draw_js=draw,
        )
    )


@cache
def _env() -> Environment:
    return _environment()


def write_report(result: dict[str, Any], path: Path) -> Path:
    """Render the report and write it atomically (temporary file, then ``os.replace``)."""
    document = render_report(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
