"""A real `silolearn serve` process on a free loopback port (tests/service/conftest.py
builds one per module on a workspace of two tenants).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from silolearn import Workspace
from silolearn.storage.scope import Purpose

SERVER_ENV = {
    "SILOLEARN_GATES__QUALITY": "false",
    "SILOLEARN_GATES__FORGETTING": "false",
    "SILOLEARN_GATES__MEMBERSHIP": "false",
    "SILOLEARN_GATES__CANARIES": "0",
    "SILOLEARN_GATES__AUDIT_CANARIES": "0",
    "SILOLEARN_GATES__SHADOW": "0",
    "SILOLEARN_TRAINING__MIN_EVAL_RECORDS": "3",
    "SILOLEARN_INGEST__EVAL_FRACTION": "0.3",
    "SILOLEARN_SERVICE__RATE_PER_SECOND": "20",
    "SILOLEARN_SERVICE__RATE_BURST": "100",
    "SILOLEARN_SERVICE__MAX_BODY_BYTES": "65536",
}
TENANTS = ("alpha", "beta")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """The running server, its workspace and the tokens granted on it."""

    url: str
    path: Path
    process: subprocess.Popen[bytes]
    log: Path
    tokens: dict[tuple[str | None, str], str] = field(default_factory=dict)
    """(tenant or None for the workspace, role) -> token."""
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300.0))

    def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, self.url + path, headers=headers, **kwargs)

    def token(self, tenant: str | None, role: str) -> str:
        return self.tokens[(tenant, role)]

    def grant(self, tenant: str | None, roles: list[str], *, lasting: timedelta) -> str:
        with Workspace.open(self.path, actor="test") as ws:
            return (
                ws.access().grant(tenant=tenant, roles=roles, duration=lasting, reason="test").token
            )

    def wait_for_job(self, job_id: str, token: str) -> dict[str, Any]:
        while True:
            job: dict[str, Any] = self.call("GET", f"/v1/jobs/{job_id}", token).json()
            if job["state"] not in ("queued", "running"):
                return job
            time.sleep(0.5)


def grant_tokens(
    ws: Workspace, grants: Iterable[tuple[str | None, str]]
) -> dict[tuple[str | None, str], str]:
    """One token per (tenant, or None for the workspace; role), an hour long: the tokens of
    a test server's :attr:`Server.tokens`."""
    access = ws.access()
    return {
        (tenant, role): access.grant(
            tenant=tenant, roles=[role], duration=timedelta(hours=1), reason="test"
        ).token
        for tenant, role in grants
    }


def start_server(path: Path, log: Path, env: dict[str, str], *, port: int | None = None) -> Server:
    """A server on ``port`` (a free one by default), its output appended to ``log`` (a
    restarted server keeps the earlier one's), once ``/readyz`` answers."""
    port = free_port() if port is None else port
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "silolearn.cli", "serve", "-w", str(path), "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    server = Server(url=f"http://127.0.0.1:{port}", path=path, process=process, log=log)
    while True:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if server.client.get(server.url + "/readyz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop_server(server: Server) -> None:
    """SIGTERM, as a service manager stops it: in-flight requests finish, the service
    stops cleanly and the process exits 0."""
    server.client.close()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=300)
    log = server.log.read_text()
    assert code == 0, log[-3000:]
    assert "Application shutdown complete" in log, log[-3000:]


def check_stored(path: Path, expected: dict[str, set[str]]) -> dict[str, int]:
    """Every id told stored is in its tenant's store; returns the row counts."""
    counts = {}
    with Workspace.open(path, actor="test") as ws:
        for tenant, ids in expected.items():
            scope = ws.scope(tenant, purpose=Purpose.AUDIT)
            hashes = {scope.keyed_hash("rid", i): i for i in ids}
            found = scope.train.existing(hashes) | scope.eval.existing(hashes)
            missing = sorted(hashes[h] for h in set(hashes) - set(found))
            assert not missing, f"{tenant}: {len(missing)} lost, e.g. {missing[:5]}"
            shown = ws.tenant(tenant).show()
            counts[tenant] = int(shown["train"]) + int(shown["eval"])
    return counts


def audit_verify(path: Path) -> None:
    """``silolearn audit verify`` passes on the workspace."""
    done = subprocess.run(
        [sys.executable, "-m", "silolearn.cli", "audit", "verify", "-w", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
