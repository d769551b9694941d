"""The label queue and label provenance against a real server (tests/service/conftest.py):
who may read the queue and who sees its texts, that it holds the most uncertain of what was
served, that feedback closes an item and is stored as an ``active`` label, and where every
other label comes from (feedback, reviewed or not, self-confirming or not; a person's
record; bulk and human ingest)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from service_helpers import Server
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.learning.active import POOL_FACTOR, uncertainty
from silolearn.records import LabelOrigin, LabelSource
from silolearn.storage.scope import Purpose

QUEUE = "/v1/tenants/alpha/label-queue"


def _predict(server: Server, texts: list[str]) -> list[dict[str, Any]]:
    response = server.call(
        "POST", "/v1/tenants/alpha/predict", server.token("alpha", "reader"), json={"texts": texts}
    )
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


def _feedback(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = server.call(
        "POST", "/v1/tenants/alpha/feedback", server.token("alpha", "contributor"), json=body
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _origins(server: Server) -> dict[str, LabelOrigin | None]:
    """Every training record of alpha by id, with its label's provenance."""
    with Workspace.open(server.path, actor="test") as ws:
        scope = ws.scope("alpha", purpose=Purpose.TRAINING)
        return {s.record.id: s.origin for s in scope.train.read()}


def test_label_queue_holds_the_uncertain_served_texts_for_contributors_only(
    server: Server,
) -> None:
    rows = sample(rotten_tomatoes(), 600, seed=23)[-40:]
    texts = [r["text"] for r in rows]
    predictions = _predict(server, texts)
    served = {
        p["prediction_id"]: uncertainty(list(p["probabilities"].values())) for p in predictions
    }
    text_of = {p["prediction_id"]: t for p, t in zip(predictions, texts, strict=True)}

    # who may look: not a reader, not another tenant's contributor; an auditor sees no text
    assert server.call("GET", QUEUE, server.token("alpha", "reader")).status_code == 403
    other = server.call("GET", QUEUE, server.token("beta", "contributor"))
    assert other.status_code == 404 and other.json()["error"] == "TenantNotFound"
    for bad in ("0", "1000", "many"):
        refused = server.call("GET", f"{QUEUE}?limit={bad}", server.token("alpha", "contributor"))
        assert refused.status_code == 422, refused.text
    audited = server.call("GET", f"{QUEUE}?limit=5", server.token("alpha", "auditor"))
    assert audited.status_code == 200, audited.text
    assert audited.json()["texts"] is False
    assert all(item["text"] is None for item in audited.json()["items"])

    response = server.call("GET", f"{QUEUE}?limit=5", server.token("alpha", "contributor"))
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert response.json()["texts"] is True and len(items) == 5
    ids = [item["prediction_id"] for item in items]
    assert len(set(ids)) == 5
    # the queue's items are among the most uncertain of what alpha was served, each with
    # the text that was served and the uncertainty of its served probabilities
    assert set(ids) <= set(served)
    assert all(item["text"] == text_of[item["prediction_id"]] for item in items)
    threshold = sorted(served.values(), reverse=True)[POOL_FACTOR * 5 - 1]
    assert all(served[i] >= threshold - 1e-6 for i in ids)
    assert all(abs(item["uncertainty"] - served[item["prediction_id"]]) < 1e-5 for item in items)

    # a second labeller is handed other items while the first one's are still open
    again = server.call("GET", f"{QUEUE}?limit=5", server.token("alpha", "contributor"))
    assert again.status_code == 200, again.text
    assert len(again.json()["items"]) == 5
    second = [item["prediction_id"] for item in again.json()["items"]]
    assert not set(ids) & set(second)

    # feedback on every item closes it and is stored as a person's answer (active); the
    # gateway sends 30% of the texts to eval, keyed by the workspace's random secret: none
    # of ten answers reaches training in 0.3**10 = 6e-6 of runs (of five, 2.4e-3)
    answered = ids + second
    for prediction_id in answered:
        _feedback(server, {"prediction_id": prediction_id, "label": "fresh"})
    after = server.call("GET", f"{QUEUE}?limit=50", server.token("alpha", "contributor"))
    assert not set(answered) & {item["prediction_id"] for item in after.json()["items"]}
    origins = _origins(server)
    stored = [origins[f"feedback:{i}"] for i in answered if f"feedback:{i}" in origins]
    assert stored, "the gateway routed every answer to eval"
    assert all(o is not None and o.source is LabelSource.ACTIVE and o.reviewed for o in stored)
    assert not any(o is not None and o.self_confirmed for o in stored)
    with Workspace.open(server.path, actor="test") as ws:
        handed = ws.audit.events(tenant="alpha", action="served.queue")
        # the contributor's first look handed out five; the auditor's handed out nothing
        assert handed[0].details["items"] == 5


def test_every_training_label_remembers_where_it_came_from(server: Server) -> None:
    rows = sample(rotten_tomatoes(), 900, seed=29)[-24:]
    predictions = _predict(server, [r["text"] for r in rows[:16]])
    # unreviewed feedback repeating the served label confirms the model's own answer;
    # reviewed, or with another label, it does not
    for i, p in enumerate(predictions):
        other = "rotten" if p["label"] != "rotten" else "fresh"
        body: dict[str, Any] = {"prediction_id": p["prediction_id"], "label": p["label"]}
        if i % 4 == 1:
            body["reviewed"] = True
        elif i % 4 == 2:
            body["label"] = other
        _feedback(server, body)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    records = [
        {"id": f"src-{i}", "text": r["text"], "label": r["label"], "timestamp": stamp}
        for i, r in enumerate(rows[16:])
    ]
    contributor = server.token("alpha", "contributor")
    person = _feedback(server, records[0])
    assert person["record_id"] == "src-0"
    human = server.call(
        "POST",
        "/v1/tenants/alpha/records?source=human",
        contributor,
        json={"records": records[1:4]},
    )
    assert human.status_code == 200, human.text
    bulk = server.call(
        "POST", "/v1/tenants/alpha/records", contributor, json={"records": records[4:]}
    )
    assert bulk.status_code == 200, bulk.text
    forged = server.call(
        "POST", "/v1/tenants/alpha/records?source=active", contributor, json={"records": records}
    )
    assert forged.status_code == 422, forged.text

    origins = _origins(server)
    expected: dict[str, tuple[LabelSource, bool, bool]] = {}
    for i, p in enumerate(predictions):
        expected[f"feedback:{p['prediction_id']}"] = (
            LabelSource.FEEDBACK,
            i % 4 == 1,
            i % 4 == 0 or i % 4 == 3,
        )
    expected["src-0"] = (LabelSource.HUMAN, True, False)
    for i in range(1, 4):
        expected[f"src-{i}"] = (LabelSource.HUMAN, True, False)
    for i in range(4, 8):
        expected[f"src-{i}"] = (LabelSource.BULK, False, False)
    found = {k: v for k, v in expected.items() if k in origins}
    # the gateway sends 30% of the texts to eval, keyed by the workspace's random secret:
    # fewer than 6 of these 24 reach training in 1e-6 of runs (fewer than half: 1.2e-2)
    assert len(found) >= 6, "the gateway routed most records to eval"
    for record_id, (source, reviewed, self_confirmed) in found.items():
        origin = origins[record_id]
        assert origin is not None
        assert (origin.source, origin.reviewed, origin.self_confirmed) == (
            source,
            reviewed,
            self_confirmed,
        ), record_id
    # sealed at rest: no source name in clear in the column
    with Workspace.open(server.path, actor="test") as ws:
        boxes = ws.conn.execute("SELECT origin FROM train_records WHERE origin IS NOT NULL")
        assert all(b"feedback" not in bytes(b) and b"human" not in bytes(b) for (b,) in boxes)
