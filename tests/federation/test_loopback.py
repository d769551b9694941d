"""A federation on loopback with real processes (issue 18, acceptance 1): a coordinator that
holds no tenant data runs a SuperLink and the ServerApp; three sites, each its own
workspace with real data from a different source, run their SuperNodes; three rounds with
SecAgg+ and client-level DP. Every process is started in its own process group and ended
by the test, whatever happens."""

from __future__ import annotations

import functools
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from silolearn import Workspace
from silolearn.datasets import bbc_news, chatterbot_dialogues, rotten_tomatoes
from silolearn.federation.book import initial_weights
from silolearn.learning.shared import SharedStore
from silolearn.storage.scope import Purpose

SITES = {"news": bbc_news, "critics": rotten_tomatoes, "support": chatterbot_dialogues}
ROUNDS = 3
EPSILON = 8.0


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, loopback: Any) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("federation")
    with pytest.MonkeyPatch.context() as patch:
        # a narrow trunk: 16 x 384 weights to mask and to noise instead of 256 x 384
        patch.setenv("SILOLEARN_SHARED__HIDDEN", "16")
        # half of each site's records judge it: about 100 eval records a site
        patch.setenv("SILOLEARN_INGEST__EVAL_FRACTION", "0.5")
        yield _federate(root, loopback)


def _federate(root: Path, loopback: Any) -> dict[str, Any]:
    for name, source in SITES.items():
        loopback.site(root / name, name, source(), 200)
    coordinator = root / "coordinator"
    ws = Workspace.init(coordinator, actor="test")
    start = initial_weights(ws)  # round 0: the seeded trunk the run starts from
    ws.close()
    address = f"127.0.0.1:{loopback.free_port()}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        run = loopback.cli(
            "federation", "run", "--workspace", str(coordinator), "--json",
            "--sites", str(len(SITES)), "--rounds", str(ROUNDS), "--secagg",
            "--epsilon", str(EPSILON), "--address", address, "--round-timeout", "300",
            log=root / "run.out",
        )  # fmt: skip
        started.append(run)
        for name in SITES:
            started.append(
                loopback.cli(
                    "federation",
                    "site",
                    "--workspace",
                    str(root / name),
                    "--superlink",
                    address,
                    "--port",
                    str(loopback.free_port()),
                    log=root / f"{name}.out",
                )
            )
        run.wait(timeout=900)
        output = (root / "run.out").read_text()
        assert run.returncode == 0, output[-3000:]
        result = json.loads(output[output.index("{") :])
    finally:
        for process in reversed(started):
            loopback.end(process)
    # no SuperLink, SuperNode, ServerApp or ClientApp of this federation outlived it
    assert not loopback.leftovers(root)
    return {"root": root, "coordinator": coordinator, "result": result, "start": start}


def _events(path: Path, action: str) -> list[dict[str, Any]]:
    ws = Workspace.open(path, actor="test")
    try:
        return [dict(e.details or {}) for e in ws.audit.events() if e.action == action]
    finally:
        ws.close()


def test_three_sites_three_secagg_rounds_under_client_level_dp(federation: dict[str, Any]) -> None:
    result = federation["result"]
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r["sites_replied"] == len(SITES) and not r["dropped"] for r in rounds)
    spent = [r["epsilon_after"] for r in rounds]
    assert spent == sorted(spent) and 0 < spent[-1] <= EPSILON
    # the ledger charged the noise the three survivors achieved: z sqrt(3/2)
    for r in rounds:
        z = r["privacy"]["noise_multiplier"]
        assert math.isclose(r["privacy"]["achieved_noise_multiplier"], z * math.sqrt(3 / 2))
    ws = Workspace.open(federation["coordinator"], actor="test")
    try:
        assert ws.tenants.list() == []
        version = SharedStore(ws).get(result["version"])
        assert version.lineage["origin"] == "federation"
    finally:
        ws.close()


def test_the_coordinator_never_holds_a_sites_update_in_clear(federation: dict[str, Any]) -> None:
    """What reached the ServerApp's strategy is n copies of the unmasked aggregate; no site's
    update (as the site audited it before masking) is among them."""
    run_id = federation["result"]["run_id"]
    sent: dict[int, set[str]] = {}
    for name in SITES:
        for event in _events(federation["root"] / name, "federation.contribute"):
            if event["run_id"] == run_id:
                sent.setdefault(int(event["round"]), set()).add(event["sent_sha256"])
    for r in federation["result"]["rounds"]:
        assert len(sent[r["round"]]) == len(SITES)
        received = set(r["received_sha256"])
        assert received == {r["aggregate_sha256"]} or len(received) == 1
        assert not received & sent[r["round"]]


@functools.cache
def _encoder() -> Any:
    from silolearn.learning.encoder import FrozenEncoder, default_model_dir

    return FrozenEncoder.load(default_model_dir(), expected_sha256=None)


def _accuracy_and_loss(site: Path, tenant: str, trunk: list[np.ndarray], rows: Any) -> Any:
    """Accuracy and mean cross-entropy of trunk + rows on the site's eval records."""
    import torch

    from silolearn.learning.adapters import INPUT_SCALE

    ws = Workspace.open(site, actor="test")
    try:
        train = ws.scope(tenant, purpose=Purpose.TRAINING).train.read()
        labels = sorted({str(s.record.label) for s in train if s.record.label is not None})
        stored = [
            s
            for s in ws.scope(tenant, purpose=Purpose.EVALUATION).eval.read()
            if s.record.label in labels
        ]
    finally:
        ws.close()
    x = torch.from_numpy(_encoder().embed([s.record.text for s in stored])) * INPUT_SCALE
    y = torch.tensor([labels.index(str(s.record.label)) for s in stored])
    w, b = (torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in trunk)
    features = torch.cat([x, torch.relu(x @ w.T + b)], dim=1)
    if rows is None:  # before any round: no row learned, every label equally likely
        logits = torch.zeros(len(stored), len(labels))
    else:
        logits = features @ rows[0].T + rows[1]
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    majority = max(float((y == k).float().mean()) for k in range(len(labels)))
    return float((logits.argmax(1) == y).float().mean()), loss, majority


def test_the_shared_model_improves_on_each_sites_eval_data(federation: dict[str, Any]) -> None:
    """Each site's version of the last round (the federation's trunk and the site's own
    rows, fitted on it) against round 0 (the trunk the run started from, no row learned:
    every label equally likely) and against the best constant answer of the same eval set.
    With three sites, client-level noise swamps the trunk's own signal (docs/federation.md);
    what improves is the model each site serves from it."""
    from silolearn.learning.adapters import read_artefact

    start = federation["start"]
    for name in SITES:
        site = federation["root"] / name
        ws = Workspace.open(site, actor="test")
        try:
            store = SharedStore(ws)
            latest = store.latest()
            assert latest is not None and latest.lineage["run_id"] == federation["result"]["run_id"]
            _, tensors = read_artefact(store.artefact(latest.version))
            tenant_id = ws.tenants.get(name).id
        finally:
            ws.close()
        trunk = [tensors["trunk.weight"].numpy(), tensors["trunk.bias"].numpy()]
        rows = (tensors[f"rows.{tenant_id}.weight"], tensors[f"rows.{tenant_id}.bias"])
        before, _, majority = _accuracy_and_loss(site, name, start, None)
        after, _, _ = _accuracy_and_loss(site, name, trunk, rows)
        print(name, {"round 0": before, "after": after, "constant answer": majority})
        assert after > max(before, majority), name


def test_every_audit_log_verifies_and_tells_the_rounds(federation: dict[str, Any]) -> None:
    """The chains and the rows they bind (ledger, federated lineage) verify on the
    coordinator and on every site; each tells every round, each site its contributions."""
    from silolearn.audit.rows import verify_rows
    from silolearn.federation.lineage import BOUND_TABLES, federated_lineage
    from silolearn.privacy.ledger import BOUND_TABLES as LEDGER_TABLES

    run_id = federation["result"]["run_id"]
    for path in [federation["coordinator"], *(federation["root"] / n for n in SITES)]:
        ws = Workspace.open(path, actor="test")
        try:
            ws.audit.verify()
            rows = verify_rows(
                ws.conn, (*LEDGER_TABLES, *BOUND_TABLES), signed_seq=ws.audit.signed_seq()
            )
            assert not rows.findings, path.name
            latest = SharedStore(ws).latest()
            assert latest is not None
            lineage = federated_lineage(ws, latest.version)
            assert lineage is not None and lineage.run_id == run_id
            assert lineage.sites_per_round == [len(SITES)] * ROUNDS
        finally:
            ws.close()
        rounds = [e for e in _events(path, "federation.round") if e["run_id"] == run_id]
        assert [e["round"] for e in rounds] == list(range(1, ROUNDS + 1)), path.name
    for name in SITES:
        contributed = _events(federation["root"] / name, "federation.contribute")
        assert len([e for e in contributed if e["run_id"] == run_id]) == ROUNDS
        assert all(e["noise_std"] > 0 and e["tenants"] == [name] for e in contributed)
