"""The HTTP API against a real server process (tests/service/conftest.py): who may do what,
tokens that expire or are revoked, every denial audited, bad input as 4xx JSON with nothing
accepted lost, predictions and feedback, rounds as jobs, versions switched without a
restart."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service_helpers import TENANTS, Server
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.records import Record
from silolearn.storage.scope import Purpose
from silolearn.tenancy.access import ROLES

OTHER = {"alpha": "beta", "beta": "alpha"}
DENIALS = {(403, "AccessDenied"), (404, "TenantNotFound"), (404, "NotFoundError")}


def _record(i: str, label: str = "fresh") -> dict[str, Any]:
    return {
        "id": i,
        "text": f"a record {i} sent over the API, with a few words in it",
        "label": label,
        "timestamp": "2025-06-01T12:00:00Z",
    }


_counter = iter(range(1_000_000))


def _fresh() -> str:
    return f"api-{next(_counter)}-{time.monotonic_ns()}"


@dataclass(frozen=True)
class Endpoint:
    route: str
    """The route as /openapi.json names it: method and path template."""
    roles: frozenset[str]
    """The roles of a tenant's token that may call it."""
    ok: dict[str, int]
    """The status each tenant's own token of one of ``roles`` gets (per tenant: alpha
    serves a version, beta none)."""
    request: Callable[[Server, str, str], tuple[str, str, dict[str, Any]]]
    """(server, tenant, token) -> (method, path, httpx keyword arguments)."""
    scoped: bool = True
    """Names a tenant (in its path or body): another tenant's token gets its 404. An
    unscoped route names none and shows a tenant's token its own tenant only."""

    @property
    def name(self) -> str:
        return self.route


def _both(status: int) -> dict[str, int]:
    return dict.fromkeys(TENANTS, status)


def _grant_to_revoke(server: Server, tenant: str) -> str:
    with Workspace.open(server.path, actor="test") as ws:
        return (
            ws.access()
            .grant(tenant=tenant, roles=["reader"], duration=timedelta(hours=1), reason="x")
            .grant.id
        )


def _job_of(server: Server, tenant: str) -> str:
    with Workspace.open(server.path, actor="test") as ws:
        row = ws.conn.execute(
            "SELECT id FROM service_jobs WHERE tenant = ? ORDER BY created_at LIMIT 1", (tenant,)
        ).fetchone()
    if row is not None:
        return str(row[0])
    # beta has no job yet: its trainer starts one, on no records (a cutoff before them all),
    # which fails at once
    started = server.call(
        "POST",
        f"/v1/tenants/{tenant}/rounds",
        server.token(tenant, "trainer"),
        json={"cutoff": "2000-01-01T00:00:00Z"},
    )
    assert started.status_code == 202, started.text
    server.wait_for_job(started.json()["id"], server.token(tenant, "trainer"))
    return str(started.json()["id"])


ALL = frozenset(ROLES)
MONITOR = frozenset({"auditor", "trainer", "admin"})
"""Who reads a tenant's monitoring (performance, drift, schedule): labels, no texts."""
T = "/v1/tenants/{tenant}"

ENDPOINTS = [
    Endpoint("GET /healthz", ALL, _both(200), lambda s, t, k: ("GET", "/healthz", {}), False),
    Endpoint("GET /readyz", ALL, _both(200), lambda s, t, k: ("GET", "/readyz", {}), False),
    Endpoint("GET /v1/whoami", ALL, _both(200), lambda s, t, k: ("GET", "/v1/whoami", {}), False),
    Endpoint(
        f"POST {T}/predict",
        frozenset({"reader"}),
        {"alpha": 200, "beta": 404},
        lambda s, t, k: ("POST", f"/v1/tenants/{t}/predict", {"json": {"texts": ["a fine film"]}}),
    ),
    Endpoint(
        f"POST {T}/feedback",
        frozenset({"contributor"}),
        _both(200),
        lambda s, t, k: ("POST", f"/v1/tenants/{t}/feedback", {"json": _record(_fresh())}),
    ),
    Endpoint(
        f"POST {T}/records",
        frozenset({"contributor"}),
        _both(200),
        lambda s, t, k: (
            "POST",
            f"/v1/tenants/{t}/records",
            {"json": {"records": [_record(_fresh())]}},
        ),
    ),
    Endpoint(
        f"GET {T}/label-queue",
        frozenset({"contributor", "trainer", "auditor", "admin"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/label-queue", {"params": {"limit": 2}}),
    ),
    # a seed out of range: authorised callers get a 422 and no round is started
    Endpoint(
        f"POST {T}/rounds",
        frozenset({"trainer"}),
        _both(422),
        lambda s, t, k: ("POST", f"/v1/tenants/{t}/rounds", {"json": {"seed": -1}}),
    ),
    Endpoint(
        "GET /v1/jobs/{job_id}",
        frozenset({"trainer"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/jobs/{_job_of(s, t)}", {}),
    ),
    # the listing carries each version's rollout (stable, canary) with its status
    Endpoint(
        f"GET {T}/versions",
        frozenset({"trainer", "auditor"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/versions", {}),
    ),
    Endpoint(
        f"GET {T}/versions/{{version}}",
        frozenset({"trainer", "auditor"}),
        {"alpha": 200, "beta": 404},
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/versions/1", {}),
    ),
    # version 99 does not exist: authorised callers get its 404 (NotFoundError), not a denial
    Endpoint(
        f"POST {T}/versions/{{version}}/promote",
        frozenset({"trainer"}),
        _both(404),
        lambda s, t, k: ("POST", f"/v1/tenants/{t}/versions/99/promote", {"json": {}}),
    ),
    Endpoint(
        f"POST {T}/rollback",
        frozenset({"trainer"}),
        _both(404),
        lambda s, t, k: ("POST", f"/v1/tenants/{t}/rollback", {"json": {"to": 99}}),
    ),
    Endpoint(
        f"GET {T}/performance",
        MONITOR,
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/performance", {}),
    ),
    Endpoint(
        f"GET {T}/drift", MONITOR, _both(200), lambda s, t, k: ("GET", f"/v1/tenants/{t}/drift", {})
    ),
    Endpoint(
        f"GET {T}/schedule",
        MONITOR,
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/schedule", {}),
    ),
    # a count out of range: authorised callers get a 422 and the policy is left as it was
    Endpoint(
        f"PUT {T}/schedule",
        frozenset({"trainer", "admin"}),
        _both(422),
        lambda s, t, k: ("PUT", f"/v1/tenants/{t}/schedule", {"json": {"min_new_records": 0}}),
    ),
    Endpoint(
        f"GET {T}/audit",
        frozenset({"auditor"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/audit", {}),
    ),
    Endpoint(
        f"GET {T}/incidents",
        frozenset({"auditor"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/incidents", {}),
    ),
    Endpoint(
        f"GET {T}/ledger",
        frozenset({"auditor"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/ledger", {}),
    ),
    Endpoint(
        f"GET {T}/gates",
        frozenset({"auditor"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}/gates", {}),
    ),
    Endpoint(
        f"GET {T}",
        frozenset({"admin"}),
        _both(200),
        lambda s, t, k: ("GET", f"/v1/tenants/{t}", {}),
    ),
    Endpoint(
        "GET /v1/tenants",
        frozenset({"admin"}),
        _both(200),
        lambda s, t, k: ("GET", "/v1/tenants", {}),
        False,
    ),
    # a workspace-wide admin's alone: no tenant's token, whatever its roles
    Endpoint(
        "POST /v1/tenants",
        frozenset(),
        {},
        lambda s, t, k: ("POST", "/v1/tenants", {"json": {"name": f"by-{t}"}}),
        False,
    ),
    Endpoint(
        "POST /v1/access/grants",
        frozenset({"admin"}),
        _both(201),
        lambda s, t, k: (
            "POST",
            "/v1/access/grants",
            {"json": {"tenant": t, "roles": ["reader"], "for": "1h", "reason": "table"}},
        ),
    ),
    Endpoint(
        "GET /v1/access/grants",
        frozenset({"admin"}),
        _both(200),
        lambda s, t, k: ("GET", "/v1/access/grants", {}),
        False,
    ),
    Endpoint(
        "DELETE /v1/access/grants/{grant_id}",
        frozenset({"admin"}),
        _both(200),
        lambda s, t, k: ("DELETE", f"/v1/access/grants/{_grant_to_revoke(s, t)}", {}),
    ),
]


def _is_denial(response: httpx.Response) -> bool:
    """403 for a role not held; 404 for another tenant, or for what it names (a job, a
    grant): the answer of a tenant, job or grant that does not exist."""
    if response.status_code < 400:
        return False
    body = response.json()
    if (response.status_code, body.get("error")) not in DENIALS:
        return False
    return response.status_code == 403 or body["message"].startswith(
        ("no tenant", "no job", "no grant")
    )


def _denials(server: Server, since: int) -> list[Any]:
    with Workspace.open(server.path, actor="test") as ws:
        return [e for e in ws.audit.events(action="access.denied") if e.seq > since]


def _head(server: Server) -> int:
    with Workspace.open(server.path, actor="test") as ws:
        return ws.audit.events(limit=1)[-1].seq


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_every_role_can_do_what_it_should_and_nothing_more_on_its_own_tenant_only(
    server: Server, endpoint: Endpoint
) -> None:
    """Endpoint x role x own/other tenant: the roles of the endpoint get its status on their
    own tenant; every other role gets 403 there; every role gets 404 on the other tenant
    (the very answer of a tenant that does not exist, never a 403); each denial is audited
    once. An unscoped endpoint shows a tenant's token nothing of the other tenant."""
    before = _head(server)
    expected_denials: Counter[str] = Counter()
    wrong: list[str] = []
    for tenant in TENANTS:
        for role in ROLES:
            token = server.token(tenant, role)
            targets = (tenant, OTHER[tenant]) if endpoint.scoped else (tenant,)
            for target in targets:
                method, path, kwargs = endpoint.request(server, target, token)
                response = server.call(method, path, token, **kwargs)
                where = f"{tenant}/{role} on {target}: {response.status_code} {response.text[:200]}"
                if not response.headers["content-type"].startswith("application/json"):
                    wrong.append(f"not JSON, {where}")
                if target != tenant:
                    if response.status_code != 404 or not _is_denial(response):
                        wrong.append(f"expected the 404 of no such tenant, {where}")
                    expected_denials[f"{method} {path}"] += 1
                elif role in endpoint.roles:
                    if response.status_code != endpoint.ok[tenant] or _is_denial(response):
                        wrong.append(f"expected {endpoint.ok[tenant]}, {where}")
                    if not endpoint.scoped and OTHER[tenant] in response.text:
                        wrong.append(f"names the other tenant, {where}")
                else:
                    if response.status_code != 403 or response.json()["error"] != "AccessDenied":
                        wrong.append(f"expected 403 AccessDenied, {where}")
                    expected_denials[f"{method} {path}"] += 1
    audited = Counter(e.object for e in _denials(server, before))
    for route, count in expected_denials.items():
        if audited[route] < count:
            wrong.append(f"{count} denials of {route}, {audited[route]} audited")
    assert not wrong, "\n".join(wrong)


def test_the_table_covers_every_route_of_the_openapi_document(server: Server) -> None:
    """A route added to the service must be added to the table above, with its roles."""
    document = server.call("GET", "/openapi.json").json()
    routes = {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
    }
    table = [e.route for e in ENDPOINTS]
    assert len(table) == len(set(table))
    assert sorted(routes - set(table)) == [], "routes missing from the table"
    assert sorted(set(table) - routes) == [], "routes of the table that are gone"


def test_the_other_tenants_404_is_word_for_word_that_of_a_tenant_that_does_not_exist(
    server: Server,
) -> None:
    token = server.token("alpha", "reader")
    body = {"json": {"texts": ["x"]}}
    beta = server.call("POST", "/v1/tenants/beta/predict", token, **body)
    ghost = server.call("POST", "/v1/tenants/gamma/predict", token, **body)
    assert beta.status_code == ghost.status_code == 404
    assert beta.json()["error"] == ghost.json()["error"] == "TenantNotFound"
    assert beta.json()["message"].replace("beta", "T") == ghost.json()["message"].replace(
        "gamma", "T"
    )


def test_workspace_wide_admin_creates_tenants_a_tenants_admin_may_not(server: Server) -> None:
    body = {"json": {"name": "made-over-http"}}
    refused = server.call("POST", "/v1/tenants", server.token("alpha", "admin"), **body)
    assert refused.status_code == 403 and refused.json()["error"] == "AccessDenied"
    made = server.call("POST", "/v1/tenants", server.token(None, "admin"), **body)
    assert made.status_code == 201, made.text
    listed = server.call("GET", "/v1/tenants", server.token("alpha", "admin")).json()
    assert [t["name"] for t in listed] == ["alpha"]
    names = {
        t["name"] for t in server.call("GET", "/v1/tenants", server.token(None, "admin")).json()
    }
    assert names >= {"alpha", "beta", "made-over-http"}


def test_an_expired_grant_and_a_revoked_token_are_refused_on_the_next_request(
    server: Server,
) -> None:
    before = _head(server)
    short = server.grant("alpha", ["reader"], lasting=timedelta(seconds=1))
    assert server.call("GET", "/v1/whoami", short).status_code == 200
    with Workspace.open(server.path, actor="test") as ws:
        grant_id = short.split("_")[1]
        expires = datetime.fromisoformat(
            ws.access().get(grant_id).expires_at.replace("Z", "+00:00")
        )
    while datetime.now(expires.tzinfo) <= expires:
        time.sleep(0.1)
    expired = server.call("GET", "/v1/whoami", short)
    assert expired.status_code == 401 and expired.json()["details"]["reason"] == "expired"
    assert expired.headers["www-authenticate"] == "Bearer"

    token = server.grant("alpha", ["reader"], lasting=timedelta(hours=1))
    predicted = server.call("POST", "/v1/tenants/alpha/predict", token, json={"texts": ["ok"]})
    assert predicted.status_code == 200, predicted.text
    revoked = server.call(
        "DELETE", f"/v1/access/grants/{token.split('_')[1]}", server.token("alpha", "admin")
    )
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    refused = server.call("POST", "/v1/tenants/alpha/predict", token, json={"texts": ["ok"]})
    assert refused.status_code == 401 and refused.json()["details"]["reason"] == "revoked"

    reasons = {e.details["reason"] for e in _denials(server, before)}
    assert {"expired", "revoked"} <= reasons


def test_unauthenticated_requests_are_refused_and_audited(server: Server) -> None:
    before = _head(server)
    bogus = "slt_g-0123456789abcdef_" + "A" * 43
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {bogus}"}):
        response = server.call("GET", "/v1/tenants/alpha/versions", headers=headers)
        assert response.status_code == 401 and response.json()["error"] == "Unauthenticated"
    reasons = [e.details["reason"] for e in _denials(server, before)]
    assert reasons == ["no bearer token", "malformed", "unknown"]


def test_a_token_over_its_rate_gets_429_with_retry_after(server: Server) -> None:
    token = server.grant("beta", ["reader"], lasting=timedelta(hours=1))
    before = _head(server)
    for _ in range(2000):
        response = server.call("GET", "/v1/whoami", token)
        if response.status_code != 200:
            break
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "RateLimited"
    assert int(response.headers["retry-after"]) >= 1
    assert any(e.details["reason"] == "rate limited" for e in _denials(server, before))


def test_bad_input_is_a_4xx_json_error_and_loses_nothing_accepted(server: Server) -> None:
    token = server.token("alpha", "contributor")
    reader = server.token("alpha", "reader")
    cases = [
        (
            "POST",
            "/v1/tenants/alpha/predict",
            reader,
            {"content": b'{"texts": ["a"', "headers": {"content-type": "application/json"}},
            422,
        ),
        ("POST", "/v1/tenants/alpha/predict", reader, {"json": {"texts": ["a"], "extra": 1}}, 422),
        ("POST", "/v1/tenants/alpha/predict", reader, {"json": {"texts": []}}, 422),
        ("POST", "/v1/tenants/alpha/predict", reader, {"json": {"texts": ["  "]}}, 422),
        ("POST", "/v1/tenants/alpha/predict", reader, {"json": {"texts": "not a list"}}, 422),
        (
            "POST",
            "/v1/tenants/alpha/feedback",
            token,
            {"json": {"prediction_id": "p-nope", "label": "fresh"}},
            404,
        ),
        (
            "POST",
            "/v1/tenants/alpha/records",
            token,
            {"content": b"x" * 70_000, "headers": {"content-type": "application/x-ndjson"}},
            413,
        ),
        (
            "POST",
            "/v1/tenants/alpha/records",
            token,
            {"json": {"records": [], "strict": True}},
            422,
        ),
        (
            "POST",
            "/v1/tenants/alpha/records",
            token,
            {"content": b"a,b", "headers": {"content-type": "text/csv"}},
            422,
        ),
        ("GET", "/v1/no/such/route", token, {}, 404),
        ("DELETE", "/v1/tenants/alpha/predict", reader, {}, 405),
    ]
    for method, path, who, kwargs, status in cases:
        response = server.call(method, path, who, **kwargs)
        assert response.status_code == status, (path, kwargs, response.text)
        body = response.json()
        assert set(body) == {"error", "message", "details"}, body
        assert "Traceback" not in response.text

    with Workspace.open(server.path, actor="test") as ws:
        before = ws.tenant("alpha").show()
    good = [_record(_fresh()), _record(_fresh(), "rotten")]
    lines = [
        Record.model_validate(good[0]).canonical_json(),
        '{"id": "x", "text": "an unknown field", "timestamp": "2025-01-01", "colour": "red"}',
        "not json at all",
        Record.model_validate(good[1]).canonical_json(),
    ]
    response = server.call(
        "POST",
        "/v1/tenants/alpha/records",
        token,
        content="\n".join(lines).encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["accepted"] == 2 and report["rejected"] == 2
    assert [e["line"] for e in report["errors"]] == [2, 3]
    assert "unknown field 'colour'" in report["errors"][0]["reason"]
    with Workspace.open(server.path, actor="test") as ws:
        after = ws.tenant("alpha").show()
        scope = ws.scope("alpha", purpose=Purpose.INGEST)
        stored = scope.train.existing(
            [scope.keyed_hash("rid", r["id"]) for r in good]
        ) | scope.eval.existing([scope.keyed_hash("rid", r["id"]) for r in good])
    assert len(stored) == 2
    assert after["train"] + after["eval"] == before["train"] + before["eval"] + 2


def test_predict_then_feedback_by_prediction_id_stores_the_served_text_with_its_label(
    server: Server,
) -> None:
    reader, contributor = server.token("alpha", "reader"), server.token("alpha", "contributor")
    texts = ["A warm, funny and moving film.", "Two hours I will never get back."]
    response = server.call("POST", "/v1/tenants/alpha/predict", reader, json={"texts": texts})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for p in predictions:
        # the reviews' three labels: a head weighted by class may well answer "plot"
        assert p["label"] in ("fresh", "rotten", "plot") and p["version"] >= 1
        assert set(p["probabilities"]) <= {"fresh", "rotten", "plot"}
        assert abs(sum(p["probabilities"].values()) - 1.0) < 1e-4
    pid = predictions[1]["prediction_id"]

    # the other tenant's contributor cannot name alpha's prediction, even on its own route
    theirs = server.call(
        "POST",
        "/v1/tenants/beta/feedback",
        server.token("beta", "contributor"),
        json={"prediction_id": pid, "label": "rotten"},
    )
    assert theirs.status_code == 404 and theirs.json()["error"] == "NotFoundError"

    given = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        contributor,
        json={"prediction_id": pid, "label": "rotten"},
    )
    assert given.status_code == 200, given.text
    assert given.json()["accepted"] == 1 and given.json()["record_id"] == f"feedback:{pid}"
    assert given.json()["outcome"] == "stored"
    again = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        contributor,
        json={"prediction_id": pid, "label": "rotten"},
    )
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert again.json()["outcome"] == "duplicate"
    assert "already stored under this record id" in again.json()["reason"]
    changed = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        contributor,
        json={"prediction_id": pid, "label": "fresh"},
    )
    assert changed.status_code == 422 and "different content" in changed.json()["message"]

    with Workspace.open(server.path, actor="test") as ws:
        scope = ws.scope("alpha", purpose=Purpose.AUDIT)
        rid = scope.keyed_hash("rid", f"feedback:{pid}")
        assert rid in (scope.train.existing([rid]) | scope.eval.existing([rid]))
        stored = [
            s.record
            for s in scope.train.read() + scope.eval.read()
            if s.record.id == f"feedback:{pid}"
        ]
        assert [(r.text, r.label, r.meta["source"]) for r in stored] == [
            (texts[1], "rotten", "feedback")
        ]
        row = ws.conn.execute("SELECT box FROM served_predictions WHERE id = ?", (pid,)).fetchone()
        assert texts[1].encode() not in bytes(row[0])  # sealed at rest
        events = ws.audit.events(tenant="alpha", action="predict")
        assert events[-1].details["count"] >= 1
        assert all("text" not in e.details for e in events)


def test_feedback_whose_text_is_in_training_under_another_id_is_a_duplicate_said_and_audited(
    server: Server,
) -> None:
    """Nothing is lost (200), nothing is stored twice, and the answer and the audit log say
    why the feedback added no record."""
    reader, contributor = server.token("alpha", "reader"), server.token("alpha", "contributor")
    with Workspace.open(server.path, actor="test") as ws:
        trained = ws.scope("alpha", purpose=Purpose.AUDIT).train.read()[0].record
        before = ws.tenant("alpha").show()
        head = ws.audit.events(limit=1)[-1].seq
    served = server.call(
        "POST", "/v1/tenants/alpha/predict", reader, json={"texts": [trained.text]}
    ).json()["predictions"][0]
    by_prediction = {"prediction_id": served["prediction_id"], "label": trained.label}
    as_record = {**_record(_fresh(), str(trained.label)), "text": trained.text}
    for body in (by_prediction, as_record):
        given = server.call("POST", "/v1/tenants/alpha/feedback", contributor, json=body)
        assert given.status_code == 200, given.text
        answer = given.json()
        assert answer["accepted"] == 0 and answer["repeats"] == 1, answer
        assert answer["outcome"] == "duplicate"
        assert answer["reason"] == "its text is already in training under another record id"
    with Workspace.open(server.path, actor="test") as ws:
        after = ws.tenant("alpha").show()
        events = [e for e in ws.audit.events(action="feedback.received") if e.seq > head]
    assert (after["train"], after["eval"]) == (before["train"], before["eval"])
    assert [e.details["outcome"] for e in events] == ["duplicate", "duplicate"]
    assert [e.details["record_id"] for e in events] == [
        f"feedback:{served['prediction_id']}",
        as_record["id"],
    ]
    assert all("text" not in e.details for e in events)


def test_a_second_round_and_a_rollback_reach_the_server_without_a_restart(server: Server) -> None:
    trainer, reader = server.token("alpha", "trainer"), server.token("alpha", "reader")
    # fresh labelled records and a cutoff of now: the round has new records to learn from
    # whichever of the fixture's records the gateway routed to eval
    contributor = server.token("alpha", "contributor")
    now = datetime.now(UTC)
    fresh = [
        {"id": f"fresh-{i}", "text": row["text"], "label": row["label"], "timestamp": stamp}
        for i, row in enumerate(sample(rotten_tomatoes(), 40, seed=11))
        for stamp in [now.strftime("%Y-%m-%dT%H:%M:%SZ")]
    ]
    added = server.call("POST", "/v1/tenants/alpha/records", contributor, json={"records": fresh})
    assert added.status_code == 200 and added.json()["train"] > 0, added.text
    cutoff = (now + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = server.call(
        "POST", "/v1/tenants/alpha/rounds", trainer, json={"seed": 2, "cutoff": cutoff}
    )
    assert started.status_code == 202, started.text
    busy = server.call("POST", "/v1/tenants/alpha/rounds", trainer, json={})
    assert busy.status_code in (202, 409)  # 409 while the first is queued or running
    job = server.wait_for_job(started.json()["id"], trainer)
    assert job["state"] == "succeeded" and job["outcome"] == "active", job
    if busy.status_code == 202:
        server.wait_for_job(busy.json()["id"], trainer)
    versions = server.call("GET", "/v1/tenants/alpha/versions", trainer).json()
    active = [v["version"] for v in versions if v["status"] == "active"]
    assert active and active[0] >= 2

    def served_version() -> int:
        r = server.call("POST", "/v1/tenants/alpha/predict", reader, json={"texts": ["fine"]})
        assert r.status_code == 200, r.text
        return int(r.json()["predictions"][0]["version"])

    assert served_version() == active[0]
    rolled = server.call("POST", "/v1/tenants/alpha/rollback", trainer, json={"to": 1})
    assert rolled.status_code == 200, rolled.text
    assert served_version() == 1


def test_health_readiness_and_the_openapi_document(server: Server) -> None:
    assert server.call("GET", "/healthz").json() == {"status": "ok"}
    ready = server.call("GET", "/readyz").json()
    assert ready["status"] == "ready" and len(ready["base_model_sha256"]) == 64
    document = server.call("GET", "/openapi.json").json()
    paths = document["paths"]
    assert "/v1/tenants/{tenant}/predict" in paths and "/v1/jobs/{job_id}" in paths
    assert all(p.startswith("/v1/") for p in paths if p not in ("/healthz", "/readyz"))
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def test_one_micro_batch_answers_each_tenant_with_its_own_version_only(server: Server) -> None:
    """``Predictor.answer_batch``, what the server's micro-batcher calls: requests of several
    tenants in one encoder pass, each answered as it would be alone; a tenant with no
    version gets its own error and takes nothing from the others."""
    from silolearn.errors import NotFoundError
    from silolearn.serving.predictor import Predictor

    first = ["A delight from start to finish.", "Tedious and overlong."]
    second = ["The cast is wonderful."]
    with Workspace.open(server.path, actor="test") as ws:
        predictor = Predictor(ws)
        together = predictor.answer_batch([("alpha", first), ("beta", ["x"]), ("alpha", second)])
        alone = [predictor.answer_batch([("alpha", texts)])[0] for texts in (first, second)]
    assert isinstance(together[1], NotFoundError)
    for batched, single in zip((together[0], together[2]), alone, strict=True):
        assert not isinstance(batched, Exception) and not isinstance(single, Exception)
        assert [p.label for p in batched] == [p.label for p in single]
        assert [p.version for p in batched] == [p.version for p in single]
        for a, b in zip(batched, single, strict=True):
            assert a.probabilities.keys() == b.probabilities.keys()
            assert all(abs(a.probabilities[k] - b.probabilities[k]) < 1e-4 for k in a.probabilities)
