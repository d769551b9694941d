"""The scheduler in a real `silolearn serve` process: GET/PUT /v1/tenants/{t}/schedule (an
admin or a trainer of the tenant; another tenant's is a tenant that does not exist; bad
input a 422 with its JSON body), and a due round started by the service's own scheduler
thread as a background job (the path of POST /v1/tenants/{t}/rounds)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from service_helpers import (
    SERVER_ENV,
    Server,
    audit_verify,
    grant_tokens,
    start_server,
    stop_server,
)
from silolearn import Workspace
from silolearn.datasets import bbc_news, sample

ENV = {**SERVER_ENV, "SILOLEARN_SCHEDULE__TICK_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("schedule")
    path = root / "ws"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            ws.create_tenant("alpha")
            ws.create_tenant("beta")
            ws.tenant("alpha").ingest(sample(bbc_news(), 120, seed=4))
            tokens = grant_tokens(
                ws,
                [("alpha", "trainer"), ("alpha", "reader"), ("beta", "trainer"), (None, "admin")],
            )
        running = start_server(path, root / "server.log", ENV)
    running.tokens = tokens
    try:
        yield running
    finally:
        stop_server(running)
        audit_verify(path)


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    return body


def test_schedule_by_role_and_tenant(server: Server) -> None:
    trainer = server.token("alpha", "trainer")
    shown = server.call("GET", "/v1/tenants/alpha/schedule", trainer)
    assert shown.status_code == 200, shown.text
    assert shown.json()["manual_only"] is True and shown.json()["decisions"] == []
    admin = server.call("GET", "/v1/tenants/alpha/schedule", server.token(None, "admin"))
    assert admin.status_code == 200 and admin.json()["tenant"] == "alpha"
    _error(
        server.call("GET", "/v1/tenants/alpha/schedule", server.token("alpha", "reader")),
        403,
        "AccessDenied",
    )
    # another tenant's schedule is a tenant that does not exist, reading or writing
    other = server.token("beta", "trainer")
    missing = _error(server.call("GET", "/v1/tenants/alpha/schedule", other), 404, "TenantNotFound")
    nobody = _error(server.call("GET", "/v1/tenants/nobody/schedule", other), 404, "TenantNotFound")
    assert missing["message"].replace("alpha", "x") == nobody["message"].replace("nobody", "x")
    _error(
        server.call("PUT", "/v1/tenants/alpha/schedule", other, json={"triggers": []}),
        404,
        "TenantNotFound",
    )
    assert server.call("GET", "/v1/tenants/alpha/schedule").status_code == 401


def test_bad_policies_are_refused_and_change_nothing(server: Server) -> None:
    trainer = server.token("beta", "trainer")
    for body, words in [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"triggers": ["schedule"]}, "needs a cron"),
        ({"triggers": ["hourly"]}, "triggers"),
        ({"min_new_records": 0}, "min_new_records"),
        ({"every": "1d"}, "every"),
    ]:
        refused = _error(
            server.call("PUT", "/v1/tenants/beta/schedule", trainer, json=body), 422, "InvalidInput"
        )
        assert words in refused["message"], refused
    assert server.call("GET", "/v1/tenants/beta/schedule", trainer).json()["override"] == {}
    changed = server.call(
        "PUT",
        "/v1/tenants/beta/schedule",
        server.token(None, "admin"),
        json={"triggers": ["schedule"], "cron": "0 3 * * 1", "backoff_minutes": 10},
    )
    assert changed.status_code == 200, changed.text
    view = changed.json()
    assert view["policy"]["triggers"] == ["schedule"]
    assert view["state"]["next_scheduled"].endswith("T03:00:00.000000Z")
    reset = server.call("PUT", "/v1/tenants/beta/schedule", trainer, json={"reset": True})
    assert reset.status_code == 200 and reset.json()["manual_only"] is True


def test_service_scheduler_starts_a_due_round_as_a_job(server: Server) -> None:
    trainer = server.token("alpha", "trainer")
    set_ = server.call(
        "PUT",
        "/v1/tenants/alpha/schedule",
        trainer,
        json={"triggers": ["volume"], "min_new_records": 50},
    )
    assert set_.status_code == 200, set_.text
    # the service's scheduler ticks on its own; wait for its decision to be settled
    while True:
        decisions = server.call("GET", "/v1/tenants/alpha/schedule", trainer).json()["decisions"]
        if decisions and decisions[0]["outcome"] is not None:
            break
        time.sleep(0.5)
    assert len(decisions) == 1
    decision = decisions[0]
    assert (decision["decision"], decision["trigger"], decision["outcome"]) == (
        "trigger",
        "volume",
        "active",
    )
    assert decision["evidence"]["new_labelled"] >= 50
    job = server.call("GET", f"/v1/jobs/{decision['job']}", trainer).json()
    assert job["state"] == "succeeded" and job["started_by"] == "token:scheduler"
    assert job["version"] == decision["version"] == 1
    with Workspace.open(server.path, actor="test") as ws:
        audited = ws.audit.events(tenant="alpha", action="schedule")
    assert [e.action for e in audited] == [
        "schedule.policy",
        "schedule.trigger",
        "schedule.finished",
    ]
    assert audited[1].object == decision["id"]
    assert audited[1].details["evidence"]["new_labelled"] == decision["evidence"]["new_labelled"]


def test_dashboard_shows_the_schedule(server: Server) -> None:
    """The tenant's page (a trainer's cookie) has the schedule panel: triggers and the
    scheduler's decisions, as the API shows them."""
    trainer = server.token("alpha", "trainer")
    view = server.call("GET", "/v1/tenants/alpha/schedule", trainer).json()
    page = server.client.get(
        server.url + "/dashboard/tenants/alpha",
        headers={"Cookie": f"silolearn_token={trainer}"},
        follow_redirects=False,
    )
    assert page.status_code == 200, page.text[:500]
    assert '<section id="schedule">' in page.text
    assert f'<strong id="schedule-triggers">{", ".join(view["policy"]["triggers"])}' in page.text
    for decision in view["decisions"]:
        assert f"<td>{decision['at']}</td><td>{decision['decision']}</td>" in page.text
