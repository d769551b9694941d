"""A bounded load test against a real server (I10: nothing accepted is lost): client
processes (tests/service/load_client.py) predict, give feedback and ingest concurrently
while a round runs; afterwards every record and feedback a client was told is stored is in
the store, once, and ``silolearn audit verify`` passes. Then the server is killed with
SIGKILL mid-load and started again on the same workspace and port: the clients send again
what lost its answer, and still nothing accepted is lost and nothing is stored twice.

The issue asks for two minutes of load; ``make test`` runs 30 seconds (and 12 around the
kill), to keep the suite within its time on two cores: the test's claims are the same,
only fewer requests make them. The two-minute run is
``SILOLEARN_LOAD_SECONDS=120 .venv/bin/python -m pytest -n 0 tests/service/test_load.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service_helpers import (
    SERVER_ENV,
    Server,
    audit_verify,
    check_stored,
    free_port,
    start_server,
    stop_server,
)
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample

LOAD_SECONDS = float(os.environ.get("SILOLEARN_LOAD_SECONDS", "30"))
KILL_LOAD_SECONDS = 12.0
CLIENTS = 3
LOAD_ENV = {
    **SERVER_ENV,
    "SILOLEARN_SERVICE__RATE_PER_SECOND": "100000",
    "SILOLEARN_SERVICE__RATE_BURST": "100000",
}
CLIENT = Path(__file__).with_name("load_client.py")


def _serve(path: Path, log: Path, port: int) -> Server:
    return start_server(path, log, LOAD_ENV, port=port)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("load")
    path = root / "ws"
    rows = sample(rotten_tomatoes(), 200, seed=5)
    tokens: dict[tuple[str | None, str], str] = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOAD_ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            for tenant in ("alpha", "beta"):
                ws.create_tenant(tenant)
            ws.tenant("alpha").ingest(rows[:100])
            ws.tenant("beta").ingest(rows[100:])
            for tenant in ("alpha", "beta"):
                for role in ("reader", "contributor", "trainer"):
                    tokens[(tenant, role)] = (
                        ws.access()
                        .grant(tenant=tenant, roles=[role], duration=timedelta(hours=2), reason="t")
                        .token
                    )
    server = _serve(path, root / "server.log", free_port())
    server.tokens = tokens
    try:
        for tenant in ("alpha", "beta"):
            trainer = tokens[(tenant, "trainer")]
            job = server.call("POST", f"/v1/tenants/{tenant}/rounds", trainer, json={"seed": 1})
            assert job.status_code == 202, job.text
            done = server.wait_for_job(job.json()["id"], trainer)
            assert done["state"] == "succeeded", json.dumps(done)
        yield server
    finally:
        if server.process.poll() is None:
            stop_server(server)


def _clients(server: Server, seconds: float, tag: str, out: Path) -> list[subprocess.Popen[bytes]]:
    started = []
    for i in range(CLIENTS):
        tenant = ("alpha", "beta")[i % 2]
        started.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(CLIENT),
                    server.url,
                    server.token(tenant, "reader"),
                    server.token(tenant, "contributor"),
                    tenant,
                    f"{tag}{i}",
                    str(seconds),
                    str(out / f"{tag}{i}.json"),
                ]
            )
        )
    return started


def _results(
    processes: list[subprocess.Popen[bytes]], tag: str, out: Path
) -> tuple[dict[str, list[str]], int]:
    """Per tenant, the ids its clients were told are stored; and how many requests the
    clients sent again after losing an answer."""
    for process in processes:
        assert process.wait(timeout=300) == 0
    by_tenant: dict[str, list[str]] = {"alpha": [], "beta": []}
    resent = 0
    for i in range(CLIENTS):
        report = json.loads((out / f"{tag}{i}.json").read_text())
        print(f"client {tag}{i}: {report['counts']}, {len(report['stored'])} ids told stored")
        by_tenant[("alpha", "beta")[i % 2]] += report["stored"]
        resent += report["counts"]["resent"]
        assert report["counts"]["lost"] == 0, report["counts"]
        assert report["counts"]["ingest"] > 0 and report["counts"]["feedback"] > 0, report
    return by_tenant, resent


def test_load_with_a_round_running_loses_nothing_and_audit_verify_passes(
    loaded: Server, tmp_path: Path
) -> None:
    before = check_stored(loaded.path, {"alpha": set(), "beta": set()})
    clients = _clients(loaded, LOAD_SECONDS, "a", tmp_path)
    trainer = loaded.token("alpha", "trainer")
    # once the clients have stored something new: the round learns from it, up to now
    time.sleep(LOAD_SECONDS / 4)
    cutoff = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    job = loaded.call(
        "POST", "/v1/tenants/alpha/rounds", trainer, json={"seed": 2, "cutoff": cutoff}
    )
    assert job.status_code == 202, job.text
    results, resent = _results(clients, "a", tmp_path)
    assert resent == 0
    done = loaded.wait_for_job(job.json()["id"], trainer)
    assert done["state"] == "succeeded", json.dumps(done)
    expected = {t: set(ids) for t, ids in results.items()}
    after = check_stored(loaded.path, expected)
    for tenant, ids in expected.items():
        # each id once: the store grew by exactly the ids told stored, which a client
        # never sends twice when no answer was lost
        assert len(results[tenant]) == len(ids)
        assert after[tenant] == before[tenant] + len(ids)
    audit_verify(loaded.path)


def test_sigkill_mid_load_then_restart_loses_nothing_and_duplicates_nothing(
    loaded: Server, tmp_path: Path
) -> None:
    before = check_stored(loaded.path, {"alpha": set(), "beta": set()})
    clients = _clients(loaded, KILL_LOAD_SECONDS, "k", tmp_path)
    time.sleep(KILL_LOAD_SECONDS / 2)
    loaded.process.send_signal(signal.SIGKILL)
    loaded.process.wait(timeout=60)
    port = int(loaded.url.rsplit(":", 1)[1])
    restarted = _serve(loaded.path, loaded.log, port)
    loaded.client.close()
    loaded.process, loaded.client = restarted.process, restarted.client
    results, resent = _results(clients, "k", tmp_path)
    assert resent > 0  # every client lost answers while the server was down
    expected = {t: set(ids) for t, ids in results.items()}
    after = check_stored(loaded.path, expected)
    for tenant, ids in expected.items():
        # a request sent again after its answer was lost is stored once: the store grew
        # by exactly the distinct ids told stored
        assert after[tenant] == before[tenant] + len(ids)
    audit_verify(loaded.path)
