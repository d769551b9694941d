"""The server of the API tests: a real `silolearn serve` process on a workspace of two
tenants.

``alpha`` has real records (movie snippets) and is trained through the API itself, by a
round started with its trainer's token; ``beta`` has a few records and no version. Each of
the tenants has one token per role, and the workspace one admin token. The round's gates
judge quality on far fewer eval records than production would, so they are off here: these
tests are about who may do what over HTTP, not about the gates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service_helpers import SERVER_ENV, TENANTS, Server, grant_tokens, start_server, stop_server
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.tenancy.access import ROLES


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("service")
    path = root / "ws"
    rows = sample(rotten_tomatoes(), 240, seed=7)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SERVER_ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            for tenant in TENANTS:
                ws.create_tenant(tenant)
            ws.tenant("alpha").ingest(rows[:200])
            ws.tenant("beta").ingest(rows[200:])
            tokens = grant_tokens(
                ws, [*((tenant, role) for tenant in TENANTS for role in ROLES), (None, "admin")]
            )
        running = start_server(path, root / "server.log", SERVER_ENV)
    running.tokens = tokens
    try:
        job = running.call(
            "POST", "/v1/tenants/alpha/rounds", tokens[("alpha", "trainer")], json={"seed": 1}
        )
        assert job.status_code == 202, job.text
        done = running.wait_for_job(job.json()["id"], tokens[("alpha", "trainer")])
        assert done["state"] == "succeeded" and done["outcome"] == "active", done
        yield running
    finally:
        stop_server(running)
