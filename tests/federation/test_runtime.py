"""The runtime's failures with real Flower processes: a ServerApp that fails makes
``flwr run`` exit 0, so the coordinator reads the ServerApp's result file instead."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import run_cli
from silolearn import Workspace
from silolearn.errors import FederationRoundFailed
from silolearn.federation import processes


def test_sites_that_never_connect_fail_the_run_with_an_error(ws_path: Path) -> None:
    """Flower's ServerApp waits for its sites forever; silolearn's waits until the round
    timeout, fails, and the failure reaches the CLI although ``flwr run`` exited 0."""
    Workspace.init(ws_path, actor="test").close()
    port = processes.free_port()
    result = run_cli(
        "federation", "run", "--workspace", str(ws_path), "--json", "--sites", "2",
        "--rounds", "1", "--round-timeout", "5", "--address", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert result.returncode == FederationRoundFailed.exit_code, result.stderr
    error = json.loads(result.stderr)
    assert error["error"] == "FederationRoundFailed"
    assert error["details"]["reason"] == "sites-missing"
    (run_dir,) = (ws_path / "federation").iterdir()
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"
    ws = Workspace.open(ws_path, actor="test")
    try:
        failed = [e for e in ws.audit.events() if e.action == "federation.failed"]
        assert failed and failed[-1].details["reason"] == "sites-missing"
        assert ws.ledger().events("federation:federation") == []  # nothing charged
    finally:
        ws.close()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert not [line for line in ps.stdout.splitlines() if str(run_dir) in line]
