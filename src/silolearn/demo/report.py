"""A self-contained HTML report for ``silolearn demo``.

The demo feeds several tenants a stream of records over rounds; after each round every
tenant trains a candidate model that is promoted only if it passes the gates. The report
shows, in one file that opens offline (inline CSS and SVG, no scripts, fonts, images or
other external resources):

* a header: workspace, when the report was generated, total run time, whether the audit
  chain verified (events, signed checkpoints) and how many isolation attacks were blocked;
* a plot of each tenant's *serving* accuracy after each round, i.e. the new version's
  accuracy when it was promoted, otherwise the previous version's accuracy (it keeps
  serving); rejected and failed rounds get hollow markers. A second plot shows macro-F1;
* one table per round: records arrived and where they went, the training mix (new and
  replayed records), accuracy and macro-F1 before and after, the decision and time taken;
* one table of model versions per tenant;
* when the result has privacy data, a differential-privacy section: each scope's ledger
  (budget, spent by the accountant and its Rényi-DP bound, remaining, with a bar), each
  accuracy-privacy sweep (a table and a plot of accuracy and macro-F1 against epsilon on a
  log2 axis, the non-private candidate as dashed lines), the DP training rounds, and the
  shared layer's versions and each member's isolated-against-shared scores;
* a footer stating what the metrics are measured on: each tenant's own append-only eval
  store, records up to the round's cutoff, which the trainer never reads.

Every string taken from the input is HTML-escaped; CSS class names are chosen from fixed
sets, never from input. A restrictive Content-Security-Policy is set as defence in depth.
"""

from __future__ import annotations

import html
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report"]

TITLE = "silolearn demo report"
FOOTER = (
    "Accuracy and macro-F1 are measured on each tenant's own append-only eval store, "
    "records up to the round's cutoff; the trainer never reads it."
)
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
DASH = "\N{EM DASH}"
ARROW = "\N{RIGHTWARDS ARROW}"

_ROUND_STATUSES = frozenset({"active", "rejected", "failed"})
_VERSION_STATUSES = frozenset({"active", "rejected", "failed", "retired", "candidate"})

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1f2328; background: #fff; max-width: 1120px; margin: 24px auto; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
h4 { font-size: 13px; margin: 12px 0 4px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.meta dt { color: #57606a; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0 16px; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.decision { overflow-wrap: anywhere; max-width: 28em; }
.status { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
  font-weight: 600; white-space: nowrap; }
.status-active { background: #dafbe1; color: #116329; }
.status-rejected { background: #fff1c2; color: #7d4e00; }
.status-failed { background: #ffebe9; color: #a40e26; }
.status-retired { background: #eaeef2; color: #57606a; }
.status-candidate, .status-other { background: #ddf4ff; color: #0550ae; }
.ok { color: #116329; font-weight: 600; }
.bad { color: #a40e26; font-weight: 600; }
.up { color: #116329; }
.down { color: #a40e26; }
.muted { color: #57606a; }
.warn { color: #7d4e00; }
.warn + .warn { margin-top: 4px; }
td.used { white-space: nowrap; }
.bar { display: inline-block; width: 80px; height: 8px; border-radius: 4px;
  background: #eaeef2; vertical-align: middle; overflow: hidden; }
.bar-fill { display: block; height: 100%; }
.bar-ok .bar-fill { background: #2da44e; }
.bar-high .bar-fill { background: #d4a72c; }
.bar-over .bar-fill { background: #cf222e; }
figure { margin: 8px 0 16px; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 12px; }
footer { margin-top: 28px; padding-top: 8px; border-top: 1px solid #d0d7de; color: #57606a;
  font-size: 12px; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, h3 { break-after: avoid; }
  figure, table, tr { break-inside: avoid; }
}
"""


# --------------------------------------------------------------------------- formatting


def _e(value: object) -> str:
    """HTML-escape any value (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _num(value: object) -> float | None:
    """A finite number, or None for anything else (None, bools, strings, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _fmt_metric(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:.3f}"


def _fmt_count(value: object) -> str:
    number = _int(value)
    return DASH if number is None else f"{number:,}"


def _fmt_seconds(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:,.1f} s"


def _fmt_text(value: object) -> str:
    return DASH if value is None or value == "" else _e(value)


def _status_class(status: object, allowed: frozenset[str]) -> str:
    return f"status-{status}" if isinstance(status, str) and status in allowed else "status-other"


def _badge(status: object, allowed: frozenset[str]) -> str:
    label = status if isinstance(status, str) and status else "unknown"
    return f'<span class="status {_status_class(status, allowed)}">{_e(label)}</span>'


def _dicts(value: object) -> list[Mapping[str, Any]]:
    """The mappings in a list; anything else in the input is ignored."""
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Point:
    round: int
    value: float
    kind: str  # "active": new version promoted; "rejected"/"failed"/"kept": previous serves


@dataclass(frozen=True)
class _Series:
    tenant: str
    colour: str
    points: tuple[_Point, ...]


def _rounds(result: Mapping[str, Any]) -> list[tuple[int, list[Mapping[str, Any]]]]:
    """(round number, tenant entries) sorted by round; a missing number is the position."""
    rounds = []
    for index, entry in enumerate(_dicts(result.get("rounds")), start=1):
        number = _int(entry.get("round"))
        rounds.append((index if number is None else number, _dicts(entry.get("tenants"))))
    return sorted(rounds, key=lambda item: item[0])


def _tenant_names(result: Mapping[str, Any]) -> list[str]:
    """Tenants in the order the demo lists them, then any that only appear later."""
    names: list[str] = []

    def add(name: object) -> None:
        if name is not None and str(name) not in names:
            names.append(str(name))

    for tenant in _dicts(result.get("tenants")):
        add(tenant.get("name"))
    for _, entries in _rounds(result):
        for entry in entries:
            add(entry.get("tenant"))
    for name in _mapping(result.get("versions")):
        add(name)
    return names


def _serving(entry: Mapping[str, Any], metric: str) -> tuple[float, str] | None:
    """What serves after the round: the new version if promoted, else the previous one.

    Returns the value and the marker kind, or None when nothing serves (e.g. a first round
    that failed or was rejected).
    """
    status = entry.get("status")
    after = _num(entry.get(f"{metric}_after"))
    before = _num(entry.get(f"{metric}_before"))
    if status == "active" and after is not None:
        return after, "active"
    if before is None:
        return None
    return before, status if status in ("rejected", "failed") else "kept"


def _series(result: Mapping[str, Any], metric: str) -> list[_Series]:
    points: dict[str, list[_Point]] = {name: [] for name in _tenant_names(result)}
    for number, entries in _rounds(result):
        for entry in entries:
            served = _serving(entry, metric)
            if served is not None and entry.get("tenant") is not None:
                points[str(entry["tenant"])].append(_Point(number, *served))
    return [
        _Series(name, PALETTE[index % len(PALETTE)], tuple(tenant_points))
        for index, (name, tenant_points) in enumerate(points.items())
    ]


# --------------------------------------------------------------------------- plot


@dataclass(frozen=True)
class _Frame:
    """Pixel geometry of a plot: the data area and the range of x values (a round number,
    or log2 of epsilon); y always spans 0..1."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    first: float
    last: float

    def x(self, value: float) -> float:
        if self.last == self.first:
            return (self.left + self.right) / 2
        pad = 18.0
        span = self.right - self.left - 2 * pad
        return self.left + pad + (value - self.first) / (self.last - self.first) * span

    def y(self, value: float) -> float:
        value = min(1.0, max(0.0, value))
        return self.bottom - value * (self.bottom - self.top)


def _xy(value: float) -> str:
    return f"{value:.2f}"


def _round_ticks(first: int, last: int) -> list[tuple[float, str]]:
    """At most about twelve round numbers for the x axis."""
    stride = max(1, math.ceil((last - first + 1) / 12))
    return [(number, str(number)) for number in range(first, last + 1, stride)]


def _grid(
    frame: _Frame,
    label: str,
    ticks: Iterable[tuple[float, str]],
    x_label: str = "round",
) -> list[str]:
    """Gridlines at 0.0..1.0 with the y ``label``; x ``ticks`` as (x value, text) with the
    x label. A tick label closer than 28 px to the previous one is left out (not its mark).
    """
    parts = []
    for step in range(6):
        value = step / 5
        y = _xy(frame.y(value))
        parts.append(
            f'<line class="grid" x1="{_xy(frame.left)}" y1="{y}" x2="{_xy(frame.right)}" '
            f'y2="{y}" stroke="#d8dee4" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_xy(frame.left - 8)}" y="{y}" text-anchor="end" '
            f'dominant-baseline="middle">{value:.1f}</text>'
        )
    previous = -math.inf
    for value, text in ticks:
        pixel = frame.x(value)
        x = _xy(pixel)
        parts.append(
            f'<line x1="{x}" y1="{_xy(frame.bottom)}" x2="{x}" y2="{_xy(frame.bottom + 5)}" '
            'stroke="#57606a" stroke-width="1"/>'
        )
        if pixel - previous >= 28:
            previous = pixel
            parts.append(
                f'<text class="tick" x="{x}" y="{_xy(frame.bottom + 18)}" '
                f'text-anchor="middle">{_e(text)}</text>'
            )
    parts.append(
        f'<rect x="{_xy(frame.left)}" y="{_xy(frame.top)}" width="{_xy(frame.right - frame.left)}"'
        f' height="{_xy(frame.bottom - frame.top)}" fill="none" stroke="#57606a" '
        'stroke-width="1"/>'
    )
    middle = _xy((frame.left + frame.right) / 2)
    parts.append(
        f'<text class="axis-label" x="{middle}" y="{frame.height - 6}" '
        f'text-anchor="middle">{_e(x_label)}</text>'
    )
    centre = _xy((frame.top + frame.bottom) / 2)
    parts.append(
        f'<text class="axis-label" x="14" y="{centre}" text-anchor="middle" '
        f'transform="rotate(-90 14 {centre})">{_e(label)}</text>'
    )
    return parts


def _polyline(points: Iterable[tuple[float, float]], colour: str) -> str:
    coords = " ".join(f"{_xy(x)},{_xy(y)}" for x, y in points)
    return (
        f'<polyline points="{coords}" fill="none" stroke="{colour}" '
        'stroke-width="2.2" stroke-linejoin="round" stroke-linecap="round"/>'
    )


def _shape(
    shape: str, x: float, y: float, size: float, fill: str, attrs: str = "", title: str = ""
) -> str:
    """A marker centred on (x, y): a square of side ``size`` or a circle of that diameter;
    ``attrs`` (ready-made, leading space) and ``title`` (ready-made markup) are optional."""
    if shape == "square":
        tag = "rect"
        geometry = (
            f'x="{_xy(x - size / 2)}" y="{_xy(y - size / 2)}" width="{size:g}" height="{size:g}"'
        )
    else:
        tag = "circle"
        geometry = f'cx="{_xy(x)}" cy="{_xy(y)}" r="{size / 2:g}"'
    opening = f'<{tag} {geometry} fill="{fill}"{attrs}'
    return f"{opening}>{title}</{tag}>" if title else f"{opening}/>"


def _key(
    x: float, y: float, colour: str, text: str, *, shape: str = "circle", dashed: bool = False
) -> str:
    """One legend entry at (x, y): a line sample with a marker on it (or a dashed line
    without one) and the text, shortened, with the full text as its tooltip."""
    line = (
        f'<line x1="{_xy(x)}" y1="{_xy(y)}" x2="{_xy(x + 22)}" y2="{_xy(y)}" '
        f'stroke="{colour}" stroke-width="2.2"'
    )
    if dashed:
        sample = f'{line} stroke-dasharray="6 4"/>'
    else:
        sample = f"{line}/>{_shape(shape, x + 11, y, 8, colour)}"
    return (
        f'{sample}<text x="{_xy(x + 30)}" y="{_xy(y)}" dominant-baseline="middle">'
        f"<title>{_e(text)}</title>{_e(_short(text))}</text>"
    )


_KIND_NOTE = {
    "active": "new version promoted",
    "rejected": "candidate rejected, previous version serves",
    "failed": "training failed, previous version serves",
    "kept": "previous version serves",
}


def _marker(series: _Series, point: _Point, frame: _Frame, label: str) -> str:
    x, y = frame.x(point.round), frame.y(point.value)
    title = (
        f"<title>{_e(series.tenant)}, round {point.round}: {label} {point.value:.3f} "
        f"({_KIND_NOTE[point.kind]})</title>"
    )
    data = f' data-round="{point.round}" data-value="{point.value:.4f}"'
    if point.kind == "active":
        return _shape("circle", x, y, 9, series.colour, f' class="marker active"{data}', title)
    hollow = f' stroke="{series.colour}" stroke-width="2"{data}'
    if point.kind == "failed":
        return _shape("square", x, y, 8, "#fff", f' class="marker failed"{hollow}', title)
    return _shape("circle", x, y, 10, "#fff", f' class="marker {point.kind}"{hollow}', title)


def _line(series: _Series, frame: _Frame, label: str) -> list[str]:
    if not series.points:
        return []
    parts = [
        f'<g class="series" data-tenant="{_e(series.tenant)}">',
        _polyline(
            ((frame.x(point.round), frame.y(point.value)) for point in series.points),
            series.colour,
        ),
    ]
    parts.extend(_marker(series, point, frame, label) for point in series.points)
    parts.append("</g>")
    return parts


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _legend_height(tenants: int) -> int:
    """Bottom of the legend in pixels: one row per tenant, then the three marker keys."""
    return 14 + 6 + 20 * tenants + 8 + 18 * 3


def _legend(series: list[_Series], x: float, top: float) -> list[str]:
    parts = ['<g class="legend">']
    y = top + 6
    for item in series:
        parts.append(_key(x, y, item.colour, item.tenant))
        y += 20
    y += 8
    grey = 'fill="#fff" stroke="#57606a" stroke-width="2"'
    cx, ty = _xy(x + 11), _xy(x + 30)
    keys = (
        (f'<circle cx="{cx}" cy="{{y}}" r="4.5" fill="#57606a"/>', "promoted"),
        (f'<circle cx="{cx}" cy="{{y}}" r="5" {grey}/>', "rejected"),
        (f'<rect x="{_xy(x + 7)}" y="{{top}}" width="8" height="8" {grey}/>', "failed"),
    )
    for template, text in keys:
        shape = template.format(y=_xy(y), top=_xy(y - 4))
        parts.append(
            f'{shape}<text x="{ty}" y="{_xy(y)}" dominant-baseline="middle" '
            f'class="muted">{text}</text>'
        )
        y += 18
    parts.append("</g>")
    return parts


def _plot(result: Mapping[str, Any], metric: str, label: str, height: int) -> str:
    """An inline SVG line chart of the serving ``metric`` per tenant per round."""
    series = _series(result, metric)
    numbers = [number for number, _ in _rounds(result)]
    width = 760
    height = max(height, _legend_height(len(series)) + 30)  # many tenants: grow, never clip
    first, last = min(numbers, default=1), max(numbers, default=1)
    frame = _Frame(
        width=width,
        height=height,
        left=52.0,
        right=552.0,
        top=14.0,
        bottom=float(height - 40),
        first=first,
        last=last,
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-metric="{_e(metric)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="serving {_e(label)} per tenant after each round" '
        'font-family="system-ui, sans-serif" font-size="12" fill="#1f2328">',
        f"<title>Serving {_e(label)} per tenant after each round</title>",
        *_grid(frame, label, _round_ticks(first, last)),
    ]
    if not numbers:
        parts.append(
            f'<text x="{_xy((frame.left + frame.right) / 2)}" '
            f'y="{_xy((frame.top + frame.bottom) / 2)}" text-anchor="middle" '
            'class="muted">no rounds recorded</text>'
        )
    for item in series:
        parts.extend(_line(item, frame, label))
    parts.extend(_legend(series, frame.right + 24, frame.top))
    parts.append("</svg>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- sections


def _header(result: Mapping[str, Any]) -> str:
    audit = _mapping(result.get("audit"))
    if not audit:
        audit_html = '<span class="muted">not run</span>'
    else:
        ok = audit.get("ok") is True
        verdict = '<span class="ok">OK</span>' if ok else '<span class="bad">FAILED</span>'
        audit_html = (
            f"{verdict}: {_fmt_count(audit.get('events'))} events, "
            f"{_fmt_count(audit.get('checkpoints'))} signed checkpoints"
        )
    isolation = _mapping(result.get("isolation"))
    blocked, attacks = _int(isolation.get("blocked")), _int(isolation.get("attacks"))
    if blocked is None or attacks is None:
        isolation_html = '<span class="muted">not run</span>'
    else:
        css = "ok" if blocked == attacks else "bad"
        isolation_html = (
            f'<span class="{css}">{blocked:,} of {attacks:,}</span> cross-tenant attacks blocked'
        )
    rows = (
        ("workspace", f"<code>{_fmt_text(result.get('workspace'))}</code>"),
        ("generated", _fmt_text(result.get("generated_at"))),
        ("run time", _fmt_seconds(result.get("seconds"))),
        ("audit chain", audit_html),
        ("isolation", isolation_html),
    )
    items = "\n".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return f'<header>\n<h1>{_e(TITLE)}</h1>\n<dl class="meta">\n{items}\n</dl>\n</header>'


def _table(headers: Iterable[tuple[str, bool]], rows: Iterable[str], caption: str = "") -> str:
    """A table; each header is (text, numeric) and each row is ready-made ``<td>`` cells."""
    head = "".join(
        f'<th class="num">{text}</th>' if numeric else f"<th>{text}</th>"
        for text, numeric in headers
    )
    body = "\n".join(f"<tr>{row}</tr>" for row in rows)
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{cap}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _num_td(text: str) -> str:
    return f'<td class="num">{text}</td>'


def _tenants_section(result: Mapping[str, Any]) -> str:
    tenants = _dicts(result.get("tenants"))
    if not tenants:
        return ""
    rows = (
        f"<td>{_fmt_text(t.get('name'))}</td><td>{_fmt_text(t.get('dataset'))}</td>"
        + _num_td(_fmt_count(t.get("labels")))
        + _num_td(_fmt_count(t.get("records")))
        for t in tenants
    )
    headers = (("tenant", False), ("dataset", False), ("labels", True), ("records", True))
    return f"<section>\n<h2>Tenants</h2>\n{_table(headers, rows)}\n</section>"


def _compare(before: object, after: object) -> str:
    """``before → after`` with the change coloured up or down."""
    text = f"{_fmt_metric(before)} {ARROW} {_fmt_metric(after)}"
    b, a = _num(before), _num(after)
    if a is None or b is None:
        return text
    delta = a - b
    css = "up" if delta > 0 else "down" if delta < 0 else "muted"
    return f'{text} <span class="{css}">({delta:+.3f})</span>'


def _change(entry: Mapping[str, Any], metric: str) -> str:
    return _compare(entry.get(f"{metric}_before"), entry.get(f"{metric}_after"))


def _decision(entry: Mapping[str, Any]) -> str:
    decision, error = entry.get("decision"), entry.get("error")
    parts = [_badge(entry.get("status"), _ROUND_STATUSES)]
    if decision not in (None, ""):
        parts.append(_e(decision))
    if error not in (None, "") and error != decision:
        parts.append(f'<span class="bad">{_e(error)}</span>')
    return " ".join(parts)


def _version(value: object) -> str:
    number = _int(value)
    return DASH if number is None else f"v{number}"


_ROUND_HEADERS = (
    ("tenant", False),
    ("version", False),
    ("decision", False),
    ("arrived", True),
    ("train", True),
    ("eval", True),
    ("contam.", True),
    ("dupl.", True),
    ("new", True),
    ("replay", True),
    ("eval n", True),
    (f"accuracy before {ARROW} after", True),
    (f"macro-F1 before {ARROW} after", True),
    ("time", True),
)


def _round_row(entry: Mapping[str, Any]) -> str:
    counts = (
        "arrived",
        "train",
        "eval",
        "contaminated",
        "duplicates",
        "new_records",
        "replay_records",
        "eval_n",
    )
    return (
        f"<td>{_fmt_text(entry.get('tenant'))}</td>"
        f"<td>{_version(entry.get('version'))}</td>"
        f'<td class="decision">{_decision(entry)}</td>'
        + "".join(_num_td(_fmt_count(entry.get(key))) for key in counts)
        + _num_td(_change(entry, "accuracy"))
        + _num_td(_change(entry, "macro_f1"))
        + _num_td(_fmt_seconds(entry.get("seconds")))
    )


def _rounds_section(result: Mapping[str, Any]) -> str:
    rounds = _rounds(result)
    if not rounds:
        return '<section>\n<h2>Rounds</h2>\n<p class="muted">No rounds recorded.</p>\n</section>'
    tables = [
        f"<h3>Round {number}</h3>\n{_table(_ROUND_HEADERS, (_round_row(e) for e in entries))}"
        for number, entries in rounds
    ]
    return "<section>\n<h2>Rounds</h2>\n" + "\n".join(tables) + "\n</section>"


def _versions_section(result: Mapping[str, Any]) -> str:
    versions = _mapping(result.get("versions"))
    headers = (
        ("version", False),
        ("status", False),
        ("accuracy", True),
        ("macro-F1", True),
        ("sha256", False),
        ("created", False),
    )
    tables = []
    for name in _tenant_names(result):
        entries = _dicts(versions.get(name))
        if not entries:
            continue
        rows = (
            f"<td>{_version(v.get('version'))}</td>"
            f"<td>{_badge(v.get('status'), _VERSION_STATUSES)}</td>"
            + _num_td(_fmt_metric(v.get("accuracy")))
            + _num_td(_fmt_metric(v.get("macro_f1")))
            + f"<td><code>{_fmt_text(str(v.get('sha256') or '')[:16])}</code></td>"
            + f"<td>{_fmt_text(v.get('created_at'))}</td>"
            for v in entries
        )
        tables.append(f"<h3>{_e(name)}</h3>\n{_table(headers, rows)}")
    if not tables:
        tables.append('<p class="muted">No model versions recorded.</p>')
    return "<section>\n<h2>Model versions</h2>\n" + "\n".join(tables) + "\n</section>"


def _plots_section(result: Mapping[str, Any]) -> str:
    caption = (
        "What serves after each round: the new version's score when it was promoted, "
        "otherwise the previous version's score on the same eval records. Hollow markers: "
        "circle = candidate rejected by the gates, square = training failed."
    )
    return (
        "<section>\n<h2>Serving model after each round</h2>\n"
        f"<figure>\n{_plot(result, 'accuracy', 'accuracy', 320)}\n"
        f"<figcaption>{caption}</figcaption>\n</figure>\n"
        f"<figure>\n{_plot(result, 'macro_f1', 'macro-F1', 240)}\n</figure>\n</section>"
    )


# --------------------------------------------------------------------------- privacy

PRIVACY_INTRO = (
    "Each scope's budget is epsilon at delta over all its DP runs. Spent is what the ledger's "
    "accountant computes for the scope's events; the Rényi-DP figure is an upper bound on "
    "the same events."
)
SHARED_NOTE = (
    "The coordinator adds the Gaussian noise once per step, to the sum of the members' "
    "clipped gradients: expected std is sigma times the clipping norm, measured is the "
    "standard deviation of the noise it actually drew."
)
_SWEEP_METRICS = (
    ("accuracy", "accuracy", PALETTE[0], "circle"),
    ("macro_f1", "macro-F1", PALETTE[1], "square"),
)


def _fmt_epsilon(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:,.2f}"


def _fmt_delta(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:g}"


def _fmt_share(value: object) -> str:
    """A fraction as a percentage, with a decimal below 10% (0.4% is not 0%)."""
    number = _num(value)
    if number is None:
        return DASH
    return f"{number:.1%}" if abs(number) < 0.1 else f"{number:.0%}"


def _fmt_sigma(value: object) -> str:
    number = _num(value)
    return DASH if number is None else f"{number:.3f}"


def _target(value: object) -> float | None:
    """A swept epsilon that can sit on a log axis: finite and positive."""
    number = _num(value)
    return number if number is not None and number > 0 else None


def _fmt_target(value: object) -> str:
    if value is None:
        return "non-private"
    number = _num(value)
    return DASH if number is None else f"{number:g}"


def _warnings(value: object) -> str:
    items = [str(w) for w in value if w not in (None, "")] if isinstance(value, list) else []
    if not items:
        return DASH
    return "".join(f'<div class="warn">{_e(item)}</div>' for item in items)


def _bar(spent: object, budget: object) -> str:
    """A small bar of spent/budget; the width is a computed number, never input."""
    s, b = _num(spent), _num(budget)
    if s is None or b is None or b <= 0:
        return DASH
    share = max(0.0, s / b)
    css = "bar-over" if share > 1 else "bar-high" if share >= 0.8 else "bar-ok"
    return (
        f'<span class="bar {css}" title="{share:.0%} of the budget spent">'
        f'<span class="bar-fill" style="width: {min(share, 1.0) * 100:.1f}%"></span></span> '
        f"{share:.0%}"
    )


def _ledger_table(ledgers: list[Mapping[str, Any]]) -> str:
    headers = (
        ("ledger", False),
        ("scope", False),
        ("mode", False),
        ("budget (epsilon at delta)", True),
        ("per run", True),
        ("spent", True),
        ("RDP bound", True),
        ("remaining", True),
        ("runs", True),
        ("steps", True),
        ("used", False),
    )
    rows = []
    for ledger in ledgers:
        accountant = ledger.get("accountant")
        spent = _fmt_epsilon(ledger.get("epsilon_spent"))
        if accountant not in (None, ""):
            spent += f' <span class="muted">({_e(accountant)})</span>'
        rows.append(
            f"<td>{_fmt_text(ledger.get('name'))}</td>"
            f"<td><code>{_fmt_text(ledger.get('scope'))}</code></td>"
            f"<td>{_fmt_text(ledger.get('mode'))}</td>"
            + _num_td(
                f"{_fmt_epsilon(ledger.get('epsilon_budget'))} at {_fmt_delta(ledger.get('delta'))}"
            )
            + _num_td(_fmt_epsilon(ledger.get("run_epsilon")))
            + _num_td(spent)
            + _num_td(_fmt_epsilon(ledger.get("epsilon_spent_rdp_bound")))
            + _num_td(_fmt_epsilon(ledger.get("epsilon_remaining")))
            + _num_td(_fmt_count(ledger.get("runs")))
            + _num_td(_fmt_count(ledger.get("steps")))
            + f'<td class="used">{_bar(ledger.get("epsilon_spent"), ledger.get("epsilon_budget"))}'
            "</td>"
        )
    return _table(headers, rows)


def _baseline_labels(values: list[tuple[float, str, str]], frame: _Frame) -> list[str]:
    """Labels right of the plot for the dashed baselines, pushed apart to stay readable."""
    parts = []
    previous = -math.inf
    for wanted, text, colour in sorted(values):
        y = previous = max(wanted, previous + 14)
        parts.append(
            f'<text class="baseline-label" x="{_xy(frame.right + 6)}" y="{_xy(y)}" '
            f'dominant-baseline="middle" fill="{colour}">{_e(text)}</text>'
        )
    return parts


def _sweep_plot(sweep: Mapping[str, Any], index: int) -> str:
    """Accuracy and macro-F1 of the DP candidates against epsilon (log2 axis), with the
    non-private candidate's scores as dashed lines."""
    results = _dicts(sweep.get("results"))
    points = sorted(
        ((eps, r) for r in results if (eps := _target(r.get("epsilon"))) is not None),
        key=lambda item: item[0],
    )
    baseline = next((r for r in results if r.get("epsilon") is None), None)
    epsilons = sorted({eps for eps, _ in points})
    width, height = 760, 300
    frame = _Frame(
        width=width,
        height=height,
        left=52.0,
        right=552.0,
        top=34.0,
        bottom=float(height - 40),
        first=math.log2(epsilons[0]) if epsilons else 0.0,
        last=math.log2(epsilons[-1]) if epsilons else 0.0,
    )
    tenant = _e(sweep.get("tenant"))
    ticks = [(math.log2(eps), f"{eps:g}") for eps in epsilons]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot sweep" '
        f'data-metric="privacy-sweep-{index}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="accuracy and macro-F1 against epsilon, sweep of {tenant}" '
        'font-family="system-ui, sans-serif" font-size="12" fill="#1f2328">',
        f"<title>Accuracy and macro-F1 against epsilon: sweep of {tenant}</title>",
        *_grid(frame, "score", ticks, "epsilon (log2 scale)"),
    ]
    if not points:
        parts.append(
            f'<text x="{_xy((frame.left + frame.right) / 2)}" '
            f'y="{_xy((frame.top + frame.bottom) / 2)}" text-anchor="middle" '
            'class="muted">no DP candidates in this sweep</text>'
        )
    labels: list[tuple[float, str, str]] = []
    for metric, label, colour, shape in _SWEEP_METRICS:
        base = None if baseline is None else _num(baseline.get(metric))
        if base is not None:
            y = frame.y(base)
            parts.append(
                f'<line class="baseline" data-metric="{metric}" data-value="{base:.4f}" '
                f'x1="{_xy(frame.left)}" y1="{_xy(y)}" x2="{_xy(frame.right)}" y2="{_xy(y)}" '
                f'stroke="{colour}" stroke-width="1.6" stroke-dasharray="6 4">'
                f"<title>non-private {label} {base:.3f}</title></line>"
            )
            labels.append((y, f"non-private {label} {base:.3f}", colour))
        drawn = [(eps, value, r) for eps, r in points if (value := _num(r.get(metric))) is not None]
        if not drawn:
            continue
        parts.append(f'<g class="series" data-metric="{metric}">')
        parts.append(_polyline(((frame.x(math.log2(e)), frame.y(v)) for e, v, _ in drawn), colour))
        for eps, value, r in drawn:
            title = (
                f"<title>{label} at epsilon {eps:g}: {value:.3f} "
                f"({_e(_version(r.get('version')))})</title>"
            )
            attrs = f' class="marker dp" data-epsilon="{eps:g}" data-value="{value:.4f}"'
            x, y = frame.x(math.log2(eps)), frame.y(value)
            parts.append(_shape(shape, x, y, 9, colour, attrs, title))
        parts.append("</g>")
    parts.extend(_baseline_labels(labels, frame))
    parts.append('<g class="legend">')
    x = frame.left
    for _, label, colour, shape in _SWEEP_METRICS:
        parts.append(_key(x, 16, colour, label, shape=shape))
        x += 120
    parts.append(_key(x, 16, "#57606a", "non-private", dashed=True))
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def _sweep_caption(sweep: Mapping[str, Any]) -> str:
    charged = _mapping(sweep.get("charged"))
    if charged:
        paid = (
            f"Charged to the tenant's ledger for all DP candidates together, before any "
            f"trained: epsilon {_fmt_epsilon(charged.get('epsilon_before'))} {ARROW} "
            f"{_fmt_epsilon(charged.get('epsilon_after'))} of "
            f"{_fmt_epsilon(charged.get('epsilon_budget'))} at delta "
            f"{_fmt_delta(charged.get('delta', sweep.get('delta')))}."
        )
    else:
        paid = "Nothing was charged to the ledger."
    return (
        f"{paid} All candidates are trained from scratch on the same records and evaluated on "
        "the same eval records; sweep candidates are never promoted."
    )


def _sweep_section(sweep: Mapping[str, Any], index: int) -> str:
    headers = (
        ("epsilon", True),
        ("version", False),
        ("sigma", True),
        ("steps", True),
        ("accuracy", True),
        ("macro-F1", True),
        ("clipped", True),
        ("warnings", False),
    )
    rows = (
        _num_td(_fmt_target(r.get("epsilon")))
        + f"<td>{_version(r.get('version'))}</td>"
        + _num_td(_fmt_sigma(r.get("noise_multiplier")))
        + _num_td(_fmt_count(r.get("steps")))
        + _num_td(_fmt_metric(r.get("accuracy")))
        + _num_td(_fmt_metric(r.get("macro_f1")))
        + _num_td(_fmt_share(r.get("clipped")))
        + f'<td class="decision">{_warnings(r.get("warnings"))}</td>'
        for r in _dicts(sweep.get("results"))
    )
    kind = sweep.get("kind")
    title = f"Accuracy-privacy sweep of {_fmt_text(sweep.get('tenant'))}"
    if kind not in (None, ""):
        title += f" ({_e(kind)} adapter)"
    meta = (
        f"{_fmt_count(sweep.get('records'))} records, "
        f"{_fmt_count(sweep.get('eval_records'))} eval records, delta "
        f"{_fmt_delta(sweep.get('delta'))}, cutoff {_fmt_text(sweep.get('cutoff'))}, "
        f"sweep <code>{_fmt_text(sweep.get('sweep_id'))}</code>"
    )
    return (
        f'<h3>{title}</h3>\n<p class="muted">{meta}</p>\n{_table(headers, rows)}\n'
        f"<figure>\n{_sweep_plot(sweep, index)}\n"
        f"<figcaption>{_e(_sweep_caption(sweep))}</figcaption>\n</figure>"
    )


def _dp_rounds_table(rounds: list[Mapping[str, Any]]) -> str:
    headers = (
        ("tenant", False),
        ("version", False),
        ("status", False),
        ("accuracy", True),
        ("macro-F1", True),
        ("epsilon (run)", True),
        ("epsilon (total)", True),
        ("sigma", True),
        ("steps", True),
        ("clipped", True),
        ("median norm", True),
        ("warnings", False),
    )
    rows = (
        f"<td>{_fmt_text(r.get('tenant'))}</td>"
        f"<td>{_version(r.get('version'))}</td>"
        f"<td>{_badge(r.get('status'), _ROUND_STATUSES)}</td>"
        + _num_td(_fmt_metric(r.get("accuracy")))
        + _num_td(_fmt_metric(r.get("macro_f1")))
        + _num_td(_fmt_epsilon(r.get("epsilon_run")))
        + _num_td(_fmt_epsilon(r.get("epsilon_total")))
        + _num_td(_fmt_sigma(r.get("noise_multiplier")))
        + _num_td(_fmt_count(r.get("steps")))
        + _num_td(_fmt_share(r.get("clipped_mean")))
        + _num_td(_fmt_sigma(r.get("median_norm")))
        + f'<td class="decision">{_warnings(r.get("warnings"))}</td>'
        for r in rounds
    )
    return _table(headers, rows)


def _members(value: object) -> str:
    if not isinstance(value, list | tuple) or not value:
        return DASH
    return ", ".join(_e(member) for member in value)


def _shared_versions_table(versions: list[Mapping[str, Any]]) -> str:
    headers = (
        ("version", False),
        ("trunk sha256", False),
        ("members", False),
        ("records", True),
        ("steps", True),
        ("sigma", True),
        ("epsilon after", True),
        ("clipped", True),
        ("noise std expected", True),
        ("noise std measured", True),
    )
    rows = (
        f"<td>{_version(v.get('version'))}</td>"
        f"<td><code>{_fmt_text(str(v.get('trunk_sha256') or '')[:16])}</code></td>"
        f'<td class="decision">{_members(v.get("members"))}</td>'
        + _num_td(_fmt_count(v.get("records")))
        + _num_td(_fmt_count(v.get("steps")))
        + _num_td(_fmt_sigma(v.get("noise_multiplier")))
        + _num_td(_fmt_epsilon(v.get("epsilon_after")))
        + _num_td(_fmt_share(v.get("clipped_mean")))
        + _num_td(_fmt_sigma(v.get("noise_std")))
        + _num_td(_fmt_sigma(v.get("measured_noise_std")))
        for v in versions
    )
    note = html.escape(SHARED_NOTE, quote=False)
    return f'{_table(headers, rows)}\n<p class="muted">{note}</p>'


def _shared_comparison_table(comparison: list[Mapping[str, Any]]) -> str:
    headers = (
        ("tenant", False),
        ("shared version", False),
        (f"accuracy isolated {ARROW} shared", True),
        (f"macro-F1 isolated {ARROW} shared", True),
        ("disagreement on probes", True),
        ("KL(production || shadow)", True),
    )
    rows = []
    for c in comparison:
        isolated, joint = _mapping(c.get("isolated")), _mapping(c.get("shared"))
        rows.append(
            f"<td>{_fmt_text(c.get('tenant'))}</td>"
            f"<td>{_version(c.get('shared_version'))}</td>"
            + _num_td(_compare(isolated.get("accuracy"), joint.get("accuracy")))
            + _num_td(_compare(isolated.get("macro_f1"), joint.get("macro_f1")))
            + _num_td(f"{_fmt_metric(c.get('disagreement'))} of {_fmt_count(c.get('probes'))}")
            + _num_td(_fmt_metric(c.get("kl")))
        )
    return f"<h4>Isolated head against head on the shared layer</h4>\n{_table(headers, rows)}"


def _shared_section(shared: Mapping[str, Any]) -> str:
    versions, comparison = _dicts(shared.get("versions")), _dicts(shared.get("comparison"))
    parts = [
        *([_shared_versions_table(versions)] if versions else []),
        *([_shared_comparison_table(comparison)] if comparison else []),
    ]
    return "<h3>Shared layer</h3>\n" + "\n".join(parts) if parts else ""


def _privacy_section(result: Mapping[str, Any]) -> str:
    """The differential-privacy section; empty (no section) when there is nothing to show."""
    privacy = _mapping(result.get("privacy"))
    parts = []
    ledgers = _dicts(privacy.get("ledgers"))
    if ledgers:
        intro = html.escape(PRIVACY_INTRO, quote=False)
        parts.append(
            f'<h3>Privacy ledgers</h3>\n<p class="muted">{intro}</p>\n{_ledger_table(ledgers)}'
        )
    for index, sweep in enumerate(_dicts(privacy.get("sweeps")), start=1):
        parts.append(_sweep_section(sweep, index))
    dp_rounds = _dicts(privacy.get("dp_rounds"))
    if dp_rounds:
        parts.append(f"<h3>DP training rounds</h3>\n{_dp_rounds_table(dp_rounds)}")
    shared = _shared_section(_mapping(privacy.get("shared")))
    if shared:
        parts.append(shared)
    if not parts:
        return ""
    return "<section>\n<h2>Differential privacy</h2>\n" + "\n".join(parts) + "\n</section>"


GATES_INTRO = (
    "Every candidate passes all of its tenant's gates before it serves: quality and "
    "forgetting (paired bootstrap of macro-F1), the golden suite, membership inference (loss "
    "and LiRA-offline attacks; the AUC's upper 95% bound), canary exposure (bits of 72) and, "
    "for DP runs, the one-run audit's empirical epsilon lower bound next to the accountant's."
)


def _gates_serving_table(rows: list[Mapping[str, Any]]) -> str:
    headers = (
        ("tenant", False),
        ("version", False),
        ("membership AUC (upper bound)", True),
        ("max canary exposure, bits", True),
        ("one-run epsilon lower bound (accountant)", True),
        ("gates passed", True),
    )
    body = []
    for r in rows:
        gates = _mapping(r.get("gates"))
        passed = sum(1 for v in gates.values() if v is True)
        if r.get("membership_judged"):
            upper = _fmt_metric(r.get("membership_auc_upper"))
            auc = f"{_fmt_metric(r.get('membership_auc'))} ({upper})"
        else:
            auc = "not judged (too few eval records)"
        bound = _num(r.get("epsilon_lower_bound"))
        audit = (
            DASH if bound is None else f"{bound:.2f} ({_fmt_metric(r.get('accountant_epsilon'))})"
        )
        body.append(
            f"<td>{_fmt_text(r.get('tenant'))}</td><td>{_version(r.get('version'))}</td>"
            + _num_td(auc)
            + _num_td(_fmt_metric(r.get("max_exposure")))
            + _num_td(audit)
            + _num_td(f"{passed}/{len(gates)}")
        )
    return _table(headers, body)


def _drill_table(drill: Mapping[str, Any]) -> str:
    headers = (("gate", False), ("passed", False), ("severity", False), ("reason", False))
    body = [
        f"<td>{_fmt_text(g.get('gate'))}</td>"
        f"<td>{'yes' if g.get('passed') is True else 'no'}</td>"
        f"<td>{_fmt_text(g.get('severity'))}</td><td>{_fmt_text(g.get('reason'))}</td>"
        for g in _dicts(drill.get("gates"))
    ]
    title = (
        f"Leak drill: candidate {_version(drill.get('version'))} {_fmt_text(drill.get('status'))}"
    )
    return f"<h3>{title}</h3>\n{_table(headers, body)}"


def _incidents_table(rows: list[Mapping[str, Any]]) -> str:
    headers = (
        ("id", True),
        ("tenant", False),
        ("severity", False),
        ("kind", False),
        ("version", False),
        ("status", False),
        ("summary", False),
        ("actions", False),
    )
    body = []
    for i in rows:
        actions = i.get("actions")
        acted = "; ".join(str(a) for a in actions) if isinstance(actions, list) else actions
        body.append(
            _num_td(_fmt_text(i.get("id")))
            + f"<td>{_fmt_text(i.get('tenant'))}</td><td>{_fmt_text(i.get('severity'))}</td>"
            f"<td>{_fmt_text(i.get('kind'))}</td><td>{_version(i.get('version'))}</td>"
            f"<td>{_fmt_text(i.get('status'))}</td><td>{_fmt_text(i.get('summary'))}</td>"
            f"<td>{_fmt_text(acted)}</td>"
        )
    return f"<h3>Incidents</h3>\n{_table(headers, body)}"


def _gates_section(result: Mapping[str, Any]) -> str:
    """Release gates: the serving versions' evidence, the divergence checks, the leak drill
    and the incidents; empty when the result has none."""
    gates = _mapping(result.get("gates"))
    parts = []
    serving = _dicts(gates.get("serving"))
    if serving:
        intro = html.escape(GATES_INTRO, quote=False)
        parts.append(
            f'<h3>Serving versions</h3>\n<p class="muted">{intro}</p>\n'
            + _gates_serving_table(serving)
        )
    divergence = _mapping(gates.get("divergence"))
    if divergence:
        parts.append(
            "<h3>Cross-tenant divergence</h3>\n<p>"
            f"{_fmt_count(divergence.get('isolated_checks'))} checks of isolated tenants after "
            f"other tenants' rounds, {_fmt_count(divergence.get('isolated_identical'))} "
            "bit-identical (KL exactly 0); "
            f"{_fmt_count(divergence.get('shared_checks'))} checks of shared-layer members, "
            f"largest KL {_fmt_metric(divergence.get('shared_max_kl'))}.</p>"
        )
    drill = _mapping(gates.get("drill"))
    if drill:
        parts.append(_drill_table(drill))
    incidents = _dicts(gates.get("incidents"))
    if incidents:
        parts.append(_incidents_table(incidents))
    if not parts:
        return ""
    return "<section>\n<h2>Release gates</h2>\n" + "\n".join(parts) + "\n</section>"


# --------------------------------------------------------------------------- public API


def render_report(result: dict[str, Any]) -> str:
    """The complete HTML document for a demo ``result`` (see :func:`silolearn.demo.run_demo`)."""
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    body = "\n".join(
        part
        for part in (
            _header(result),
            _tenants_section(result),
            _plots_section(result),
            _rounds_section(result),
            _versions_section(result),
            _privacy_section(result),
            _gates_section(result),
            f"<footer>\n<p>{html.escape(FOOTER, quote=False)}</p>\n</footer>",
        )
        if part
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(TITLE)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


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
