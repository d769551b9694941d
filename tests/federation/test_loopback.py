"""A federation on loopback with real processes (issue 18, acceptance 1): a coordinator that
holds no tenant data runs a SuperLink and the ServerApp; three sites, each its own
workspace with real data from a different source, run their SuperNodes; three rounds with
SecAgg+ and client-level DP. Every process is started in its own process group and ended
by the test, whatever happens."""

from __future__ import annotations

import io
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binom

from silolearn import Workspace
from silolearn.datasets import bbc_news, chatterbot_dialogues, rotten_tomatoes, sample
from silolearn.demo import federated as demo
from silolearn.demo.site_eval import EvalSet, encoder_for, held_out_set, shared_model
from silolearn.federation.book import initial_weights
from silolearn.learning.shared import SharedStore

SITES = {"news": bbc_news, "critics": rotten_tomatoes, "support": chatterbot_dialogues}
ROUNDS = 3
EPSILON = 8.0
RECORDS = 200
"""Records each site ingests (a tenth of them its eval split)."""
HELD_OUT = 600
"""Records of each site's source it never ingested, judged beside its eval split."""


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, loopback: Any) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("federation")
    with pytest.MonkeyPatch.context() as patch:
        # a narrow trunk: 16 x 384 weights to mask and to noise instead of 256 x 384
        patch.setenv("SILOLEARN_SHARED__HIDDEN", "16")
        # the default eval fraction (about 180 records a site train, 20 are its eval split):
        # the sites are judged on HELD_OUT more records of their sources besides
        yield _federate(root, loopback)


def _federate(root: Path, loopback: Any) -> dict[str, Any]:
    for name, source in SITES.items():
        loopback.site(root / name, name, source(), RECORDS)
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


@pytest.fixture(scope="module")
def eval_sets(federation: dict[str, Any]) -> dict[str, EvalSet]:
    """Each site's eval records, embedded once for the tests that judge the run."""
    return demo.eval_sets(demo.Layout(federation["root"], tuple(SITES)))


@pytest.fixture(scope="module")
def judged(federation: dict[str, Any], eval_sets: dict[str, EvalSet]) -> dict[str, EvalSet]:
    """Each site's eval records and HELD_OUT more of its source that it never ingested
    (the records it took are the fixture's sample; the rest is sampled with another seed,
    whatever the workspace secret), embedded by the site's base model."""
    sets = {}
    for name, source in SITES.items():
        rows = source()
        taken = {r["id"] for r in sample(rows, RECORDS, seed=11)}
        rest = sample([r for r in rows if r["id"] not in taken], HELD_OUT, seed=12)
        with Workspace.open(federation["root"] / name, actor="test") as ws:
            records = [(str(r["text"]), str(r["label"])) for r in rest]
            sets[name] = eval_sets[name].joined(held_out_set(ws, name, records, encoder_for(ws)))
    return sets


def test_the_shared_model_improves_on_each_sites_eval_data(
    federation: dict[str, Any], eval_sets: dict[str, EvalSet], judged: dict[str, EvalSet]
) -> None:
    """Each site's version of the last round (the federation's trunk and the site's own
    rows, fitted on it) against round 0 (the trunk the run started from, no row learned:
    every label equally likely) and against the best constant answer, on the site's eval
    records and HELD_OUT records of its source it never ingested (about 620 a site), the
    two models paired record by record. With three sites, client-level noise swamps the
    trunk's own signal (docs/federation.md); what improves is the model each site serves.

    The tightest site is critics (three labels, its first one also the most common: round
    0 is the constant answer): 0.675 against 0.535 in one run (185 records gained, 98
    lost). Per record the two models differ on about 45% of the records: over 620 the mean
    gain has a standard error near 0.027, so a true gain of 0.14 comes out at or below zero
    with odds of 1e-7, one of 0.09 (a logistic regression on the frozen embeddings of 180
    records) with odds of 5e-4. On ~100 eval records with half the records held back from
    training (the assertion before) they were 1-5% a run: the sites now train on the
    default 90% and are judged on the held-out records instead."""
    layout = demo.Layout(federation["root"], tuple(SITES))
    run_id = federation["result"]["run_id"]
    scores = demo.accuracy(layout, run_id, federation["start"], eval_sets)
    for name, score in scores.items():
        s = judged[name]
        with Workspace.open(layout.site(name), actor="test") as ws:
            trunk, rows = shared_model(ws, score["version"], s.tenant_id)
        final, first = s.correct(trunk, rows), s.correct(federation["start"], None)
        gained, lost = int((final & ~first).sum()), int((first & ~final).sum())
        # one-sided exact McNemar: how likely this many gains were if neither model were better
        p_value = float(binom.sf(gained - 1, gained + lost, 0.5)) if gained + lost else 1.0
        print(
            f"{name}: eval split {score['final']:.3f} (round 0 {score['round_0']:.3f}, "
            f"constant {score['constant_answer']:.3f}, {score['eval_records']} records); "
            f"with held-out records {final.mean():.3f} (round 0 {first.mean():.3f}, constant "
            f"{s.constant_answer:.3f}, {s.size} records): {gained} gained, {lost} lost, "
            f"McNemar p {p_value:.1e}"
        )
        assert s.size > HELD_OUT and gained > lost, name
        assert final.mean() > s.constant_answer, name


def test_the_federated_demo_reports_the_run(
    federation: dict[str, Any], eval_sets: dict[str, EvalSet]
) -> None:
    """``silolearn demo --federated``'s report, tables and JSON, from this real run (the
    demo's layout: a coordinator and the sites beside it): every round with its replies and
    epsilon, each site's accuracy, and the coordinator's ledger charging every round."""
    from rich.console import Console

    layout = demo.Layout(federation["root"], tuple(SITES))
    result = federation["result"]
    report = demo.report_of(layout, result, federation["start"], eval_sets, "federation")
    assert json.loads(json.dumps(report)) == report
    events = report["ledger"]["events"]
    assert [e["run_id"] for e in events] == [result["run_id"]] * ROUNDS
    assert [e["epsilon_after"] for e in events] == [r["epsilon_after"] for r in result["rounds"]]
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(demo.rounds_table(report))
    console.print(demo.ledger_table(report["ledger"]))
    text = console.export_text()
    for r in result["rounds"]:
        assert f"{r['epsilon_after']:.3f}" in text
    for score in report["accuracy"].values():
        assert f"{score['round_0']:.3f}" in text and f"{score['final']:.3f}" in text
    assert f"privacy ledger of federation:federation: ε {events[-1]['epsilon_after']:.3f}" in text


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
