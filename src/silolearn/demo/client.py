"""A `silolearn serve` process started on a free loopback port, and the calls an
application makes to it: predict, feedback, rounds, jobs, /metrics.

The demo is its first user; a longer simulation (days of production, a scheduler, a
canary rollout) reuses it as it is. Tokens come from the product's own path,
``silolearn access grant --json``, one per tenant and purpose with the fewest roles that
purpose needs.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from silolearn import errors
from silolearn.errors import ServiceUnavailable, SiloError, WorkspaceError

READY_TIMEOUT = 300.0
"""Seconds the server may take to load the base model and check its digest."""
STOP_TIMEOUT = 300.0
"""Seconds a SIGTERM may take: in-flight requests finish and running rounds are waited for."""
POLL_SECONDS = 0.5


def error_of(status: int, body: dict[str, Any], what: str) -> SiloError:
    """The typed error the service answered (its JSON body names the class of errors.py),
    with its status and details; a body naming none is ServiceUnavailable."""
    kind = getattr(errors, str(body.get("error")), None)
    if not (isinstance(kind, type) and issubclass(kind, SiloError)):
        kind = ServiceUnavailable
    details = body.get("details")
    details = {**(details if isinstance(details, dict) else {}), "status": status}
    return kind(f"{what}: {status} {body.get('message', '')}", **details)


def free_port() -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(kw_only=True)
class ApiClient:
    """The calls an application makes to a server at ``url`` with the tokens granted on it."""

    url: str
    tokens: dict[tuple[str | None, str], str] = field(default_factory=dict)
    """(tenant, or None for workspace-wide; purpose) -> token."""
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=600.0))

    def token(self, tenant: str | None, purpose: str) -> str:
        return self.tokens[(tenant, purpose)]

    # -- calls -------------------------------------------------------------------------------

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> Any:
        """The JSON answer, or the typed error the service answered (:func:`error_of`)."""
        response = self.http.request(
            method, self.url + path, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text[:500]}
            raise error_of(response.status_code, body, f"{method} {path}")
        return response.json()

    def predict(
        self, tenant: str, texts: Sequence[str], *, request_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Each text's ``label``, ``probabilities``, ``version`` and ``prediction_id``;
        ``request_key`` (a user or session id) keeps a canary rollout's assignment sticky."""
        body: dict[str, Any] = {"texts": list(texts)}
        if request_key is not None:
            body["request_key"] = request_key
        answer = self.call(
            "POST", f"/v1/tenants/{tenant}/predict", self.token(tenant, "app"), json=body
        )
        predictions: list[dict[str, Any]] = answer["predictions"]
        return predictions

    def feedback(self, tenant: str, prediction_id: str, label: str) -> dict[str, Any]:
        """The true label of a served prediction; the answer is the gateway's report."""
        report: dict[str, Any] = self.call(
            "POST",
            f"/v1/tenants/{tenant}/feedback",
            self.token(tenant, "app"),
            json={"prediction_id": prediction_id, "label": label},
        )
        return report

    def start_round(self, tenant: str, **params: Any) -> dict[str, Any]:
        job: dict[str, Any] = self.call(
            "POST", f"/v1/tenants/{tenant}/rounds", self.token(tenant, "trainer"), json=params
        )
        return job

    def wait_for_job(self, tenant: str, job_id: str) -> dict[str, Any]:
        while True:
            job: dict[str, Any] = self.call(
                "GET", f"/v1/jobs/{job_id}", self.token(tenant, "trainer")
            )
            if job["state"] not in ("queued", "running"):
                return job
            time.sleep(POLL_SECONDS)

    def version(self, tenant: str, version: int) -> dict[str, Any]:
        """A version of the tenant's adapter: status, metrics, lineage, gate verdicts."""
        found: dict[str, Any] = self.call(
            "GET", f"/v1/tenants/{tenant}/versions/{version}", self.token(tenant, "trainer")
        )
        return found

    def versions(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's versions, each with its ``rollout`` (``None`` outside any)."""
        found = self.call("GET", f"/v1/tenants/{tenant}/versions", self.token(tenant, "trainer"))
        return list(found)

    def schedule(self, tenant: str, **changes: Any) -> dict[str, Any]:
        """Set keys of the tenant's schedule policy (none: read it) with its trainer's token;
        its policy, state and newest decisions."""
        path, token = f"/v1/tenants/{tenant}/schedule", self.token(tenant, "trainer")
        if not changes:
            shown: dict[str, Any] = self.call("GET", path, token)
            return shown
        updated: dict[str, Any] = self.call("PUT", path, token, json=changes)
        return updated

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """``/metrics`` parsed: sample name -> (labels, value), with a workspace-wide
        auditor token."""
        response = self.http.get(
            self.url + "/metrics",
            headers={"Authorization": f"Bearer {self.token(None, 'auditor')}"},
        )
        if response.status_code != 200:
            raise error_of(response.status_code, response.json(), "GET /metrics")
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return samples


@dataclass(kw_only=True)
class ServiceClient(ApiClient):
    """A running ``silolearn serve`` process and the tokens granted on it; :meth:`stop` (or
    leaving the ``with`` block) sends SIGTERM and waits for the graceful shutdown."""

    workspace: Path
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, workspace: Path, *, port: int | None = None, log: Path | None = None
    ) -> ServiceClient:
        """``silolearn serve`` on ``workspace`` as a child process, once ``/readyz`` answers
        (the base model is loaded and its digest checked). Its output goes to ``log``
        (default: ``serve.log`` in the workspace)."""
        port = free_port() if port is None else port
        log = workspace / "serve.log" if log is None else log
        command = [sys.executable, "-m", "silolearn.cli", "serve", "-w", str(workspace)]
        with log.open("ab") as handle:
            process = subprocess.Popen(
                [*command, "--port", str(port)], stdout=handle, stderr=subprocess.STDOUT
            )
        client = cls(workspace=workspace, url=f"http://127.0.0.1:{port}", process=process, log=log)
        try:
            client._wait_ready()
        except BaseException:
            client.stop()
            raise
        return client

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise WorkspaceError(
                    f"silolearn serve exited with code {self.process.returncode}: "
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            try:
                if self.http.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise WorkspaceError(f"silolearn serve was not ready after {READY_TIMEOUT:.0f} s")

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> int | None:
        """SIGTERM, as a service manager stops it; the process's exit code (None if it had
        already ended before)."""
        self.http.close()
        if self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    # -- tokens ------------------------------------------------------------------------------

    def grant(
        self,
        tenant: str | None,
        roles: Sequence[str],
        *,
        purpose: str,
        lasting: str = "8h",
        reason: str = "silolearn demo",
    ) -> str:
        """A token from ``silolearn access grant --json`` (printed once; kept here under
        ``(tenant, purpose)``)."""
        command = [sys.executable, "-m", "silolearn.cli", "access", "grant"]
        command += ["-w", str(self.workspace), "--for", lasting, "--reason", reason, "--json"]
        command += ["--workspace-wide"] if tenant is None else ["--tenant", tenant]
        for role in roles:
            command += ["--role", role]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise WorkspaceError(f"access grant failed: {done.stderr.strip()}")
        token = str(json.loads(done.stdout)["token"])
        self.tokens[(tenant, purpose)] = token
        return token
