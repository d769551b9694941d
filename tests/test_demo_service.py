"""The demo's service path against a real `silolearn serve` process: tokens from `silolearn
access grant`, rounds over the API, production traffic through predict, feedback that the
next round's lineage counts, /metrics that match what was sent, and a graceful SIGTERM.

Two of the demo's tenants on small samples of their real datasets. Their gates judge
quality on far fewer eval records than the demo's, so they are off here (as in the API
tests): this is about the path through the service, not about the gates.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from service_helpers import SERVER_ENV
from silolearn import Workspace
from silolearn.audit.log import utcnow
from silolearn.datasets import DATASETS, sample
from silolearn.demo import production
from silolearn.demo.client import ServiceClient, error_of
from silolearn.demo.run import grant_tokens
from silolearn.errors import (
    AccessDenied,
    NotFoundError,
    ServiceUnavailable,
    TenantNotFound,
    WorkspaceError,
)

TENANTS = ("critics", "health-desk")
PER_TENANT = 160
TRAFFIC = 48
"""Half comes back as feedback: with at least 9 of those 24 routed to training, the round's
replay sample (3 for every 7 new records) lets the self-confirmed bound (20% of what is
trained on) keep at least one of them even when the version answered every one right."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = tmp_path_factory.mktemp("demo-service") / "ws"
    streams = {name: sample(DATASETS[name](), PER_TENANT, seed=7) for name in TENANTS}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SERVER_ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            ingested = {}
            for name in TENANTS:
                ws.create_tenant(name)
                ingested[name] = ws.tenant(name).ingest(streams[name]).to_dict()
        client = ServiceClient.start(path)
        try:
            grant_tokens(client, list(TENANTS))
            first = production.api_rounds(client, TENANTS, ingested, cutoff=utcnow())
            traffic = production.held_out_traffic(streams, 1, per_round=TRAFFIC)
            served = production.serve_round(client, {n: traffic[n][0] for n in TENANTS})
            second = production.api_rounds(client, TENANTS, {}, cutoff=utcnow())
            metrics = production.metrics_summary(client.metrics())
            yield {
                "client": client,
                "streams": streams,
                "traffic": traffic,
                "first": {e["tenant"]: e for e in first},
                "served": {s["tenant"]: s for s in served},
                "second": {e["tenant"]: e for e in second},
                "metrics": metrics,
            }
        finally:
            code = client.stop()
            log = client.log.read_text()
            assert code in (0, -signal.SIGTERM), log[-3000:]
            assert "Application shutdown complete" in log, log[-3000:]


def test_rounds_over_the_api_make_serving_versions(demo: dict[str, Any]) -> None:
    for name in TENANTS:
        entry = demo["first"][name]
        assert entry["status"] == "active" and entry["version"] == 1, entry
        assert entry["new_records"] > 0 and entry["feedback_records"] == 0
        assert entry["seconds"] is not None and entry["seconds"] > 0


def test_traffic_is_held_out_and_answered_by_the_serving_version(demo: dict[str, Any]) -> None:
    for name in TENANTS:
        sent = demo["traffic"][name][0]
        assert len(sent) == TRAFFIC
        assert not {r["id"] for r in sent} & {r["id"] for r in demo["streams"][name]}
        served = demo["served"][name]
        assert served["served"] == TRAFFIC and served["versions"] == [1], served
        assert served["requests"] == -(-TRAFFIC // production.REQUEST_TEXTS)
        assert served["feedback"] == round(TRAFFIC * production.FEEDBACK_SHARE)
        stored = sum(served[f"feedback_{k}"] for k in ("train", "eval", "refused", "duplicates"))
        assert stored == served["feedback"]
        assert served["example"]["version"] == 1


def test_the_next_round_learns_from_the_feedback(demo: dict[str, Any]) -> None:
    for name in TENANTS:
        served, entry = demo["served"][name], demo["second"][name]
        assert served["feedback_train"] > 0
        assert entry["version"] == 2, entry
        # nothing but feedback arrived between the rounds: every new record is one, and
        # what the round left out is the self-confirmed excess over the bound
        assert entry["new_records"] == entry["feedback_records"] > 0
        left_out = entry["feedback_left_out"]
        assert entry["feedback_records"] + left_out == served["feedback_train"]
        confirmed = served["feedback_train"] - served["feedback_corrections"]
        assert left_out <= confirmed


def test_metrics_count_what_was_sent(demo: dict[str, Any]) -> None:
    metrics = demo["metrics"]
    by_key = {(s["tenant"], s["version"]): s for s in metrics["serving"]}
    for name in TENANTS:
        row, served = by_key[(name, 1)], demo["served"][name]
        assert row["predictions"] == TRAFFIC
        assert row["requests"] == served["requests"]
        assert row["mean_latency_ms"] > 0
        assert row["feedback_accuracy"] == pytest.approx(served["feedback_accuracy"])
        assert (
            metrics["rounds"][name].get("promoted", 0) + metrics["rounds"][name].get("rejected", 0)
            == 2
        )
    assert set(metrics["open_incidents"]) == {"SEV1", "SEV2", "SEV3"}


def test_tokens_hold_only_their_purpose(demo: dict[str, Any]) -> None:
    client: ServiceClient = demo["client"]
    app, trainer = client.token("critics", "app"), client.token("critics", "trainer")
    with pytest.raises(AccessDenied):  # the application's token starts no round
        client.call("POST", "/v1/tenants/critics/rounds", app, json={})
    with pytest.raises(AccessDenied):  # the trainer's token predicts nothing
        client.call("POST", "/v1/tenants/critics/predict", trainer, json={"texts": ["x"]})
    with pytest.raises(NotFoundError):  # another tenant does not exist for it
        client.call("POST", "/v1/tenants/health-desk/predict", app, json={"texts": ["x"]})


def test_error_bodies_become_the_typed_errors_of_errors_py() -> None:
    body = {"error": "TenantNotFound", "message": "no tenant 'x'", "details": {"tenant": "x"}}
    error = error_of(404, body, "GET /v1/tenants/x")
    assert isinstance(error, TenantNotFound)
    assert error.details == {"tenant": "x", "status": 404}
    assert "no tenant 'x'" in str(error)
    for junk in ({"error": "SystemExit"}, {"error": None}, {}):
        assert type(error_of(502, junk, "GET /")) is ServiceUnavailable


def test_a_server_that_cannot_start_is_an_error_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="silolearn serve exited with code"):
        ServiceClient.start(tmp_path / "not-a-workspace", log=tmp_path / "serve.log")


def test_the_tables_print_rounds_traffic_and_metrics(demo: dict[str, Any]) -> None:
    console = Console(record=True, width=240)
    console.print(production.round_table(2, 2, list(demo["second"].values())))
    console.print(production.traffic_table("production after round 1", demo["served"].values()))
    for table in production.metrics_tables(demo["metrics"]):
        console.print(table)
    lines = console.export_text().splitlines()
    for name in TENANTS:
        entry, served = demo["second"][name], demo["served"][name]
        row = next(line for line in lines if line.startswith(f"│ {name} ") and "promoted" in line)
        left_out = entry["feedback_left_out"]
        cell = f"{entry['feedback_records']}" + (f" ({left_out} left out)" if left_out else "")
        assert cell in row and "v2" in row
        row = next(line for line in lines if line.startswith(f"│ {name} ") and "requests" in line)
        assert f"{TRAFFIC} in {served['requests']} requests" in row
        assert f"{served['feedback_train']}/{served['feedback_eval']}" in row
        row = next(line for line in lines if line.startswith(f"│ {name} ") and " ms " in line)
        assert " v1 " in row and f" {TRAFFIC} " in row
