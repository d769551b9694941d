"""Graceful shutdown of a real `silolearn serve` process: SIGTERM while predict, feedback
and ingest requests are in flight and a round runs in the background. Every request gets a
complete answer (200, or the JSON 503 of a request not taken; a client whose next request
finds the server gone gets a refused connection, nothing half-sent); the round is waited
for; the process exits 0; after a restart everything the server said it stored is in the
store and ``silolearn audit verify`` passes. A round still running when its grace
(``[service] round_grace_seconds``) ends is left interrupted, and the tenant's next round
succeeds with the registry consistent (I8)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_helpers import (
    SERVER_ENV,
    Server,
    audit_verify,
    check_stored,
    start_server,
    stop_server,
)
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.pipeline import Trainer
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose

CLIENTS = 4
ROLES = ("reader", "contributor", "trainer")
ENV = {
    **SERVER_ENV,
    "SILOLEARN_SERVICE__RATE_PER_SECOND": "100000",
    "SILOLEARN_SERVICE__RATE_BURST": "100000",
}


@dataclass
class Workload:
    """What one client thread saw: ids the server said it stored, refusals, and any answer
    that was neither a 200 nor a JSON 503 (or no complete answer at all)."""

    name: str
    stored: list[str] = field(default_factory=list)
    refused: int = 0
    gone: bool = False
    wrong: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A workspace whose tenant ``alpha`` serves a first version, and its tokens."""
    path = tmp_path_factory.mktemp("shutdown") / "ws"
    rows = sample(rotten_tomatoes(), 200, seed=3)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            ws.create_tenant("alpha")
            ws.tenant("alpha").ingest(rows)
            result = Trainer(ws).train("alpha", seed=1)
            assert result.status == "active", result
            tokens = {
                role: ws.access()
                .grant(tenant="alpha", roles=[role], duration=timedelta(hours=2), reason="t")
                .token
                for role in ROLES
            }
    yield path, tokens


def _serve(path: Path, log: Path, tokens: dict[str, str], **env: str) -> Server:
    server = start_server(path, log, {**ENV, **env})
    server.tokens = {("alpha", role): token for role, token in tokens.items()}
    return server


def _start_round(server: Server, seed: int) -> str:
    """A round of alpha on fresh records (so that it has work to do), once it runs."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    fresh = [
        {"id": f"round{seed}-{i}", "text": row["text"], "label": row["label"], "timestamp": stamp}
        for i, row in enumerate(sample(rotten_tomatoes(), 60, seed=100 + seed))
    ]
    contributor, trainer = server.token("alpha", "contributor"), server.token("alpha", "trainer")
    added = server.call("POST", "/v1/tenants/alpha/records", contributor, json={"records": fresh})
    assert added.status_code == 200 and added.json()["train"] > 0, added.text
    cutoff = (now + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = server.call(
        "POST", "/v1/tenants/alpha/rounds", trainer, json={"seed": seed, "cutoff": cutoff}
    )
    assert started.status_code == 202, started.text
    job_id: str = started.json()["id"]
    while (state := server.call("GET", f"/v1/jobs/{job_id}", trainer).json()["state"]) == "queued":
        time.sleep(0.1)
    assert state == "running", state
    return job_id


def _answer(
    work: Workload, client: httpx.Client, path: str, **kwargs: Any
) -> dict[str, Any] | None:
    """The JSON of a 200 to a POST; None (the client stops) on a refusal or a server gone."""
    try:
        response = client.post(path, **kwargs)
    except httpx.ConnectError:  # nothing was sent: the server had closed its listener
        work.gone = True
        return None
    except httpx.TransportError as exc:  # sent, and no complete answer
        work.wrong.append(f"{type(exc).__name__}: {exc}")
        return None
    if response.status_code == 200:
        body: dict[str, Any] = response.json()
        return body
    if response.status_code == 503 and response.json()["error"] == "ServiceUnavailable":
        assert response.headers["retry-after"] and response.headers["connection"] == "close"
        work.refused += 1
        return None
    work.wrong.append(f"{response.status_code}: {response.text[:300]}")
    return None


def _client(server: Server, work: Workload, turns: threading.Semaphore) -> None:
    """Predict, feedback on the first text served, ingest two records; again, until the
    server refuses or is gone."""
    read = {"Authorization": f"Bearer {server.token('alpha', 'reader')}"}
    write = {"Authorization": f"Bearer {server.token('alpha', 'contributor')}"}
    n = 0
    with httpx.Client(base_url=server.url, timeout=300.0) as client:
        while True:
            n += 1
            texts = [f"{work.name} turn {n}: a film worth seeing, {i} times" for i in range(2)]
            served = _answer(
                work, client, "/v1/tenants/alpha/predict", json={"texts": texts}, headers=read
            )
            if served is None:
                return
            pid = served["predictions"][0]["prediction_id"]
            given = _answer(
                work,
                client,
                "/v1/tenants/alpha/feedback",
                json={"prediction_id": pid, "label": "fresh"},
                headers=write,
            )
            if given is None:
                return
            if given["outcome"] != "stored":
                work.wrong.append(f"feedback not stored: {given}")
                return
            work.stored.append(given["record_id"])
            ids = [f"{work.name}-{n}-{i}" for i in range(2)]
            lines = [
                json.dumps(
                    {
                        "id": i,
                        "text": f"{work.name} record {i}, sent while the server stops",
                        "label": "rotten",
                        "timestamp": "2025-07-01T00:00:00Z",
                    }
                )
                for i in ids
            ]
            ingested = _answer(
                work,
                client,
                "/v1/tenants/alpha/records",
                content="\n".join(lines).encode(),
                headers={**write, "content-type": "application/x-ndjson"},
            )
            if ingested is None:
                return
            if ingested["accepted"] != 2:
                work.wrong.append(f"records not stored: {ingested}")
                return
            work.stored += ids
            turns.release()


def _active_versions(path: Path) -> list[int]:
    with Workspace.open(path, actor="test") as ws:
        registry = AdapterRegistry(ws.scope("alpha", purpose=Purpose.REGISTRY))
        return [v.version for v in registry.list() if v.status == "active"]


def test_sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits_0(
    workspace: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, tokens = workspace
    server = _serve(path, tmp_path / "server.log", tokens)
    turns = threading.Semaphore(0)
    work = [Workload(f"c{i}") for i in range(CLIENTS)]
    threads = [threading.Thread(target=_client, args=(server, w, turns)) for w in work]
    for thread in threads:
        thread.start()
    for _ in range(2 * CLIENTS):  # the clients are busy: requests are in flight
        turns.acquire()
    job_id = _start_round(server, seed=2)  # returns once the round runs
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert server.process.wait(timeout=600) == 0, server.log.read_text()[-3000:]
    server.client.close()

    for w in work:
        assert w.wrong == [], (w.name, w.wrong)
        assert w.refused or w.gone, w.name
    # the round kept the server draining a while: requests sent meanwhile were refused
    assert sum(w.refused for w in work) > 0
    with Workspace.open(path, actor="test") as ws:
        drained = ws.audit.events(action="service.draining")[-1]
        assert drained.details["rounds_running"] is True
        assert ws.audit.events(limit=1)[-1].action == "service.stop"

    restarted = _serve(path, tmp_path / "server.log", tokens)
    try:
        job = restarted.call("GET", f"/v1/jobs/{job_id}", restarted.token("alpha", "trainer"))
        assert job.json()["state"] == "succeeded", job.text
    finally:
        stop_server(restarted)
    stored = {i for w in work for i in w.stored}
    assert len(stored) == sum(len(w.stored) for w in work)
    check_stored(path, {"alpha": stored})
    # what the clients' requests stored is exactly what they were told was stored
    with Workspace.open(path, actor="test") as ws:
        scope = ws.scope("alpha", purpose=Purpose.AUDIT)
        kept = scope.train.read() + scope.train.quarantined() + scope.eval.read()
        ids = [s.record.id for s in kept]
    theirs = [i for i in ids if re.match(r"(c\d+-|feedback:)", i)]
    assert sorted(theirs) == sorted(stored)
    assert len(_active_versions(path)) == 1
    audit_verify(path)


def test_a_round_past_its_grace_is_left_interrupted_and_the_next_round_succeeds(
    workspace: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    path, tokens = workspace
    server = _serve(
        path, tmp_path / "server.log", tokens, SILOLEARN_SERVICE__ROUND_GRACE_SECONDS="0"
    )
    job_id = _start_round(server, seed=3)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=600) == 0, server.log.read_text()[-3000:]
    server.client.close()
    assert f"rounds left interrupted: {job_id}" in server.log.read_text()

    restarted = _serve(path, tmp_path / "server.log", tokens)
    trainer = restarted.token("alpha", "trainer")
    try:
        cut = restarted.call("GET", f"/v1/jobs/{job_id}", trainer).json()
        assert cut["state"] == "interrupted", cut
        assert len(_active_versions(path)) == 1
        next_job = _start_round(restarted, seed=4)
        done = restarted.wait_for_job(next_job, trainer)
        assert done["state"] == "succeeded", done
    finally:
        stop_server(restarted)
    with Workspace.open(path, actor="test") as ws:
        runs = ws.conn.execute(
            "SELECT status FROM training_runs WHERE tenant_id = ? ORDER BY started_at",
            (ws.tenants.get("alpha").id,),
        ).fetchall()
        interrupted = ws.audit.events(action="service.jobs_interrupted")[-1]
    assert [r[0] for r in runs][-2:] == ["abandoned", "succeeded"], runs
    assert interrupted.details["ids"] == [job_id]
    assert len(_active_versions(path)) == 1
    audit_verify(path)
