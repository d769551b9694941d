"""Drift monitoring in the service, against a real server: what alpha's version serves is
handed to the background monitor off the request's path, kept sealed in alpha's scope and
tested against its training window; `GET /v1/tenants/{t}/drift` shows it to the tenant's
auditor, trainer and admin (like its performance; a reader is refused, another tenant's
auditor gets the 404 of a tenant that does not exist)."""

from __future__ import annotations

import time
from typing import Any

from service_helpers import Server
from silolearn.datasets import rotten_tomatoes, sample

SERVED = 120
PATIENCE = 300.0
"""Seconds the monitor's thread has to build the reference and test the first window (it
shares the machine's two cores with the server's encoder)."""


def _drift(server: Server) -> dict[str, Any]:
    answer = server.call("GET", "/v1/tenants/alpha/drift", server.token("alpha", "auditor"))
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def test_drift_of_what_alpha_serves_is_monitored_and_shown_to_its_auditor(
    server: Server,
) -> None:
    rows = sample(rotten_tomatoes(), 2000, seed=31)[-SERVED:]
    reader = server.token("alpha", "reader")
    for start in range(0, SERVED, 20):
        texts = [r["text"] for r in rows[start : start + 20]]
        answer = server.call("POST", "/v1/tenants/alpha/predict", reader, json={"texts": texts})
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + PATIENCE
    view = _drift(server)
    while view["latest"]["drift.prediction"] is None and time.monotonic() < deadline:
        time.sleep(1.0)
        view = _drift(server)
    # kept a window at a time, one write for many requests
    assert SERVED - view["policy"]["window"] < view["kept_predictions"] <= SERVED
    tested = view["latest"]["drift.prediction"]
    assert tested is not None, view
    assert tested["evidence"]["size"] == view["policy"]["window"]
    assert 0.0 < tested["evidence"]["p_value"] <= 1.0

    for role in ("trainer", "admin"):
        read = server.call("GET", "/v1/tenants/alpha/drift", server.token("alpha", role))
        assert read.status_code == 200, read.text
        assert read.json()["policy"] == view["policy"]
    refused = server.call("GET", "/v1/tenants/alpha/drift", reader)
    assert refused.status_code == 403 and "error" in refused.json()
    other = server.call("GET", "/v1/tenants/alpha/drift", server.token("beta", "auditor"))
    missing = server.call("GET", "/v1/tenants/nobody/drift", server.token("beta", "auditor"))
    assert other.status_code == missing.status_code == 404
    assert "error" in other.json() and "error" in missing.json()
