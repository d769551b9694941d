"""/metrics and the dashboard against a real server process (tests/service/conftest.py):
who may read them, that the figures move with predict, feedback, ingest and a round, that
the names and label sets are those docs/service.md lists, that no page shows a record's text
or another tenant, and (acceptance 4) a headless Chromium logging in with a token and seeing
its tenant's versions plot and ledger, and refused another tenant's page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from service_helpers import Server
from silolearn import Workspace
from silolearn.audit.log import utcnow
from silolearn.service.dashboard import templates
from silolearn.storage.scope import Purpose
from silolearn.tenancy.access import ROLES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "service.md"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
LABEL_NAMES = {"fresh", "rotten"}
"""The label names of the test tenants' records: never a metric label."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(server: Server, token: str) -> tuple[Samples, dict[str, set[str]]]:
    """Every sample by (name, sorted labels), and each family's label names."""
    response = server.call("GET", "/metrics", token)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        if not family.name.startswith("silolearn_"):
            continue
        labels.setdefault(family.name, set())
        for sample in family.samples:
            labels[family.name] |= set(sample.labels) - {"le"}
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, labels


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def watcher(server: Server) -> str:
    """A workspace-wide auditor's token: what /metrics and the workspace page need."""
    return server.grant(None, ["auditor"], lasting=timedelta(hours=1))


def _denials(server: Server, since: int) -> list[Any]:
    with Workspace.open(server.path, actor="test") as ws:
        return [e for e in ws.audit.events(action="access.denied") if e.seq > since]


def _head(server: Server) -> int:
    with Workspace.open(server.path, actor="test") as ws:
        return ws.audit.events(limit=1)[-1].seq


def test_metrics_are_for_a_workspace_wide_auditor_or_admin_only(
    server: Server, watcher: str
) -> None:
    before = _head(server)
    assert server.call("GET", "/metrics").status_code == 401
    for role in ("auditor", "admin", "reader"):
        refused = server.call("GET", "/metrics", server.token("alpha", role))
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "AccessDenied"
    assert server.call("GET", "/metrics", server.token(None, "admin")).status_code == 200
    _scrape(server, watcher)
    denied = _denials(server, before)
    assert sum(e.object == "GET /metrics" for e in denied) == 4


def test_metrics_move_after_predict_feedback_ingest_and_a_round(
    server: Server, watcher: str
) -> None:
    reader = server.token("alpha", "reader")
    contributor = server.token("alpha", "contributor")
    trainer = server.token("alpha", "trainer")
    before, _ = _scrape(server, watcher)

    texts = ["A tender, funny, beautifully acted film.", "Dull, slow and far too long."]
    predicted = server.call("POST", "/v1/tenants/alpha/predict", reader, json={"texts": texts})
    assert predicted.status_code == 200, predicted.text
    answers = predicted.json()["predictions"]
    version = str(answers[0]["version"])
    right, wrong = answers
    other = {"fresh": "rotten", "rotten": "fresh"}
    for answer, label in ((right, right["label"]), (wrong, other[wrong["label"]])):
        given = server.call(
            "POST",
            "/v1/tenants/alpha/feedback",
            contributor,
            json={"prediction_id": answer["prediction_id"], "label": label},
        )
        assert given.status_code == 200, given.text
    # fixed ids and texts: which records the gateway routes to the eval store is the same
    # on every run, and some of them reach the train store for the round to learn from
    lines = [
        json.dumps(
            {
                "id": f"metrics-{i}",
                "text": f"metrics see record {i} go by, a {word} film",
                "label": "fresh" if i % 2 else "rotten",
                "timestamp": "2025-06-01T00:00:00Z",
            }
        )
        for i, word in enumerate(("good", "bad", "long", "short", "warm", "cold", "odd", "fine"))
    ]
    ingested = server.call(
        "POST",
        "/v1/tenants/alpha/records",
        contributor,
        content="\n".join([*lines, "not json"]).encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert ingested.status_code == 200 and ingested.json()["accepted"] == 8, ingested.text
    # the newest eval record may be older than what arrived: learn up to now
    job = server.call(
        "POST", "/v1/tenants/alpha/rounds", trainer, json={"seed": 3, "cutoff": utcnow()}
    )
    assert job.status_code == 202, job.text
    done = server.wait_for_job(job.json()["id"], trainer)
    assert done["outcome"] == "active", done["error"]

    after, labels = _scrape(server, watcher)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    at = {"tenant": "alpha", "version": version}
    assert moved("silolearn_predictions_total", **at) == 2
    assert moved("silolearn_predict_latency_seconds_count", **at) == 1
    assert moved("silolearn_predict_latency_seconds_sum", **at) > 0
    assert moved("silolearn_feedback_total", **at, correct="true") == 1
    assert moved("silolearn_feedback_total", **at, correct="false") == 1
    accuracy = _value(after, "silolearn_feedback_accuracy", **at)
    right_total = _value(after, "silolearn_feedback_total", **at, correct="true")
    wrong_total = _value(after, "silolearn_feedback_total", **at, correct="false")
    assert accuracy == pytest.approx(right_total / (right_total + wrong_total))
    # the two feedback records and the ingested lines went through the gateway; one line bad
    assert moved("silolearn_ingest_records_total", tenant="alpha", outcome="accepted") == 10
    assert moved("silolearn_ingest_records_total", tenant="alpha", outcome="rejected") == 1
    assert moved("silolearn_rounds_total", tenant="alpha", outcome="promoted") == 1
    for severity in ("SEV1", "SEV2", "SEV3"):
        assert ("silolearn_open_incidents", (("severity", severity),)) in after
    assert {"silolearn_gate_failures", "silolearn_privacy_epsilon_remaining"} <= set(labels)

    exposed = " ".join(v for key in after for _, v in key[1])
    assert not LABEL_NAMES & set(exposed.split())
    assert all(t not in exposed for t in texts)


def test_metric_names_and_label_sets_are_those_the_docs_list(server: Server, watcher: str) -> None:
    documented = {
        m.group(1): {x.strip() for x in m.group(2).split(",") if x.strip()}
        for m in re.finditer(
            r"^\| `(silolearn_\w+)` \| [a-z]+ \| ([a-z_, ]*) \|", DOCS.read_text(), re.M
        )
    }
    _, labels = _scrape(server, watcher)
    for name, found in labels.items():
        family = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
        assert family in documented, f"{family} is not in {DOCS.name}"
        assert found <= documented[family], (family, found, documented[family])
    assert {re.sub(r"_(total|created)$", "", n) for n in labels} >= set(documented) - {
        # present once a DP run has charged a ledger or a gate has run with its verdicts
        "silolearn_privacy_epsilon_remaining",
        "silolearn_gate_failures",
    }


def _login(server: Server, token: str) -> httpx.Response:
    return server.client.post(
        server.url + "/dashboard/login", data={"token": token}, follow_redirects=False
    )


def _page(server: Server, token: str, path: str) -> httpx.Response:
    return server.client.get(
        server.url + path, headers={"Cookie": f"silolearn_token={token}"}, follow_redirects=False
    )


def test_dashboard_login_keeps_the_token_in_an_httponly_strict_cookie(server: Server) -> None:
    assert server.client.get(server.url + "/dashboard").status_code == 303
    form = server.client.get(server.url + "/dashboard/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert "script-src 'self'" in form.headers["content-security-policy"]
    refused = _login(server, "slt_nonsense")
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    token = server.token("alpha", "auditor")
    logged = _login(server, token)
    assert logged.status_code == 303 and logged.headers["location"] == "/dashboard"
    cookie = logged.headers["set-cookie"]
    assert cookie.startswith(f"silolearn_token={token};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    home = _page(server, token, "/dashboard")
    assert home.status_code == 303 and home.headers["location"] == "/dashboard/tenants/alpha"
    out = server.client.post(server.url + "/dashboard/logout", follow_redirects=False)
    assert out.status_code == 303 and 'silolearn_token=""' in out.headers["set-cookie"]


def _sections(page: httpx.Response) -> set[str]:
    return set(re.findall(r'<section id="([a-z-]+)"', page.text))


def _record_texts(server: Server) -> list[str]:
    with Workspace.open(server.path, actor="test") as ws:
        scope = ws.scope("alpha", purpose=Purpose.AUDIT)
        texts = [s.record.text for s in scope.train.read() + scope.eval.read()]
    assert len(texts) > 100
    return [t for t in texts if len(t) > 12]


TENANT_PAGE = {
    "reader": {"serving", "health"},
    "contributor": {"serving", "health"},
    "trainer": {"serving", "health", "versions", "gates", "ledger", "schedule"},
    "auditor": {"serving", "health", "versions", "gates", "ledger", "incidents", "schedule"},
    "admin": {"serving", "health"},
}
"""The sections of a tenant's page each role of the tenant sees."""


@pytest.mark.parametrize("role", sorted(ROLES))
def test_each_role_sees_what_it_may_of_its_own_tenant_only_and_no_record_text(
    server: Server, role: str
) -> None:
    token = server.token("alpha", role)
    before = _head(server)
    logged = _login(server, token)
    assert logged.status_code == 303 and "set-cookie" in logged.headers
    home = _page(server, token, "/dashboard")
    assert home.status_code == 303 and home.headers["location"] == "/dashboard/tenants/alpha"
    page = _page(server, token, "/dashboard/tenants/alpha")
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert _sections(page) == TENANT_PAGE[role]
    assert ('id="versions-plot"' in page.text) == ("versions" in TENANT_PAGE[role])
    assert ("plotly.min.js" in page.text) == ("versions" in TENANT_PAGE[role])
    assert 'id="serving-version"' in page.text
    assert "<script>" not in page.text  # scripts are files; the figure is JSON data
    assert [t for t in _record_texts(server) if t in page.text] == []

    beta = _page(server, token, "/dashboard/tenants/beta")
    ghost = _page(server, token, "/dashboard/tenants/gamma")
    assert beta.status_code == ghost.status_code == 404
    assert beta.text.replace("beta", "T") == ghost.text.replace("gamma", "T")
    denied = _denials(server, before)
    assert any(e.object == "GET /dashboard/tenants/beta" for e in denied)


def test_the_workspace_page_shows_each_workspace_wide_role_what_it_may(
    server: Server, watcher: str
) -> None:
    """A workspace-wide admin or auditor sees tenants, incidents and the audit chain; a
    workspace-wide reader the tenants only; a tenant's page shows each its role's."""
    reader = server.grant(None, ["reader"], lasting=timedelta(hours=1))
    for token, sections in (
        (server.token(None, "admin"), {"chain", "tenants", "incidents"}),
        (watcher, {"chain", "tenants", "incidents"}),
        (reader, {"tenants"}),
    ):
        page = _page(server, token, "/dashboard")
        assert page.status_code == 200, page.text
        assert _sections(page) == sections
        assert "/dashboard/tenants/alpha" in page.text and "/dashboard/tenants/beta" in page.text
        assert ("Verified:" in page.text) == ("chain" in sections)
        assert [t for t in _record_texts(server) if t in page.text] == []
    assert _sections(_page(server, watcher, "/dashboard/tenants/beta")) == TENANT_PAGE["auditor"]
    admin_page = _page(server, server.token(None, "admin"), "/dashboard/tenants/beta")
    assert _sections(admin_page) == TENANT_PAGE["admin"]


def test_a_token_over_its_rate_gets_a_429_page_with_retry_after(server: Server) -> None:
    token = server.grant("beta", ["reader"], lasting=timedelta(hours=1))
    before = _head(server)
    for _ in range(2000):
        page = _page(server, token, "/dashboard")
        if page.status_code != 303:
            break
    assert page.status_code == 429, page.text
    assert int(page.headers["retry-after"]) >= 1
    assert 'id="error"' in page.text and "RateLimited" in page.text
    assert any(e.details["reason"] == "rate limited" for e in _denials(server, before))


def test_pages_escape_what_they_show() -> None:
    html = templates.get_template("workspace.html").render(
        principal=None,
        tenants=[
            {"name": "<script>x</script>", "status": "active", "serving": 1, "created_at": ""}
        ],
        incidents=[],
        chain={"ok": False, "message": "<b>broken</b>", "signed_seq": 0},
        shown={"tenants", "incidents", "chain"},
    )
    assert "<script>x" not in html and "&lt;script&gt;x" in html
    assert "<b>broken" not in html


def test_static_files_come_from_installed_packages_only(server: Server) -> None:
    plotly = server.client.get(server.url + "/dashboard/static/plotly.min.js")
    assert plotly.status_code == 200 and plotly.headers["content-type"].startswith(
        "text/javascript"
    )
    assert b"plotly" in plotly.content[:2000].lower()
    assert server.client.get(server.url + "/dashboard/static/dashboard.js").status_code == 200
    for name in ("..%2F..%2Fpyproject.toml", "other.js", "%2Fetc%2Fpasswd"):
        assert server.client.get(server.url + f"/dashboard/static/{name}").status_code == 404


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


def test_a_browser_logs_in_sees_its_versions_plot_and_ledger_and_is_refused_another_tenant(
    server: Server, browser: webdriver.Chrome
) -> None:
    """Acceptance 4, in headless Chromium: log in by pasting an auditor's token, see the
    tenant's versions plot (one point per version) and its ledger, be refused the other
    tenant; log out, log in as the tenant's reader, see its serving version and no more."""
    token = server.token("alpha", "auditor")
    versions = server.call("GET", "/v1/tenants/alpha/versions", token).json()
    measured = [v for v in versions if isinstance(v["metrics"].get("accuracy"), float)]
    assert measured

    browser.get(server.url + "/dashboard")
    assert browser.current_url.endswith("/dashboard/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/dashboard/tenants/alpha"))
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    plot = browser.find_element(By.ID, "versions-plot")
    WebDriverWait(browser, 30).until(lambda d: plot.get_attribute("data-rendered") == "true")
    first_trace = plot.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace")[0]
    points = first_trace.find_elements(By.CSS_SELECTOR, "path.point")
    assert len(points) == len(measured)
    ledger = browser.find_element(By.ID, "ledger")
    assert ledger.is_displayed() and "remaining" in ledger.text
    assert browser.find_element(By.ID, "epsilon-remaining").text
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors

    browser.get(server.url + "/dashboard/tenants/beta")
    assert browser.find_element(By.ID, "error").text == "TenantNotFound"
    assert browser.find_elements(By.ID, "versions-plot") == []

    # a reader of the tenant: its serving version and data health, no versions, no ledger
    browser.get(server.url + "/dashboard/tenants/alpha")
    browser.find_element(By.CSS_SELECTOR, "header form button").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/dashboard/login"))
    browser.find_element(By.ID, "token").send_keys(server.token("alpha", "reader"))
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/dashboard/tenants/alpha"))
    serving = browser.find_element(By.ID, "serving-version")
    assert serving.text == str(next(v["version"] for v in versions if v["status"] == "active"))
    assert browser.find_element(By.ID, "health").is_displayed()
    for hidden in ("versions-plot", "gates", "ledger", "incidents"):
        assert browser.find_elements(By.ID, hidden) == [], hidden
    browser.get(server.url + "/dashboard/tenants/beta")
    assert browser.find_element(By.ID, "error").text == "TenantNotFound"
