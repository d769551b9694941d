"""Sites killed with SIGKILL during a SecAgg+ round (issue 18, acceptance 2), with real
processes on loopback: three sites (each its own workspace with real data from a different
source) and a coordinator that holds no tenant data.

Run 1 (one round): site ``support`` is killed after its SecAgg+ keys and key shares went
through and before it could mask its update, so the round must unmask the survivors' sum
with the survivors' shares of the dead site's key (SecAgg+'s dropout recovery). It completes
over the two survivors, its aggregate equals FedAvg over what they sent, the ledger charges
the noise two survivors achieved, and the dropout is audited.

Run 2 (one round): two sites are killed at the same point; one survivor is below the
reconstruction threshold (2), so the round fails: nothing is charged or versioned.

The kill lands at its stage deterministically: a site writes nothing to its database
between its start and its round's training, so the test holds the victim's write lock from
its start; the victim's training stops at its first write while its keys go through, and it
is killed once a survivor's training has written (the round is then in its
collect-masked-vectors stage) and its own SuperNode has logged that stage's message. No
sleep stands for a synchronisation."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from silolearn import Workspace
from silolearn.datasets import bbc_news, chatterbot_dialogues, rotten_tomatoes
from silolearn.errors import FederationRoundFailed
from silolearn.federation.aggregate import digest
from silolearn.learning.shared import SharedStore

SITES = {"news": bbc_news, "critics": rotten_tomatoes, "support": chatterbot_dialogues}
RECORDS = 60
"""Per site (a fifth of them eval): enough for every tenant's worker to train a round."""
EPSILON = 2.0
"""Each run's, within the federation scope's default budget (8)."""
FEDERATION = "federation"


@pytest.fixture(scope="module")
def dropouts(tmp_path_factory: pytest.TempPathFactory, loopback: Any) -> dict[str, Any]:
    """The two runs, each with its own coordinator and sites, side by side: most of a
    round with a dead site is the wait for its heartbeats to stop (36-60 s)."""
    root = tmp_path_factory.mktemp("dropouts")
    with pytest.MonkeyPatch.context() as patch:
        # a narrow trunk: 16 x 384 weights to train, mask and noise instead of 256 x 384
        patch.setenv("SILOLEARN_SHARED__HIDDEN", "16")
        for federation in ("one", "two"):
            for name, source in SITES.items():
                loopback.site(root / federation / name, name, source(), RECORDS)
            Workspace.init(root / federation / "coordinator", actor="test").close()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_run, loopback, root / "one", killed=["support"], human=True)
            second = pool.submit(
                _run, loopback, root / "two", killed=["critics", "support"], human=False
            )
            runs = {"first": first.result(), "second": second.result()}
    # no SuperLink, SuperNode, ServerApp, ClientApp or worker of either run outlived it
    assert not loopback.leftovers(root)
    return {"one": root / "one", "two": root / "two", **runs}


def _run(loopback: Any, root: Path, *, killed: list[str], human: bool) -> dict[str, Any]:
    """One federated round of the three sites under ``root`` in which the sites ``killed``
    are SIGKILLed after their SecAgg+ key shares went through and before they could mask
    their update; the run's exit code and output."""
    address = f"127.0.0.1:{loopback.free_port()}"
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in SITES:
            started[name] = loopback.cli(
                "federation", "site", "--workspace", str(root / name), "--superlink", address,
                "--port", str(loopback.free_port()), log=root / f"{name}.out",
            )  # fmt: skip
        for name in SITES:  # each site has written what it writes when it starts
            loopback.wait_for(
                f"site {name} to start",
                lambda name=name: "site of" in (root / f"{name}.out").read_text(),
                watch=list(started.values()),
                timeout=180,
            )
        survivors = [n for n in SITES if n not in killed]
        heads = {n: loopback.audit_head(root / n) for n in survivors}
        with contextlib.ExitStack() as held:
            for name in killed:
                held.enter_context(loopback.writes_held(root / name))
            started["run"] = loopback.cli(
                "federation", "run", "--workspace", str(root / "coordinator"),
                *([] if human else ["--json"]), "--sites", str(len(SITES)), "--rounds", "1",
                "--secagg", "--epsilon", str(EPSILON), "--address", address,
                "--round-timeout", "300", "--name", FEDERATION, log=root / "run.out",
            )  # fmt: skip
            # a survivor's training has written: the round is past its share-keys stage
            loopback.wait_for(
                f"a survivor's training in {root.name}",
                lambda: any(loopback.audit_head(root / n) > heads[n] for n in survivors),
                watch=list(started.values()),
                timeout=480,
            )
            for name in killed:  # and the victim has the collect stage's message in hand
                loopback.wait_for(
                    f"site {name} to receive the collect-masked-vectors message",
                    lambda name=name: _received(root / name) >= 3,
                    watch=list(started.values()),
                    timeout=300,
                )
            for name in killed:
                loopback.kill(started[name])
        started["run"].wait(timeout=480)
        return {"returncode": started["run"].returncode, "output": (root / "run.out").read_text()}
    finally:
        for process in reversed(list(started.values())):
            loopback.end(process)


def _results(coordinator: Path) -> dict[str, dict[str, Any]]:
    """The ServerApp's result file of each run, by status."""
    found = {}
    for path in (coordinator / "federation").glob("*/result.json"):
        result = json.loads(path.read_text())
        found[result["status"]] = {**result, "run_id": path.parent.name}
        found[result["status"]]["plan"] = json.loads((path.parent / "plan.json").read_text())
    return found


def _events(path: Path, action: str, run_id: str) -> list[dict[str, Any]]:
    """The details of the run's ``action`` events in the workspace's audit log."""
    with Workspace.open(path, actor="test") as ws:
        return [
            dict(e.details or {})
            for e in ws.audit.events(action=action)
            if e.object == f"federation/{run_id}"
        ]


def _node(path: Path, run_id: str) -> str:
    """The node id a site had in a run, as it audited its contribution."""
    (contributed,) = _events(path, "federation.contribute", run_id)
    return str(contributed["node_id"])


def _received(site: Path) -> int:
    """How many round messages the site's SuperNode has logged receiving."""
    log = site / "federation" / "supernode.log"
    return log.read_text().count("Receiving: train message") if log.exists() else 0


def _killed_in_collect_stage(site: Path) -> bool:
    """Whether the site's SuperNode answered the round's first two SecAgg+ messages (its
    keys, its key shares) and received the third (collect-masked-vectors) without answering
    it: killed while it trained, not failed (a site whose training failed sends an error
    reply)."""
    log = (site / "federation" / "supernode.log").read_text()
    return log.count("Receiving: train message") == 3 and log.count("Sending: train message") == 2


def _error(output: str) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return error


def test_a_site_killed_mid_round_leaves_the_round_to_its_survivors(
    dropouts: dict[str, Any],
) -> None:
    from silolearn.errors import NotFoundError
    from silolearn.federation.site import exchange

    first = dropouts["first"]
    assert first["returncode"] == 0, first["output"][-3000:]
    result = _results(dropouts["one"] / "coordinator")["done"]
    assert f"shared v{result['version']}" in first["output"]  # the human table
    (round_,) = result["rounds"]
    root, run_id = dropouts["one"], result["run_id"]
    survivors = sorted(_node(root / n, run_id) for n in ("news", "critics"))
    assert sorted(round_["replied"]) == survivors and round_["sites_replied"] == 2
    assert len(round_["sampled"]) == 3 and len(round_["dropped"]) == 1
    assert round_["failures"] == 1
    assert round_["dropped"][0] not in survivors
    # the killed site sent nothing: it was killed before it could mask its update...
    assert _killed_in_collect_stage(root / "support")
    assert _events(root / "support", "federation.contribute", run_id) == []
    with Workspace.open(root / "support", actor="test") as ws, pytest.raises(NotFoundError):
        exchange(ws, run_id, 1)
    # ... and after its keys and key shares went through: SecAgg+ removed its masks from
    # the survivors' sum with the survivors' shares of its key (its dropout recovery)
    assert round_["stages"] == {
        "setup": 3,
        "share-keys": 3,
        "collect-masked-vectors": 2,
        "unmask": 2,
    }


def test_the_aggregate_equals_fedavg_over_the_survivors(dropouts: dict[str, Any]) -> None:
    """The shared version of run 1 against the mean of what the two survivors sent (each
    site keeps it sealed in its own workspace), computed here.

    The tolerance is SecAgg+'s quantisation, derived: each site's coordinates are mapped to
    ``(w + c) Q / 2c`` in float32 (at most 2 x 2**-24 x Q = 0.5 quantum of rounding, with
    Q = 2**22 levels) and rounded stochastically (less than 1 quantum), so each site's
    dequantised weights are within 1.5 steps of ``2c / Q`` of what it sent, and so is their
    mean; the version stores the mean as float32 (2**-24 of its magnitude)."""
    from silolearn.federation.site import exchange
    from silolearn.learning.adapters import read_artefact

    result = _results(dropouts["one"] / "coordinator")["done"]
    run_id, plan = result["run_id"], result["plan"]
    (round_,) = result["rounds"]
    sent = []
    for name in ("news", "critics"):
        with Workspace.open(dropouts["one"] / name, actor="test") as ws:
            _, arrays = exchange(ws, run_id, 1)
        (contributed,) = _events(dropouts["one"] / name, "federation.contribute", run_id)
        assert digest(arrays) == contributed["sent_sha256"]
        sent.append([np.asarray(a, dtype=np.float64) for a in arrays])
    expected = [(a + b) / 2 for a, b in zip(*sent, strict=True)]
    with Workspace.open(dropouts["one"] / "coordinator", actor="test") as ws:
        _, tensors = read_artefact(SharedStore(ws).artefact(result["version"]))
    aggregate = [tensors["trunk.weight"].numpy(), tensors["trunk.bias"].numpy()]
    assert digest(aggregate) == round_["aggregate_sha256"]
    step = 2 * plan["clipping_range"] / plan["quantization_range"]
    largest = max(float(np.abs(a).max()) for a in aggregate)
    tolerance = 1.5 * step + 2.0**-24 * largest
    for got, want in zip(aggregate, expected, strict=True):
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= tolerance
    # a sharp comparison: the two survivors' weights differ by far more than the tolerance
    assert float(np.abs(sent[0][0] - sent[1][0]).max()) > 1000 * tolerance
    # and every survivor's own version of the run is that aggregate
    for name in ("news", "critics"):
        with Workspace.open(dropouts["one"] / name, actor="test") as ws:
            latest = SharedStore(ws).latest()
            assert latest is not None and latest.lineage["run_id"] == run_id
            assert latest.lineage["aggregate_sha256"] == round_["aggregate_sha256"]


def test_the_ledger_charges_the_noise_the_survivors_achieved(dropouts: dict[str, Any]) -> None:
    """Each site's noise is sized for ``min_sites`` = 2 survivors: two survivors achieve
    ``z sqrt(2/2)``, the figure charged (three would have achieved ``z sqrt(3/2)``)."""
    from silolearn.privacy.ledger import federation_scope

    result = _results(dropouts["one"] / "coordinator")["done"]
    plan = result["plan"]
    (round_,) = result["rounds"]
    z, m = plan["noise_multiplier"], plan["min_sites"]
    assert m == 2
    with Workspace.open(dropouts["one"] / "coordinator", actor="test") as ws:
        events = ws.ledger().events(federation_scope(FEDERATION))
    (charged,) = events  # one round, one charge
    assert charged.run_id == result["run_id"]
    assert charged.event.noise_multiplier == pytest.approx(z * math.sqrt(2 / m))
    assert charged.event.noise_multiplier < z * math.sqrt(3 / m) * 0.9
    assert round_["privacy"]["survivors"] == 2
    assert round_["privacy"]["achieved_noise_multiplier"] == pytest.approx(
        charged.event.noise_multiplier
    )
    assert round_["epsilon_after"] == pytest.approx(charged.epsilon_after)


def test_too_few_survivors_fail_the_round_with_nothing_charged_or_versioned(
    dropouts: dict[str, Any],
) -> None:
    from silolearn.privacy.ledger import federation_scope

    second = dropouts["second"]
    assert second["returncode"] == FederationRoundFailed.exit_code, second["output"][-3000:]
    error = _error(second["output"])  # --json: the typed error on stderr
    assert error["error"] == "FederationRoundFailed"
    details = error["details"]
    assert details["reason"] == "too-few-survivors"
    assert details["stage"] == "collect-masked-vectors" and details["threshold"] == 2
    assert len(details["sampled"]) == 3 and len(details["dropped"]) == 2
    assert "with 1 of the 3 sampled site(s) left, fewer than the 2" in error["message"]
    run_id, two = details["run_id"], dropouts["two"]
    assert details["survivors"] == [_node(two / "news", run_id)]
    assert _killed_in_collect_stage(two / "critics") and _killed_in_collect_stage(two / "support")
    coordinator = two / "coordinator"
    (failed,) = _events(coordinator, "federation.round_failed", run_id)
    assert failed["dropped"] == details["dropped"] and failed["replied"] == details["survivors"]
    assert failed["charged"] is False and failed["privacy"] is None
    assert failed["stages"]["share-keys"] == 3 and failed["stages"]["collect-masked-vectors"] == 1
    assert _events(coordinator, "federation.failed", run_id)
    assert _results(coordinator)["failed"]["run_id"] == run_id
    with Workspace.open(coordinator, actor="test") as ws:
        assert ws.ledger().events(federation_scope(FEDERATION)) == []  # nothing charged
        assert SharedStore(ws).versions() == []  # nothing versioned
    for name in SITES:  # on no site either
        with Workspace.open(two / name, actor="test") as ws:
            assert SharedStore(ws).versions() == []


def test_every_audit_log_verifies_and_names_the_dropped_sites(dropouts: dict[str, Any]) -> None:
    from silolearn.audit.rows import verify_rows
    from silolearn.federation.lineage import BOUND_TABLES
    from silolearn.privacy.ledger import BOUND_TABLES as LEDGER_TABLES

    for federation in (dropouts["one"], dropouts["two"]):
        for path in [federation / "coordinator", *(federation / n for n in SITES)]:
            with Workspace.open(path, actor="test") as ws:
                ws.audit.verify()
                rows = verify_rows(
                    ws.conn, (*LEDGER_TABLES, *BOUND_TABLES), signed_seq=ws.audit.signed_seq()
                )
                assert not rows.findings, path
    one = dropouts["one"]
    result = _results(one / "coordinator")["done"]
    (round_,) = result["rounds"]
    for side in (one / "coordinator", one / "news", one / "critics"):
        (told,) = _events(side, "federation.round", result["run_id"])
        assert told["dropped"] == round_["dropped"], side.name


def test_a_failed_round_says_whether_the_ledger_charged_it(ws_path: Path) -> None:
    """Without SecAgg+ the coordinator saw every update that reached it: a failed round is
    charged, and its audit says so; under SecAgg+ it unmasked nothing and is not charged."""
    from silolearn.federation.book import RoundBook
    from silolearn.federation.plan import plan_for
    from silolearn.privacy.ledger import federation_scope

    Workspace.init(ws_path, actor="test").close()
    for secagg in (False, True):
        name = f"net-{int(secagg)}"
        plan = plan_for(
            sites=3, rounds=1, min_sites=2, secagg=secagg, max_update_norm=1.0,
            noise_multiplier=2.0, weight_bound=0.5, federation=name,
        )  # fmt: skip
        workdir = ws_path / "federation" / f"run{int(secagg)}"
        workdir.mkdir(parents=True)
        book = RoundBook(workdir, plan, {"status": "failed", "rounds": []})
        try:
            failed = FederationRoundFailed("round 1: the aggregate did not move", round=1)
            book.round_failed(
                1, failed, {"sampled": ["1", "2", "3"], "nodes": ["1", "2"], "replies": 2}
            )
        finally:
            book.ws.close()
    with Workspace.open(ws_path, actor="test") as ws:
        audited = {
            e.details["federation"]: e.details
            for e in ws.audit.events(action="federation.round_failed")
        }
        clear, masked = audited["net-0"], audited["net-1"]
        (charged,) = ws.ledger().events(federation_scope("net-0"))
        assert ws.ledger().events(federation_scope("net-1")) == []
    # each site's noise is sized for 2; without SecAgg+ one site's own noise is what hides it
    assert charged.event.noise_multiplier == pytest.approx(2.0 / math.sqrt(2))
    assert clear["charged"] is True and clear["dropped"] == ["3"]
    assert clear["privacy"]["achieved_noise_multiplier"] == pytest.approx(2.0 / math.sqrt(2))
    assert masked["charged"] is False and masked["privacy"] is None


def test_a_site_keeps_what_it_sent_sealed_in_its_own_workspace(ws: Workspace) -> None:
    from silolearn.errors import InvalidInput, NotFoundError
    from silolearn.federation.site import exchange, keep_exchange

    received = [np.zeros((2, 3), dtype=np.float32), np.ones(2, dtype=np.float64)]
    sent = [np.full((2, 3), 0.25, dtype=np.float32), np.array([1.5, -2.0])]
    keep_exchange(ws, "a1b2", 3, received=received, sent=sent)
    got_received, got_sent = exchange(ws, "a1b2", 3)
    for got, want in zip([*got_received, *got_sent], [*received, *sent], strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    (path,) = (ws.path / "federation" / "exchanges" / "a1b2").iterdir()
    assert b"received_0" not in path.read_bytes()  # sealed, not an npz in clear
    with pytest.raises(NotFoundError):
        exchange(ws, "a1b2", 4)
    with pytest.raises(InvalidInput):
        keep_exchange(ws, "../elsewhere", 1, received=received, sent=sent)
