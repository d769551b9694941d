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
    """Pixel geometry of a plot: the data area and the round range on the x axis."""

    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    first: int
    last: int

    def x(self, round_number: int) -> float:
        if self.last == self.first:
            return (self.left + self.right) / 2
        pad = 18.0
        span = self.right - self.left - 2 * pad
        return self.left + pad + (round_number - self.first) / (self.last - self.first) * span

    def y(self, value: float) -> float:
        value = min(1.0, max(0.0, value))
        return self.bottom - value * (self.bottom - self.top)


def _xy(value: float) -> str:
    return f"{value:.2f}"


def _grid(frame: _Frame, label: str) -> list[str]:
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
    stride = max(1, math.ceil((frame.last - frame.first + 1) / 12))
    for number in range(frame.first, frame.last + 1, stride):
        x = _xy(frame.x(number))
        parts.append(
            f'<line x1="{x}" y1="{_xy(frame.bottom)}" x2="{x}" y2="{_xy(frame.bottom + 5)}" '
            'stroke="#57606a" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{x}" y="{_xy(frame.bottom + 18)}" text-anchor="middle">{number}</text>'
        )
    parts.append(
        f'<rect x="{_xy(frame.left)}" y="{_xy(frame.top)}" width="{_xy(frame.right - frame.left)}"'
        f' height="{_xy(frame.bottom - frame.top)}" fill="none" stroke="#57606a" '
        'stroke-width="1"/>'
    )
    middle = _xy((frame.left + frame.right) / 2)
    parts.append(
        f'<text class="axis-label" x="{middle}" y="{frame.height - 6}" '
        'text-anchor="middle">round</text>'
    )
    centre = _xy((frame.top + frame.bottom) / 2)
    parts.append(
        f'<text class="axis-label" x="14" y="{centre}" text-anchor="middle" '
        f'transform="rotate(-90 14 {centre})">{_e(label)}</text>'
    )
    return parts


_KIND_NOTE = {
    "active": "new version promoted",
    "rejected": "candidate rejected, previous version serves",
    "failed": "training failed, previous version serves",
    "kept": "previous version serves",
}


def _marker(series: _Series, point: _Point, frame: _Frame, label: str) -> str:
    x, y = _xy(frame.x(point.round)), _xy(frame.y(point.value))
    title = (
        f"<title>{_e(series.tenant)}, round {point.round}: {label} {point.value:.3f} "
        f"({_KIND_NOTE[point.kind]})</title>"
    )
    data = f'data-round="{point.round}" data-value="{point.value:.4f}"'
    if point.kind == "active":
        return (
            f'<circle class="marker active" cx="{x}" cy="{y}" r="4.5" '
            f'fill="{series.colour}" {data}>{title}</circle>'
        )
    if point.kind == "failed":
        size = 8.0
        return (
            f'<rect class="marker failed" x="{_xy(frame.x(point.round) - size / 2)}" '
            f'y="{_xy(frame.y(point.value) - size / 2)}" width="{size}" height="{size}" '
            f'fill="#fff" stroke="{series.colour}" stroke-width="2" {data}>{title}</rect>'
        )
    return (
        f'<circle class="marker {point.kind}" cx="{x}" cy="{y}" r="5" fill="#fff" '
        f'stroke="{series.colour}" stroke-width="2" {data}>{title}</circle>'
    )


def _line(series: _Series, frame: _Frame, label: str) -> list[str]:
    if not series.points:
        return []
    points = " ".join(
        f"{_xy(frame.x(point.round))},{_xy(frame.y(point.value))}" for point in series.points
    )
    parts = [
        f'<g class="series" data-tenant="{_e(series.tenant)}">',
        f'<polyline points="{points}" fill="none" stroke="{series.colour}" '
        'stroke-width="2.2" stroke-linejoin="round" stroke-linecap="round"/>',
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
        parts.append(
            f'<line x1="{_xy(x)}" y1="{_xy(y)}" x2="{_xy(x + 22)}" y2="{_xy(y)}" '
            f'stroke="{item.colour}" stroke-width="2.2"/>'
            f'<circle cx="{_xy(x + 11)}" cy="{_xy(y)}" r="4" fill="{item.colour}"/>'
            f'<text x="{_xy(x + 30)}" y="{_xy(y)}" dominant-baseline="middle">'
            f"<title>{_e(item.tenant)}</title>{_e(_short(item.tenant))}</text>"
        )
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
    frame = _Frame(
        width=width,
        height=height,
        left=52.0,
        right=552.0,
        top=14.0,
        bottom=float(height - 40),
        first=min(numbers, default=1),
        last=max(numbers, default=1),
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-metric="{_e(metric)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="serving {_e(label)} per tenant after each round" '
        'font-family="system-ui, sans-serif" font-size="12" fill="#1f2328">',
        f"<title>Serving {_e(label)} per tenant after each round</title>",
        *_grid(frame, label),
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


def _change(entry: Mapping[str, Any], metric: str) -> str:
    before, after = entry.get(f"{metric}_before"), entry.get(f"{metric}_after")
    text = f"{_fmt_metric(before)} {ARROW} {_fmt_metric(after)}"
    b, a = _num(before), _num(after)
    if a is None or b is None:
        return text
    delta = a - b
    css = "up" if delta > 0 else "down" if delta < 0 else "muted"
    return f'{text} <span class="{css}">({delta:+.3f})</span>'


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
