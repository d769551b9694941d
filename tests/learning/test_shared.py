"""The shared layer (I2, I9): each member's clipped gradient sum is computed in that
member's own worker process, the coordinator adds the noise once, the shared ledger refuses
a run past its budget before any step, and tenants that did not join receive nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from silolearn import Workspace
from silolearn.datasets import health_tweets, rotten_tomatoes, sample
from silolearn.errors import PrivacyBudgetExceeded
from silolearn.learning.shared import SharedStore, SharedTrainer, SharedVersion
from silolearn.learning.worker import records_digest
from silolearn.pipeline import Trainer
from silolearn.privacy.ledger import SHARED
from silolearn.storage.scope import Purpose

MEMBERS = ("news", "critics")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, SharedVersion]]:
    ws = Workspace.init(tmp_path_factory.mktemp("shared") / "ws", actor="test")
    reviews = sample(rotten_tomatoes(), 300, seed=41)
    for name, rows in (
        ("news", sample(health_tweets(), 200, seed=42)),
        ("critics", reviews[:200]),
        ("outsider", reviews[200:]),
    ):
        ws.create_tenant(name)
        ws.tenant(name).ingest(rows)
    store = SharedStore(ws)
    for name in MEMBERS:
        store.join(name)
    version = SharedTrainer(ws).train(epsilon=1.0, seed=3)
    yield ws, version
    ws.close()


def _labelled_ids(ws: Workspace, tenant: str, cutoff: str) -> list[str]:
    scope = ws.scope(tenant, purpose=Purpose.TRAINING)
    return [s.record.id for s in scope.train.read(until=cutoff) if s.record.label is not None]


def test_I2_each_members_contribution_is_computed_in_its_own_process(
    shared: tuple[Workspace, SharedVersion],
) -> None:
    ws, version = shared
    members = {m["tenant"]: m for m in version.lineage["members"]}
    assert set(members) == set(MEMBERS)
    pids = {m["worker_pid"] for m in members.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    for name, member in members.items():
        info = ws.tenants.get(name)
        assert member["tenant_id"] == info.id
        # the digest of exactly this tenant's labelled records, keyed by its own tenant id
        ids = _labelled_ids(ws, name, member["cutoff"])
        assert member["records"] == len(ids)
        assert member["records_digest"] == records_digest(info.id, ids)
        assert (
            member["sandbox"]["abi"] >= 0
            and member["steps"] == (version.lineage["privacy"]["plan"]["steps"])
        )
    contributed = [e for e in ws.audit.events() if e.action == "shared.contribute"]
    assert {(e.actor, e.tenant) for e in contributed} == {
        (f"worker:shared:{n}", n) for n in MEMBERS
    }


def test_noise_is_added_once_by_the_coordinator(shared: tuple[Workspace, SharedVersion]) -> None:
    _, version = shared
    privacy = version.lineage["privacy"]
    noise, plan = privacy["noise"], privacy["plan"]
    print("noise:", noise)
    assert noise["added_by"] == "coordinator"
    assert noise["std"] == pytest.approx(plan["noise_multiplier"] * plan["max_grad_norm"])
    # one draw of std sigma*C per coordinate per step: two draws would measure sqrt(2) more
    assert noise["measured_std"] == pytest.approx(noise["std"], rel=0.02)
    # what the members sent is a clipped sum (norm at most C per sampled example): no noise
    assert noise["contribution_norm_over_bound"] <= 1.0 + 1e-5
    assert plan["records"] == sum(m["records"] for m in version.lineage["members"])


def test_I9_the_shared_ledger_refuses_a_run_past_its_budget_before_any_step(
    shared: tuple[Workspace, SharedVersion],
) -> None:
    ws, version = shared
    ledger = ws.ledger()
    summary = ledger.summary(SHARED)
    assert [e["run_id"] for e in summary["events"]] == [version.lineage["run_id"]]
    assert summary["epsilon_spent"] == pytest.approx(
        version.lineage["privacy"]["charge"]["epsilon_after"]
    )
    assert summary["epsilon_spent"] <= 1.0 + 1e-6
    ledger.set_policy(SHARED, tenant=None, epsilon_budget=summary["epsilon_spent"] + 0.2)
    # a run whose own cost already exceeds what remains: refused before any worker starts
    starts = [e for e in ws.audit.events() if e.action == "shared.start"]
    with pytest.raises(PrivacyBudgetExceeded, match="shared model") as refused:
        SharedTrainer(ws).train(epsilon=summary["epsilon_spent"] + 0.5)
    assert refused.value.details["remaining"] == pytest.approx(0.2)
    assert [e for e in ws.audit.events() if e.action == "shared.start"] == starts
    assert [v.version for v in SharedStore(ws).versions()] == [version.version]
    assert ledger.summary(SHARED)["events"] == summary["events"]
    assert any(e.action == "privacy.refused" and e.object == SHARED for e in ws.audit.events())
    # no member computed a gradient for the refused run
    contributed = [e for e in ws.audit.events() if e.action == "shared.contribute"]
    assert len(contributed) == 2


def test_members_train_on_the_pinned_trunk_and_outsiders_receive_nothing(
    shared: tuple[Workspace, SharedVersion],
) -> None:
    ws, version = shared
    trainer = Trainer(ws)
    member = trainer.train("news", seed=1)
    outsider = trainer.train("outsider", seed=1)
    assert member.lineage["trunk"] == {"version": version.version, "sha256": version.trunk_sha256}
    assert outsider.lineage["trunk"] is None
    reads: list[Any] = [e for e in ws.audit.events() if e.action == "shared.read"]
    assert {e.tenant for e in reads} == {"news"}
    assert member.status in ("active", "rejected") and member.metrics["accuracy"] > 0
