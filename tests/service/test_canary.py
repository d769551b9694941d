"""A canary rollout through a real server (issue 17, acceptance 4): each predict request is
answered by the version its request key is assigned to, the same one every time; a stable
request gets exactly what the stable version answers, never the canary's; feedback is
counted per version in the rollout shown with the versions; /metrics labels serving by
version; a rollback over the API ends the canary; the service's rollout tick rolls a canary
back when an incident opens, without any feedback arriving. The rollout's own decisions, on
real feedback, are tests/operations/test_rollout.py's."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service_helpers import SERVER_ENV, Server, grant_tokens, start_server, stop_server
from silolearn import Workspace
from silolearn.config import CONFIG_FILE
from silolearn.datasets import rotten_tomatoes
from silolearn.monitoring.incidents import Incidents
from silolearn.pipeline import Trainer
from silolearn.serving.predictor import Predictor

TENANT = "alpha"
ENV = {
    **SERVER_ENV,
    "SILOLEARN_DRIFT__ENABLED": "false",
    "SILOLEARN_ROLLOUT__TICK_SECONDS": "0.5",
}
"""The drift monitor, which embeds each version's training window through the same
micro-batcher, is not what these tests are about: off, so that they stay quick. The
rollouts are ticked often, so that the tick's test does not wait long."""
POLICY = """
[rollout.tenants.alpha]
mode = "canary"
steps = [0.5, 1.0]
"""


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    data = [r for r in rotten_tomatoes() if r["label"] in ("fresh", "rotten")]
    return [data[i] for i in random.Random(23).sample(range(len(data)), 360)]


@pytest.fixture(scope="module")
def canary_server(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]
) -> Iterator[Server]:
    """alpha serves v1 (60 records) and, as a canary at 50%, v2 (300 records)."""
    root = tmp_path_factory.mktemp("canary")
    path = root / "ws"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        Workspace.init(path, actor="test").close()
        with (path / CONFIG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(POLICY)
        with Workspace.open(path, actor="test") as ws:
            ws.create_tenant(TENANT)
            ws.tenant(TENANT).ingest(rows[:60])
            assert Trainer(ws).train(TENANT, seed=1).status == "active"
            ws.tenant(TENANT).ingest(rows[60:300])
            assert Trainer(ws).train(TENANT, seed=2).status == "canary"
            roles = ("reader", "contributor", "trainer")
            tokens = grant_tokens(ws, [*((TENANT, role) for role in roles), (None, "admin")])
        running = start_server(path, root / "server.log", ENV)
    running.tokens = tokens
    try:
        yield running
    finally:
        stop_server(running)


def _predict(server: Server, texts: list[str], key: str | None, *, header: bool = False) -> Any:
    body: dict[str, Any] = {"texts": texts}
    headers = {}
    if key is not None and header:
        headers["X-Request-Key"] = key
    elif key is not None:
        body["request_key"] = key
    answer = server.call(
        "POST",
        f"/v1/tenants/{TENANT}/predict",
        server.token(TENANT, "reader"),
        json=body,
        headers=headers,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_requests_are_sticky_per_key_and_stable_never_sees_the_canary(
    canary_server: Server, rows: list[dict[str, Any]]
) -> None:
    server = canary_server
    pool = rows[300:]
    texts = [r["text"] for r in pool[:3]]
    with Workspace.open(server.path, actor="test") as ws:
        own = {v: Predictor(ws).answer_batch([((TENANT, v), texts)])[0] for v in (1, 2)}
    seen: dict[str, int] = {}
    for i in range(12):
        key = f"customer-{i}"
        for attempt in range(2):
            predictions = _predict(server, texts, key, header=attempt == 1)
            versions = {p["version"] for p in predictions}
            assert len(versions) == 1  # every text of a request: one version
            version = versions.pop()
            assert seen.setdefault(key, version) == version  # sticky, body or header
            expected = own[version]
            assert not isinstance(expected, Exception)
            # exactly what that version answers: a stable request never gets the canary's
            assert [p["label"] for p in predictions] == [p.label for p in expected]
            for got, want in zip(predictions, expected, strict=True):
                assert all(
                    abs(got["probabilities"][k] - want.probabilities[k]) < 1e-4
                    for k in want.probabilities
                )
    assert set(seen.values()) == {1, 2}  # at 50%, 12 keys reach both (all but 1 in 2,048)
    metrics = server.call("GET", "/metrics", server.token(None, "admin")).text
    for version in (1, 2):
        assert re.search(
            rf'silolearn_predictions_total\{{[^}}]*tenant="{TENANT}"[^}}]*version="{version}"',
            metrics,
        ) or re.search(
            rf'silolearn_predictions_total\{{[^}}]*version="{version}"[^}}]*tenant="{TENANT}"',
            metrics,
        ), metrics[:2000]


def test_feedback_is_counted_per_version_in_the_rollout_shown_with_the_versions(
    canary_server: Server, rows: list[dict[str, Any]]
) -> None:
    server = canary_server
    trainer = server.token(TENANT, "trainer")
    before = _rollout_of(server, 2)
    sent = {1: 0, 2: 0}
    for i, row in enumerate(rows[306:318]):
        (prediction,) = _predict(server, [row["text"]], f"reviewer-{i}")
        given = server.call(
            "POST",
            f"/v1/tenants/{TENANT}/feedback",
            server.token(TENANT, "contributor"),
            json={"prediction_id": prediction["prediction_id"], "label": row["label"]},
        )
        assert given.status_code == 200, given.text
        sent[prediction["version"]] += 1
    after = _rollout_of(server, 2)
    assert after["role"] == "canary" and after["state"] == "running" and after["share"] == 0.5
    for version, arm in ((2, "canary"), (1, "stable")):
        counted = after["tallies"][arm]["feedback"] - before["tallies"][arm]["feedback"]
        assert counted == sent[version]
    listed = server.call("GET", f"/v1/tenants/{TENANT}/versions", trainer).json()
    stable = next(v for v in listed if v["version"] == 1)
    assert stable["status"] == "active"
    assert stable["rollout"] == {
        "role": "stable",
        "id": after["id"],
        "state": "running",
        "share": 0.5,
        "canary": 2,
    }


def _rollout_of(server: Server, version: int) -> dict[str, Any]:
    shown = server.call(
        "GET", f"/v1/tenants/{TENANT}/versions/{version}", server.token(TENANT, "trainer")
    )
    assert shown.status_code == 200, shown.text
    rollout: dict[str, Any] = shown.json()["rollout"]
    return rollout


def test_a_bad_request_key_is_a_422_with_a_json_body(canary_server: Server) -> None:
    for key in ("", "k" * 257, 12):
        answer = canary_server.call(
            "POST",
            f"/v1/tenants/{TENANT}/predict",
            canary_server.token(TENANT, "reader"),
            json={"texts": ["fine"], "request_key": key},
        )
        assert answer.status_code == 422 and answer.json()["error"], answer.text


def test_a_rollback_over_the_api_ends_the_canary(canary_server: Server) -> None:
    server = canary_server
    trainer = server.token(TENANT, "trainer")
    rolled = server.call("POST", f"/v1/tenants/{TENANT}/rollback", trainer, json={})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1 and rolled.json()["status"] == "active"
    versions = {
        v["version"]: v
        for v in server.call("GET", f"/v1/tenants/{TENANT}/versions", trainer).json()
    }
    assert versions[2]["status"] == "rejected"
    assert versions[2]["rollout"]["state"] == "rolled_back"
    assert versions[1]["rollout"] is None
    for i in range(8):
        (prediction,) = _predict(server, ["A delight."], f"customer-{i}")
        assert prediction["version"] == 1


def test_the_service_tick_rolls_a_canary_back_when_an_incident_opens_without_feedback(
    canary_server: Server, rows: list[dict[str, Any]]
) -> None:
    server = canary_server
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        with Workspace.open(server.path, actor="test") as ws:
            ws.tenant(TENANT).ingest(rows[330:])
            canary = Trainer(ws).train(TENANT, seed=3)
            assert canary.status == "canary", canary.decision
            assert canary.version is not None
            # no feedback at all: it holds
            assert _rollout_of(server, canary.version)["state"] == "running"
            Incidents(ws).open(
                TENANT,
                severity="SEV3",
                kind="drift",
                summary="served texts moved",
                evidence={},
                actions=[],
            )
    deadline = time.monotonic() + 300.0  # a bound for a loaded machine, not a measurement
    rollout = _rollout_of(server, canary.version)
    while rollout["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        rollout = _rollout_of(server, canary.version)
    assert rollout["state"] == "rolled_back", rollout
    assert rollout["evidence"]["reason"] == "an incident opened on the tenant"
    assert [i["kind"] for i in rollout["evidence"]["incidents"]] == ["drift"]
    assert all(rollout["tallies"][arm]["feedback"] == 0 for arm in ("canary", "stable"))
    trainer = server.token(TENANT, "trainer")
    versions = {
        v["version"]: v["status"]
        for v in server.call("GET", f"/v1/tenants/{TENANT}/versions", trainer).json()
    }
    assert versions[canary.version] == "rejected" and versions[1] == "active"
    with Workspace.open(server.path, actor="test") as ws:
        (event,) = [
            e
            for e in ws.audit.events(tenant=TENANT, action="rollout.rollback")
            if e.details["rollout"] == rollout["id"]
        ]
    assert event.details["automatic"] is True and event.actor == "service"
