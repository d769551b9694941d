"""Drift monitoring in the service, against a real server: what alpha's version serves is
handed to the background monitor off the request's path, kept sealed in alpha's scope and
tested against its training window; `GET /v1/tenants/{t}/drift` shows it to the tenant's
auditor, trainer and admin (like its performance; a reader is refused, another tenant's
auditor gets the 404 of a tenant that does not exist). Predict requests carry a ``meta``
(validated: bad meta is a 422 with a JSON body), which the monitor splits slices by (the
server watches ``region``, named by ``[performance] slice_fields`` and inherited by drift),
and which feedback on a prediction inherits; it is kept sealed, never in clear."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service_helpers import Server
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.workspace import DB_FILE

REGION = "nordland-fjord-7"
"""A slice value that appears nowhere else, looked for in clear in the workspace's files."""


@pytest.fixture(scope="module", autouse=True)
def _slices() -> Iterator[None]:
    """The server (started after this, with the environment of the moment) watches slices
    of ``region``: named for performance, drift takes the same fields."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_PERFORMANCE__SLICE_FIELDS", '["region"]')
        yield


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
        body = {"texts": texts, "meta": {"region": REGION, "channel": "web", "score": 0.5}}
        answer = server.call("POST", "/v1/tenants/alpha/predict", reader, json=body)
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + PATIENCE
    view = _drift(server)
    while not view["slices"] and time.monotonic() < deadline:
        time.sleep(1.0)
        view = _drift(server)
    # kept a window at a time, one write for many requests
    assert SERVED - view["policy"]["window"] < view["kept_predictions"] <= SERVED
    tested = view["latest"]["drift.prediction"]
    assert tested is not None, view
    assert tested["evidence"]["size"] == view["policy"]["window"]
    assert 0.0 < tested["evidence"]["p_value"] <= 1.0
    # one window of the slice region=REGION (its 120 items): tested on its embeddings and its
    # predicted labels, at the level of the aggregate and one slice field sharing the budget
    assert view["policy"]["slice_fields"] == ["region"]
    assert {(s["field"], s["value"]) for s in view["slices"]} == {("region", REGION)}
    assert {s["test"].split(",")[0] for s in view["slices"]} == {"mmd", "chi-square"}
    window, ert = view["policy"]["window"], view["policy"]["ert"]
    assert all(s["windows"] == 1 and s["alpha"] == window / (2 * ert) for s in view["slices"])

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


def test_predict_meta_is_validated_inherited_by_feedback_and_sealed(server: Server) -> None:
    reader = server.token("alpha", "reader")
    texts = [r["text"] for r in sample(rotten_tomatoes(), 2000, seed=37)[-3:]]
    bad = [
        {"region": {"nested": "no"}},
        {f"field{i}": i for i in range(17)},
        {"region": "x" * 257},
        {"": "empty name"},
        [{"region": "one"}],  # one object for three texts
        "north",
    ]
    for meta in bad:
        refused = server.call(
            "POST", "/v1/tenants/alpha/predict", reader, json={"texts": texts, "meta": meta}
        )
        assert refused.status_code == 422, (meta, refused.text)
        assert "error" in refused.json()
    not_a_number = server.call(
        "POST",
        "/v1/tenants/alpha/predict",
        reader,
        content=json.dumps({"texts": texts, "meta": {"score": float("nan")}}),
        headers={"Content-Type": "application/json"},
    )
    assert not_a_number.status_code == 422 and "error" in not_a_number.json()

    # one object per text; feedback without a meta inherits the one its prediction was served
    # with, and the performance monitor counts it in that slice
    metas = [{"region": REGION + "-feedback"}, {"region": "other"}, {}]
    served = server.call(
        "POST", "/v1/tenants/alpha/predict", reader, json={"texts": texts, "meta": metas}
    )
    assert served.status_code == 200, served.text
    first = served.json()["predictions"][0]
    given = server.call(
        "POST",
        "/v1/tenants/alpha/feedback",
        server.token("alpha", "contributor"),
        json={"prediction_id": first["prediction_id"], "label": first["label"]},
    )
    assert given.status_code == 200, given.text
    report = server.call(
        "GET", "/v1/tenants/alpha/performance", server.token("alpha", "auditor")
    ).json()
    slices = {
        (s["field"], s["value"]): s["items"]
        for v in report["versions"]
        for s in v["feedback"]["slices"]
    }
    assert slices.get(("region", REGION + "-feedback")) == 1

    # kept sealed: the slice value is in no file of the workspace in clear
    for name in (DB_FILE, DB_FILE + "-wal"):
        stored = server.path / name
        if stored.exists():
            assert REGION.encode() not in stored.read_bytes()
