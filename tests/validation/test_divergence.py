"""Cross-tenant divergence incidents end to end (docs/gates.md, "Cross-tenant divergence"),
with real workspaces, real rounds in real workers and a real shared-layer update:

- SEV1: an isolated tenant whose active predictions on its probe set moved after another
  tenant's round (I4 broken in production) is quarantined for training, audited, and keeps
  serving;
- SEV2: a shared-layer member that the latest shared trunk would move by more than its
  ``shared_kl_bound`` stays pinned to the trunk it serves, is audited, and is not
  quarantined;
- a probe set made smaller by policy is compared on the records both runs saw, so it never
  looks like a move.

Nothing in the product moves an isolated tenant's predictions (that is what I4 proves), so
the SEV1 test makes them move the way a fault outside the tenant would: one cached probe
embedding of the tenant is replaced, through its own evaluation scope, by the embedding of
another of its probe texts. The tenant's real active version then really predicts something
else on that probe, and the check of another tenant's real round has to see it.

The prepared workspace (three tenants, a shared version, two served versions) is built
once; each test works on a copy of its own.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_cli
from silolearn import Workspace
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.errors import TenantQuarantined
from silolearn.learning.encoder import EmbeddingCache, base_model_record
from silolearn.learning.shared import SharedStore
from silolearn.monitoring.incidents import Incidents
from silolearn.pipeline import Trainer
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.shared import SharedTrainer
from silolearn.storage.scope import Purpose
from silolearn.validation.divergence import history

MEMBERS = ("news", "critics")
ISOLATED = "quiet"


@pytest.fixture(scope="module", autouse=True)
def _judgeable_eval_windows() -> Iterator[None]:
    """30% of the distinct texts to eval and a judgement on 3 records or more (as in
    tests/learning): first versions that beat the constant answer are promoted, and the
    isolated tenant's probe set (its first 64 eval records) is full."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_TRAINING__MIN_EVAL_RECORDS", "3")
        patch.setenv("SILOLEARN_INGEST__EVAL_FRACTION", "0.3")
        yield


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A closed workspace: ``news`` and ``critics`` on the shared layer (shared v1),
    ``news`` serving a head on trunk v1, the isolated ``quiet`` serving a head of its own;
    both served versions have their probe snapshots."""
    path = tmp_path_factory.mktemp("divergence") / "ws"
    # the two served tenants learn five BBC topics, which their first versions tell apart far
    # beyond the constant answer whatever the workspace's routing secret (measured: 0.93-0.98
    # accuracy against 0.24-0.30 on 63-80 eval records, 95% lower bounds +0.55 or more)
    articles = sample(bbc_news(), 480, seed=5)
    with Workspace.init(path, actor="test") as ws:
        for name, rows in (
            ("news", articles[240:]),
            ("critics", sample(rotten_tomatoes(), 200, seed=41)),
            (ISOLATED, articles[:240]),
        ):
            ws.create_tenant(name)
            ws.tenant(name).ingest(rows)
        store = SharedStore(ws)
        for name in MEMBERS:
            store.join(name)
        shared = SharedTrainer(ws).train(epsilon=1.0, seed=3)
        trainer = Trainer(ws)
        served = {}
        for name in (ISOLATED, "news"):
            result = trainer.train(name, seed=1, divergence=False)
            for gate in result.decision["gates"]:
                print(f"{name} v{result.version} {gate['gate']}: {gate['reason']}")
            assert result.status == "active", result.decision["reason"]
            served[name] = result.version
        assert served["news"] and _active(ws, "news").lineage["trunk"]["version"] == shared.version
        assert _active(ws, ISOLATED).lineage["trunk"] is None
        assert len(ws.scope(ISOLATED, purpose=Purpose.EVALUATION).eval.first(64)) == 64
    return {"path": path, "shared": shared.version, **served}


def _copy(prepared: dict[str, Any], root: Path) -> Path:
    return Path(shutil.copytree(prepared["path"], root / "ws"))


def _active(ws: Workspace, tenant: str) -> AdapterVersion:
    active = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).active()
    assert active is not None
    return active


def _policy(path: Path, tenant: str, **values: float) -> None:
    """A per-tenant gate policy in the workspace's silolearn.toml."""
    lines = [f"\n[gates.tenants.{tenant}]"] + [f"{k} = {v!r}" for k, v in values.items()]
    config = path / "silolearn.toml"
    config.write_text(config.read_text() + "\n".join(lines) + "\n")


def _tenant_actions(ws: Workspace, tenant: str, since: int) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e.action, e.details) for e in ws.audit.events() if e.tenant == tenant and e.seq > since
    ]


def _move_one_probe(ws: Workspace, tenant: str) -> None:
    """Replace the cached embedding of the tenant's first probe by that of another of its
    probes on which its active version predicts another label."""
    active = _active(ws, tenant)
    scope = ws.scope(tenant, purpose=Purpose.EVALUATION)
    snapshot = np.load(io.BytesIO(scope.blobs.get(f"eval/probes/v{active.version}")))
    other = next(j for j in range(1, len(snapshot)) if snapshot[j].argmax() != snapshot[0].argmax())
    cache = EmbeddingCache(
        scope,
        base_model_record(ws).sha256,
        namespace="eval/embeddings",
        max_tokens=int(active.lineage["config"]["max_tokens"]),
    )
    keys = [scope.record_id_hash(s.record) for s in scope.eval.first(len(snapshot))]
    cached = cache.get_many(keys)
    assert set(cached) == set(keys)  # the snapshot cached every probe it embedded
    cache.put_many([keys[0]], cached[keys[other]][None, :])
    cache.save()


def test_an_isolated_tenant_whose_predictions_moved_is_a_sev1_and_is_quarantined(
    prepared: dict[str, Any], tmp_path: Path
) -> None:
    path = _copy(prepared, tmp_path)
    with Workspace.open(path, actor="test") as ws:
        version = _active(ws, ISOLATED).version
        _move_one_probe(ws, ISOLATED)
        mark = ws.audit.events()[-1].seq
        result = Trainer(ws).train("critics", seed=2)
        print("critics round:", result.status, result.divergence)

        rows = {d["tenant"]: d for d in result.divergence}
        assert not rows[ISOLATED]["identical"] and not rows[ISOLATED]["shared"]
        assert 0.0 < rows[ISOLATED]["kl"] < float("inf")
        # the member beside it did not move: no incident for it
        assert rows["news"]["identical"] and rows["news"]["kl"] == 0.0
        assert not Incidents(ws).list(tenant="news")

        incidents = Incidents(ws).list(tenant=ISOLATED)
        assert [(i["severity"], i["kind"], i["version"]) for i in incidents] == [
            ("SEV1", "divergence", version)
        ]
        assert incidents[0]["actions"] == ["alert", "quarantined training"]
        assert "must be bit-identical" in incidents[0]["summary"]
        assert incidents[0]["evidence"]["event"].startswith("round critics v")
        assert ws.tenants.get(ISOLATED).status == "quarantined"

        actions = _tenant_actions(ws, ISOLATED, mark)
        names = [a for a, _ in actions]
        for action in ("divergence.check", "incident.open", "tenant.quarantine"):
            assert action in names, names
        assert names.index("divergence.check") < names.index("incident.open")
        assert names.index("incident.open") < names.index("tenant.quarantine")
        [check] = [d for a, d in actions if a == "divergence.check"]
        assert check["identical"] is False and check["source"] == "critics"
        [opened] = [d for a, d in actions if a == "incident.open"]
        assert opened["severity"] == "SEV1" and opened["kind"] == "divergence"
        recorded = history(ws, ISOLATED)[-1]
        assert recorded["event"] == check["event"] and not recorded["identical"]

        # training stops until a human releases the tenant; serving continues
        with pytest.raises(TenantQuarantined):
            Trainer(ws).train(ISOLATED)
        assert ws.tenant(ISOLATED).predict(["shares fell after the bank's results"])
        assert ws.tenants.get("critics").status == "active"


def test_a_shared_update_that_moves_a_member_past_its_bound_is_a_sev2_and_pins_it(
    prepared: dict[str, Any], tmp_path: Path
) -> None:
    """With a bound of 0 for ``news``, any measurable move of its predictions by the new
    trunk is past it; the isolated tenant is checked in the same pass and stays identical."""
    path = _copy(prepared, tmp_path)
    _policy(path, "news", shared_kl_bound=0.0)
    v1 = int(prepared["shared"])
    with Workspace.open(path, actor="test") as ws:
        version = _active(ws, "news").version
        mark = ws.audit.events()[-1].seq
        newer = SharedTrainer(ws).train(epsilon=1.0, seed=4)
        assert newer.version == v1 + 1
        rows = {r["tenant"]: r for r in history(ws) if r["event"] == f"shared v{newer.version}"}
        print({name: (r["identical"], r["kl"]) for name, r in rows.items()})
        assert rows["news"]["shared"] and rows["news"]["shared_version"] == newer.version
        assert not rows["news"]["identical"] and 0.0 < rows["news"]["kl"] < float("inf")
        assert rows[ISOLATED]["identical"] and rows[ISOLATED]["kl"] == 0.0

        incidents = Incidents(ws).list(tenant="news")
        assert [(i["severity"], i["kind"], i["version"]) for i in incidents] == [
            ("SEV2", "shared_divergence", version)
        ]
        assert incidents[0]["actions"] == [f"pinned to shared v{v1}"]
        assert f"shared v{newer.version} would move news" in incidents[0]["summary"]
        assert not Incidents(ws).list(tenant=ISOLATED)

        # pinned to the trunk it serves: its next round trains on v1, not on the new one
        store = SharedStore(ws)
        member = store.member("news")
        assert member is not None and member["pinned_version"] == v1
        pinned = store.pinned("news")
        assert pinned is not None and pinned.version == v1
        # a SEV2 rejects; it does not quarantine: the member may train again
        assert ws.tenants.get("news").status == "active"

        actions = _tenant_actions(ws, "news", mark)
        names = [a for a, _ in actions]
        assert "tenant.quarantine" not in names
        previews = [d for a, d in actions if a == "shared.read"]
        assert {"purpose": "divergence preview"}.items() <= previews[-1].items()
        assert [d for a, d in actions if a == "shared.pin"] == [{"version": v1}]
        [opened] = [d for a, d in actions if a == "incident.open"]
        assert (opened["severity"], opened["kind"]) == ("SEV2", "shared_divergence")
        [check] = [d for a, d in actions if a == "divergence.check"]
        assert check["identical"] is False and check["event"] == f"shared v{newer.version}"
        assert names.index("divergence.check") < names.index("shared.pin")
        assert names.index("shared.pin") < names.index("incident.open")


def test_a_probe_set_made_smaller_by_policy_is_compared_on_the_records_both_runs_saw(
    prepared: dict[str, Any], tmp_path: Path
) -> None:
    """The snapshot holds 64 probes; with ``divergence_probes = 16`` the check runs on the
    first 16, which the snapshot's first 16 rows are: no move, no incident."""
    path = _copy(prepared, tmp_path)
    _policy(path, ISOLATED, divergence_probes=16)
    checked = run_cli(
        "gates", "divergence", ISOLATED, "--check", "--json", "--workspace", str(path)
    )
    assert checked.returncode == 0, checked.stderr
    last = json.loads(checked.stdout)[-1]
    assert (last["event"], last["probes"], last["identical"], last["kl"]) == (
        "manual check",
        16,
        True,
        0.0,
    )
    with Workspace.open(path, actor="test") as ws:
        assert not Incidents(ws).list(tenant=ISOLATED)
        assert ws.tenants.get(ISOLATED).status == "active"
