"""The record of federated learning (I7, issue 18): every round audited on the coordinator
and on a site, a federated version's lineage sealed and bound to the audit chain, a site's
pin and refusal of shared versions. Real workspaces and the real `silolearn audit verify`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_cli
from silolearn import Workspace
from silolearn.errors import ConflictError, FederationRoundFailed, InvalidInput, NotFoundError
from silolearn.federation.lineage import (
    RoundRecord,
    audit_contribution,
    audit_round,
    audit_round_failed,
    decisions,
    federated_lineage,
    follow,
    pin,
    record_lineage,
    refuse,
)
from silolearn.federation.privacy import ClientDp, charge, privatise_update
from silolearn.learning.shared import SharedStore

NET = "hospitals"
RUN = "3f2a9c0d11e4b5a6"
NODES = ("17959493375807529476", "4211", "98765")


def _version(ws: Workspace, payload: bytes) -> int:
    """A shared version as a federated site keeps one (the artefact's bytes do not matter
    to pinning: the registry's row does)."""
    store = SharedStore(ws)
    lineage = {
        "origin": "federation",
        "trunk_sha256": hashlib.sha256(payload).hexdigest(),
        "members": [{"tenant": m["tenant"]} for m in store.members()],
        "privacy": {"charge": {"epsilon_after": None}},
    }
    return store.add(payload, lineage).version


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A coordinator after a three-round run with a dropout in round 2 and a failed round 3
    retried as round 4: rounds audited, charged, and the version's lineage recorded."""
    path = tmp_path_factory.mktemp("coordinator") / "ws"
    with Workspace.init(path, actor="test") as ws:
        dp = ClientDp(clip_norm=1.0, noise_multiplier=2.0, sized_for=3, min_sites=2)
        rounds = []
        for round_no, replied in ((1, NODES), (2, NODES[:2]), (4, NODES)):
            charged = charge(ws, NET, dp, run_id=RUN, round_no=round_no, survivors=len(replied))
            record = RoundRecord.of(
                round_no,
                sampled=NODES,
                replied=replied,
                charge=charged,
                aggregate_sha256=f"{round_no:064x}",
                seconds=12.5,
                superlink_run=7,
            )
            audit_round(ws, NET, RUN, record)
            rounds.append(record)
        failed = FederationRoundFailed("round 3: 1 site(s) replied", round=3)
        audit_round_failed(ws, NET, RUN, 3, failed, sampled=NODES, replied=NODES[:1])
        version = _version(ws, b"federated trunk")
        record_lineage(
            ws, version=version, federation=NET, run_id=RUN, rounds=rounds, superlink_run_id="7"
        )
    return path


def test_every_round_is_audited_with_who_dropped_the_noise_and_epsilon(coordinator: Path) -> None:
    with Workspace.open(coordinator) as ws:
        events = ws.audit.events(action="federation.round")
        charges = ws.audit.events(action="privacy.charge")
        failed = ws.audit.events(action="federation.round_failed")
    assert [e.details["round"] for e in events] == [1, 2, 4]
    second = events[1].details
    assert second["sampled"] == list(NODES) and second["replied"] == list(NODES[:2])
    assert second["dropped"] == [NODES[2]]
    assert second["privacy"]["survivors"] == 2
    assert second["privacy"]["achieved_noise_multiplier"] == pytest.approx(2.0 * (2 / 3) ** 0.5)
    assert second["superlink_run"] == 7 and events[1].object == f"federation/{RUN}"
    # the epsilon after each round is the ledger's
    assert [e.details["epsilon_after"] for e in events] == [
        c.details["epsilon_after"] for c in charges
    ]
    assert failed[0].details["dropped"] == list(NODES[1:]) and not failed[0].details["charged"]
    assert failed[0].details["error"] == "FederationRoundFailed"


def test_the_lineage_is_sealed_and_reads_back(coordinator: Path) -> None:
    with Workspace.open(coordinator) as ws:
        version = SharedStore(ws).latest()
        assert version is not None
        lineage = federated_lineage(ws, version.version)
        assert lineage is not None
        assert federated_lineage(ws, version.version + 1) is None
        events = ws.ledger().events("federation:" + NET)
        sealed = bytes(ws.conn.execute("SELECT sealed FROM federated_lineage").fetchone()[0])
        with pytest.raises(ConflictError, match="already has its federated lineage"):
            record_lineage(
                ws, version=version.version, federation=NET, run_id=RUN, rounds=lineage.rounds
            )
    assert lineage.federation == NET and lineage.run_id == RUN
    assert lineage.sites_per_round == [3, 2, 3]
    assert [r.round_no for r in lineage.rounds] == [1, 2, 4]
    assert lineage.rounds[1].dropped == (NODES[2],)
    assert lineage.epsilon_after == events[-1].epsilon_after
    assert lineage.superlink_run_id == "7"
    assert lineage.rounds[0].extra == {"superlink_run": 7}
    # who took part is in the sealed part only
    assert NODES[0].encode() not in sealed and b"replied" not in sealed


def test_a_lineage_needs_a_version_and_rounds(site: Workspace) -> None:
    record = RoundRecord.of(1, sampled=NODES, replied=NODES)
    with pytest.raises(InvalidInput, match="at least one round"):
        record_lineage(site, version=1, federation=NET, run_id=RUN, rounds=[])
    with pytest.raises(NotFoundError, match="no version 9"):
        record_lineage(site, version=9, federation=NET, run_id=RUN, rounds=[record])
    with pytest.raises(InvalidInput, match="replied unsampled"):
        RoundRecord.of(1, sampled=NODES[:1], replied=NODES)


def _verify(workspace: Path, *, human: bool = False) -> tuple[int, dict[str, Any], str]:
    """`silolearn audit verify --json` (and, asked, its human form) in its own process."""
    result = run_cli("audit", "verify", "--workspace", str(workspace), "--json")
    text = ""
    if human:
        shown = run_cli("audit", "verify", "--workspace", str(workspace))
        assert shown.returncode == result.returncode
        text = shown.stdout + shown.stderr
    return result.returncode, json.loads(result.stdout or "{}"), text


def test_I7_the_coordinators_chain_and_lineage_verify_and_tampering_is_caught(
    coordinator: Path, tmp_path: Path
) -> None:
    code, report, _ = _verify(coordinator)
    assert code == 0 and report["ok"], report
    assert report["rows"]["federated_lineage"] == 1
    copy = tmp_path / "copy"
    shutil.copytree(coordinator, copy)
    conn = sqlite3.connect(copy / "silolearn.db")
    conn.executescript(
        "DROP TRIGGER federated_lineage_no_update;"
        "UPDATE federated_lineage SET epsilon_after = epsilon_after / 10;"
    )
    conn.commit()
    conn.close()
    code, report, human = _verify(copy, human=True)
    assert code == 8 and not report["ok"]
    assert [(f["kind"], f["table"]) for f in report["findings"]] == [
        ("altered", "federated_lineage")
    ]
    assert "federated_lineage row version=1 was altered" in human


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Workspace]:
    """A site with two joined tenants and three shared versions from its federation."""
    with Workspace.init(tmp_path / "site", actor="test") as ws:
        store = SharedStore(ws)
        for name in ("north", "south"):
            ws.create_tenant(name)
            store.join(name)
        for i in (1, 2, 3):
            _version(ws, f"aggregate of round {i}".encode())
        yield ws


def test_a_site_refuses_a_version_and_no_tenant_gets_it(site: Workspace) -> None:
    store = SharedStore(site)
    assert store.pinned("north").version == 3  # type: ignore[union-attr]
    refuse(site, 3, reason="divergence on site eval", federation=NET)
    assert store.refused() == {3}
    assert [store.pinned(t).version for t in ("north", "south")] == [2, 2]  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="refused on this site"):
        pin(site, 3, reason="try anyway")
    with pytest.raises(ConflictError, match="refused on this site"):
        store.pin("north", 3)
    pin(site, 1, reason="stay on the audited version", federation=NET)
    assert [m["pinned_version"] for m in store.members()] == [1, 1]
    assert store.pinned("south").version == 1  # type: ignore[union-attr]
    refuse(site, 1, reason="recalled by the federation", federation=NET)
    # members pinned to a refused version follow the latest usable one again
    assert [m["pinned_version"] for m in store.members()] == [None, None]
    assert store.pinned("north").version == 2  # type: ignore[union-attr]
    refuse(site, 2, reason="recalled", federation=NET)
    assert store.pinned("north") is None
    with pytest.raises(ConflictError, match="refused on this site"):
        pin(site, 3, reason="reviewed again")  # a refusal is final
    assert store.refused() == {1, 2, 3}
    fourth = _version(site, b"aggregate of round 4")
    pin(site, fourth, reason="the next round's aggregate, reviewed", federation=NET)
    assert fourth == 4 and store.pinned("south").version == 4  # type: ignore[union-attr]
    follow(site, reason="back to the latest", federation=NET)
    assert [m["pinned_version"] for m in store.members()] == [None, None]
    made = decisions(site)
    assert [(d.decision, d.version) for d in made] == [
        ("refuse", 3),
        ("pin", 1),
        ("refuse", 1),
        ("refuse", 2),
        ("pin", 4),
        ("follow", None),
    ]
    assert made[0].trunk_sha256 == store.get(3).trunk_sha256
    audited = site.audit.events(action="federation.refuse")
    assert [e.object for e in audited] == ["shared/v3", "shared/v1", "shared/v2"]
    with pytest.raises(InvalidInput, match="says why"):
        refuse(site, 2, reason=" ")


def test_I7_a_sites_chain_with_its_contributions_and_decisions_verifies(
    site: Workspace, tmp_path: Path
) -> None:
    dp = ClientDp(clip_norm=1.0, noise_multiplier=2.0, sized_for=3, min_sites=2)
    update = [np.full((4, 3), 0.5), np.ones(3)]
    _, noise = privatise_update(update, dp)
    audit_contribution(
        site,
        NET,
        RUN,
        1,
        noise,
        tenants=["north", "south"],
        records=[120, 80],
        trained_from="shared/v3",
        worker_pids=[4242, 4243],
    )
    record = RoundRecord.of(1, sampled=NODES, replied=NODES[:2])
    audit_round(site, NET, RUN, RoundRecord.from_dict(record.to_dict()), side="site")
    refuse(site, 3, reason="divergence", federation=NET)
    pin(site, 2, reason="hold", federation=NET)
    contribute = site.audit.events(action="federation.contribute")[0].details
    assert contribute["clipped"] and contribute["norm_before"] == pytest.approx(6**0.5)
    assert contribute["noise_std"] == pytest.approx(dp.site_noise_std)
    assert contribute["records"] == [120, 80] and contribute["worker_pids"] == [4242, 4243]
    assert site.audit.events(action="federation.round")[0].details["side"] == "site"
    site.audit.checkpoint_if_moved()  # what closing the workspace does: sign the head
    code, report, _ = _verify(tmp_path / "site")
    assert code == 0 and report["ok"], report
    assert report["rows"]["federation_decisions"] == 2
    conn = sqlite3.connect(tmp_path / "site" / "silolearn.db")
    conn.executescript(
        "DROP TRIGGER federation_decisions_no_delete;"
        "DELETE FROM federation_decisions WHERE decision = 'refuse';"
    )
    conn.commit()
    conn.close()
    code, report, _ = _verify(tmp_path / "site")
    assert code == 8
    assert [(f["kind"], f["table"]) for f in report["findings"]] == [
        ("deleted", "federation_decisions")
    ]
