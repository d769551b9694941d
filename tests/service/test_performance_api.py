"""Performance monitoring over the API, the CLI and /metrics, against a real server: feedback
naming served predictions is counted once per version, what was served feeds the estimate
without labels (marked as an estimate), the tenant's auditor, trainer and admin read it and
no one else, and `silolearn monitor show` shows the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import run_cli
from service_helpers import SERVER_ENV, Server, start_server, stop_server
from silolearn.datasets import rotten_tomatoes, sample


def _served(server: Server, texts: list[str]) -> list[dict[str, object]]:
    answer = server.call(
        "POST", "/v1/tenants/alpha/predict", server.token("alpha", "reader"), json={"texts": texts}
    )
    assert answer.status_code == 200, answer.text
    predictions: list[dict[str, object]] = answer.json()["predictions"]
    return predictions


def test_feedback_is_counted_per_version_and_read_by_the_tenants_overseers_only(
    server: Server,
) -> None:
    rows = sample(rotten_tomatoes(), 400, seed=23)[-40:]
    predictions = _served(server, [r["text"] for r in rows])
    contributor = server.token("alpha", "contributor")
    right = 0
    for row, prediction in zip(rows, predictions, strict=True):
        given = server.call(
            "POST",
            "/v1/tenants/alpha/feedback",
            contributor,
            json={
                "prediction_id": prediction["prediction_id"],
                "label": row["label"],
                "meta": {"channel": "web" if right % 2 else "app"},
            },
        )
        assert given.status_code == 200, given.text
        right += prediction["label"] == row["label"]
    again = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        contributor,
        json={"prediction_id": predictions[0]["prediction_id"], "label": rows[0]["label"]},
    )
    assert again.status_code == 200 and again.json()["accepted"] == 0

    report = server.call("GET", "/v1/tenants/alpha/performance", server.token("alpha", "auditor"))
    assert report.status_code == 200, report.text
    version = predictions[0]["version"]
    entry = next(v for v in report.json()["versions"] if v["version"] == version)
    fed = entry["feedback"]
    assert fed["items"] == len(rows)  # the repeat is not counted twice
    assert abs(fed["accuracy"] - right / len(rows)) < 1e-9
    assert 0.0 <= fed["macro_f1"] <= 1.0
    assert not fed["chart"]["armed"]  # 40 items are a burn-in, never an alarm
    estimate = entry["estimate"]
    assert estimate["estimate"] is True and estimate["served"] >= len(rows)
    assert 0.0 < estimate["accuracy"] <= 1.0 and isinstance(estimate["reliable"], bool)

    for role in ("trainer", "admin"):
        assert server.call("GET", "/v1/tenants/alpha/performance", server.token("alpha", role))
    for role in ("reader", "contributor"):
        refused = server.call("GET", "/v1/tenants/alpha/performance", server.token("alpha", role))
        assert refused.status_code == 403 and "error" in refused.json()
    other = server.call("GET", "/v1/tenants/alpha/performance", server.token("beta", "auditor"))
    missing = server.call("GET", "/v1/tenants/nobody/performance", server.token("beta", "auditor"))
    assert other.status_code == missing.status_code == 404

    scraped = server.call("GET", "/metrics", server.token(None, "admin")).text
    assert f'silolearn_performance_accuracy{{tenant="alpha",version="{version}"}}' in scraped
    assert f'silolearn_performance_estimated_accuracy{{tenant="alpha",version="{version}"}}' in (
        scraped
    )

    shown = run_cli("monitor", "show", "alpha", "--workspace", str(server.path), "--json")
    assert shown.returncode == 0, shown.stderr
    versions = json.loads(shown.stdout)["performance"]
    assert next(v for v in versions if v["version"] == version)["feedback"]["items"] == len(rows)
    human = run_cli("monitor", "show", "alpha", "--workspace", str(server.path))
    assert human.returncode == 0 and "performance of alpha" in human.stdout
    unknown = run_cli("monitor", "show", "nobody", "--workspace", str(server.path), "--json")
    assert unknown.returncode != 0 and "nobody" in unknown.stderr


def test_feedback_meta_must_be_a_flat_mapping_of_plain_values(server: Server) -> None:
    prediction = _served(server, ["a film of quiet, patient beauty"])[0]
    refused = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        server.token("alpha", "contributor"),
        json={
            "prediction_id": prediction["prediction_id"],
            "label": "fresh",
            "meta": {"channel": {"nested": True}},
        },
    )
    assert refused.status_code == 422 and "error" in refused.json()


def test_estimate_switched_off_keeps_no_sums_while_feedback_is_still_counted(
    server: Server, tmp_path: Path
) -> None:
    """``[performance] estimate = false`` (a second server on the same workspace): what it
    serves adds nothing to the estimate's sums, feedback on it is counted as before; the
    first server, on the default, adds its predictions."""

    def version_entry(version: object) -> dict[str, Any]:
        report = server.call(
            "GET", "/v1/tenants/alpha/performance", server.token("alpha", "auditor")
        )
        assert report.status_code == 200, report.text
        entry: dict[str, Any] = next(
            v for v in report.json()["versions"] if v["version"] == version
        )
        return entry

    rows = sample(rotten_tomatoes(), 400, seed=29)[-6:]
    texts = [r["text"] for r in rows]
    version = _served(server, texts[:1])[0]["version"]
    before = version_entry(version)
    off = start_server(
        server.path,
        tmp_path / "estimate-off.log",
        {**SERVER_ENV, "SILOLEARN_PERFORMANCE__ESTIMATE": "false"},
    )
    try:
        answer = off.call(
            "POST",
            "/v1/tenants/alpha/predict",
            server.token("alpha", "reader"),
            json={"texts": texts[1:4]},
        )
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert {p["version"] for p in predictions} == {version}
        given = off.call(
            "POST",
            "/v1/tenants/alpha/feedback",
            server.token("alpha", "contributor"),
            json={"prediction_id": predictions[0]["prediction_id"], "label": rows[1]["label"]},
        )
        assert given.status_code == 200 and given.json()["accepted"] == 1, given.text
    finally:
        stop_server(off)
    during = version_entry(version)
    assert during["estimate"]["served"] == before["estimate"]["served"]
    assert during["feedback"]["items"] == before["feedback"]["items"] + 1

    _served(server, texts[4:])
    after = version_entry(version)
    assert after["estimate"]["served"] == during["estimate"]["served"] + len(texts[4:])
