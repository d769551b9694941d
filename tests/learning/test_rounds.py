"""The learning plane end to end on real data: I2, I3, I4, I8, the temporal cutoff, replay,
and predictions. Every run here is a real spawned worker on the real frozen encoder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from silolearn import Workspace
from silolearn.datasets import bbc_news, health_tweets, rotten_tomatoes, sample
from silolearn.errors import InvalidInput, NotFoundError, TrainingFailed
from silolearn.learning.encoder import (
    BaseModelTampered,
    default_model_dir,
    record_base_model,
    verify_base_model,
)
from silolearn.pipeline import Trainer, list_runs, train_many
from silolearn.registry.versions import AdapterRegistry
from silolearn.security.sandbox import landlock_abi
from silolearn.storage.scope import Purpose
from silolearn.worker.job import records_digest
from silolearn.worker.runner import RunLimitReached, Worker, run_slot, worker_environment

CRITICS = "critics"


@pytest.fixture(scope="module")
def critics_rows() -> list[dict[str, Any]]:
    return sample(rotten_tomatoes(), 400, seed=11)


@pytest.fixture(scope="module")
def tweets() -> list[dict[str, Any]]:
    return sample(health_tweets(), 1010, seed=5)


def _versions(ws: Workspace, tenant: str) -> list[Any]:
    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).list()


def _events(ws: Workspace, action: str) -> list[Any]:
    return [e for e in ws.audit.events() if e.action == action]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, critics_rows: list[dict[str, Any]]
) -> Iterator[tuple[Workspace, Any]]:
    """A workspace with two tenants; critics trained once, on records up to a cutoff that
    leaves later records out."""
    ws = Workspace.init(tmp_path_factory.mktemp("trained") / "ws", actor="test")
    ws.create_tenant(CRITICS)
    ws.create_tenant("other")
    ws.tenant(CRITICS).ingest(critics_rows[:300])
    ws.tenant("other").ingest(critics_rows[300:])
    ws.scope("other").blobs.put("notes", b"the other tenant's own object")
    cutoff = critics_rows[240]["timestamp"]
    result = Trainer(ws).train(CRITICS, seed=3, cutoff=cutoff)
    yield ws, result
    ws.close()


@pytest.fixture(scope="module")
def first_version(
    tmp_path_factory: pytest.TempPathFactory, critics_rows: list[dict[str, Any]]
) -> Path:
    """A closed workspace whose tenant ``alpha`` serves a first version learned from 150
    reviews: the tests that start from there work on copies of their own."""
    path = tmp_path_factory.mktemp("first") / "ws"
    with Workspace.init(path, actor="test") as ws:
        ws.create_tenant("alpha")
        ws.tenant("alpha").ingest(critics_rows[:150])
        assert ws.tenant("alpha").train().status == "active"
    return path


def _copy(workspace: Path, root: Path) -> Workspace:
    return Workspace.open(Path(shutil.copytree(workspace, root / "ws")), actor="test")


# -- I2 -------------------------------------------------------------------------------------


def test_I2_I11_training_worker_cannot_open_the_workspace_or_read_other_tenants_or_eval(
    trained: tuple[Workspace, Any],
) -> None:
    ws, _ = trained
    before = ws.audit.events()[-1].seq
    probe = Trainer(ws).probe(CRITICS)
    attempts = {a["attempt"]: a for a in probe["attempts"]}
    assert set(attempts) == {
        "read records of other",
        "read blobs of other",
        "read metadata of other",
        "ask the coordinator for records of other",
        "open the database file",
        "open the database file for writing",
        "read the keyring",
        "read the audit head",
        "read its own blob files",
        "decrypt its own eval record with the keys it holds",
        "read its own eval store",
        "read its own eval embeddings",
    }
    assert all(a["blocked"] for a in attempts.values()), attempts
    assert attempts["ask the coordinator for records of other"]["how"].startswith("capability")
    assert attempts["read its own eval store"]["how"].startswith("capability")
    if landlock_abi() > 0:
        assert probe["sandbox"]["abi"] > 0
        # its private temporary directory and the always-writable devices, nothing else
        granted = [p for p in probe["sandbox"]["write"] if not p.startswith("/dev/")]
        assert len(granted) == 1 and "silolearn-worker-" in granted[0], granted
        by_the_os = ("read records", "read blobs", "open the", "read the", "read its own blob")
        for name, attempt in attempts.items():
            if name.startswith(by_the_os):
                assert attempt["how"] == "operating system: Permission denied", attempt
    denied = [
        e
        for e in ws.audit.events()
        if e.seq > before and e.action == "access.denied" and e.actor == "worker:probe:critics"
    ]
    assert {e.object for e in denied} >= set(attempts)


def test_I2_sealed_keyring_protects_keys_without_landlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, critics_rows: list[dict[str, Any]]
) -> None:
    """With the OS sandbox off, the keyring still does not open in a worker: it is sealed
    and the worker's environment carries no passphrase."""
    monkeypatch.setenv("SILOLEARN_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("SILOLEARN_SANDBOX", "0")
    assert "SILOLEARN_PASSPHRASE" not in worker_environment()
    ws = Workspace.init(tmp_path / "ws", sealed=True, actor="test")
    try:
        ws.create_tenant("alpha")
        ws.create_tenant("beta")
        ws.tenant("alpha").ingest(critics_rows[:20])
        ws.tenant("beta").ingest(critics_rows[20:40])
        ws.scope("beta").blobs.put("notes", b"beta's own object")
        ws.scope("alpha").blobs.put("notes", b"alpha's own object")
        probe = Trainer(ws).probe("alpha")
        assert probe["sandbox"]["abi"] == 0
        attempts = {a["attempt"]: a for a in probe["attempts"]}
        # without the sandbox the worker can open the workspace's files, and says so...
        unguarded = {"open the database file", "open the database file for writing"}
        unguarded |= {"read the audit head"}
        assert {n for n, a in attempts.items() if not a["blocked"]} == unguarded, attempts
        # ...but what it finds there opens under nothing it holds
        assert "KeyManagerError" in attempts["read the keyring"]["how"]
        for name in (
            "read records of beta",
            "read blobs of beta",
            "read metadata of beta",
            "read its own blob files",
        ):
            assert attempts[name]["how"].startswith("cryptography: no key"), attempts[name]
    finally:
        ws.close()


def test_I2_one_run_holds_one_tenants_records_and_key(
    trained: tuple[Workspace, Any], critics_rows: list[dict[str, Any]]
) -> None:
    ws, result = trained
    scope = ws.scope(CRITICS, purpose=Purpose.TRAINING)
    pairs = json.loads(scope.blobs.get(f"run/{result.lineage['run_id']}/records"))
    tenant_ids = {tenant_id for tenant_id, _ in pairs}
    assert tenant_ids == {ws.tenants.get(CRITICS).id}
    ids = [record_id for _, record_id in pairs]
    assert records_digest(ws.tenants.get(CRITICS).id, ids) == result.lineage["records_digest"]
    assert len(ids) == result.lineage["records"] > 0
    stored = {s.record.id for s in scope.train.read()}
    other = {s.record.id for s in ws.scope("other", purpose=Purpose.TRAINING).train.read()}
    assert set(ids) <= stored
    assert not set(ids) & (other - stored)
    job = Trainer(ws)._job(CRITICS, "train", {"seed": 3, "version_hint": 1})
    # the coordinator serves the run from this tenant's training key alone
    assert job.access is not None and job.access.tenant_id == ws.tenants.get(CRITICS).id
    assert job.access.data_key == ws.tenants.data_key(ws.tenants.get(CRITICS)).material
    assert job.access.data_key != ws.tenants.data_key(ws.tenants.get("other")).material
    assert job.access.eval_key is None


def test_I2_worker_process_environment_has_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, critics_rows: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SILOLEARN_PASSPHRASE", "do not leak me")
    ws = Workspace.init(tmp_path / "ws", sealed=True, actor="test")
    seen: dict[str, bytes] = {}

    def inspect(tenant: str, pid: int, event: str, details: dict[str, Any]) -> None:
        if event == "started" and "environ" not in seen:
            seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes()
            seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()

    try:
        ws.create_tenant("alpha")
        ws.tenant("alpha").ingest(critics_rows[:120])
        Trainer(ws).train("alpha", progress=inspect)
    finally:
        ws.close()
    assert b"do not leak me" not in seen["environ"]
    assert b"SILOLEARN_PASSPHRASE" not in seen["environ"]
    assert b"silolearn.worker" in seen["cmdline"]


def test_I2_gate_worker_started_ahead_is_confined_like_any_other(
    trained: tuple[Workspace, Any],
) -> None:
    """The round's gate worker loads the base model while the training worker trains; it is
    handed the tenant's job and keys only afterwards, and confines itself before reading
    anything of the tenant with no second thread running that Landlock would not cover."""
    _, result = trained
    process = result.metrics["gate_process"]
    assert process["warm"] is True, process
    assert process["warm_seconds"] > 0 and process["load_seconds"] < process["warm_seconds"]
    if landlock_abi() > 0:
        assert process["threads_at_sandbox"] == 1


def test_a_worker_started_ahead_of_a_job_that_never_comes_is_stopped() -> None:
    worker = Worker(warm=default_model_dir())
    pid = worker.process.pid
    with worker:
        assert worker.process.poll() is None
    assert worker.process.returncode is not None
    assert (
        not Path(f"/proc/{pid}").exists()
        or b"silolearn" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )


# -- I3 -------------------------------------------------------------------------------------


def test_I3_one_changed_byte_in_the_base_stops_training_and_serving(
    tmp_path: Path, first_version: Path
) -> None:
    copy = Path(shutil.copytree(default_model_dir(), tmp_path / "model"))
    ws = _copy(first_version, tmp_path)
    try:
        record_base_model(ws, copy)  # an identical copy: the same digest, recorded again
        verify_base_model(ws, when="train.before")  # intact, it passes
        weights = copy / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        with pytest.raises(BaseModelTampered, match=r"refusing train\.before"):
            ws.tenant("alpha").train()
        with pytest.raises(BaseModelTampered, match=r"refusing serve\.start"):
            ws.tenant("alpha").predict(["a film about nothing"])
        tampered = _events(ws, "base_model.tampered")
        assert {e.details["when"] for e in tampered} == {"train.before", "serve.start"}
        assert [r["status"] for r in list_runs(ws, "alpha")] == ["succeeded"]
    finally:
        ws.close()


# -- I4 -------------------------------------------------------------------------------------


def test_I4_tenant_b_adapter_is_bit_identical_whatever_tenant_a_does(
    tmp_path: Path, critics_rows: list[dict[str, Any]], tweets: list[dict[str, Any]]
) -> None:
    """Three worlds from one snapshot (same keys, same routing of B's records): A has no
    records; A has 1,000 records and trains at the same time as B; A was shredded."""
    base = tmp_path / "base"
    ws = Workspace.init(base, actor="test")
    ws.create_tenant("beta")
    ws.create_tenant("alpha")
    ws.tenant("beta").ingest(critics_rows[:200])
    ws.close()
    worlds = {
        name: Path(shutil.copytree(base, tmp_path / name)) for name in ("empty", "busy", "shred")
    }
    with Workspace.open(worlds["busy"]) as busy:
        assert busy.tenant("alpha").ingest(tweets).accepted >= 1000
    with Workspace.open(worlds["shred"]) as shred:
        shred.tenant("alpha").ingest(tweets)
        shred.tenants.shred("alpha")

    outcomes: dict[str, Any] = {}
    for name in ("empty", "shred"):
        with Workspace.open(worlds[name]) as world:
            outcomes[name] = Trainer(world).train("beta", seed=42)
    both = train_many(lambda: Workspace.open(worlds["busy"]), ["alpha", "beta"], seed=42)
    assert [r.status for r in both] != ["failed", "failed"]
    outcomes["busy"] = both[1]
    assert both[0].lineage["records"] > 500  # A really trained, beside B

    digests = {name: r.sha256 for name, r in outcomes.items()}
    assert len(set(digests.values())) == 1, digests
    assert len({r.lineage["records_digest"] for r in outcomes.values()}) == 1
    predictions = {}
    for name, path in worlds.items():
        with Workspace.open(path) as world:
            predictions[name] = world.tenant("beta").predict(
                [r["text"] for r in critics_rows[300:330]]
            )
    assert predictions["empty"] == predictions["busy"] == predictions["shred"]


# -- I8 -------------------------------------------------------------------------------------


def test_I8_sigkill_mid_run_leaves_registry_consistent_and_next_run_succeeds(
    tmp_path: Path, critics_rows: list[dict[str, Any]], first_version: Path
) -> None:
    ws = _copy(first_version, tmp_path)
    try:
        served = ws.tenant("alpha").predict(["a tender, funny film"])
        ws.tenant("alpha").ingest(critics_rows[150:300])
        killed: list[int] = []

        def kill(tenant: str, pid: int, event: str, details: dict[str, Any]) -> None:
            if event == "data" and not killed:  # records read, training about to start
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)

        with pytest.raises(TrainingFailed, match="killed by signal 9"):
            Trainer(ws).train("alpha", progress=kill)
        assert killed
        versions = _versions(ws, "alpha")
        assert [(v.version, v.status) for v in versions] == [(1, "active")]
        assert ws.tenant("alpha").predict(["a tender, funny film"]) == served
        runs = list_runs(ws, "alpha")
        assert [r["status"] for r in runs] == ["succeeded", "failed"]
        assert _events(ws, "train.failed")
        again = ws.tenant("alpha").train()
        assert again.version == 2 and again.status in ("active", "rejected")
        assert [r["status"] for r in list_runs(ws, "alpha")][-1] == "succeeded"
    finally:
        ws.close()


def test_I8_rollback_of_one_tenant_leaves_the_other_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # topics the encoder separates well: both first versions must be shown better than a
    # constant answer on a few dozen eval records, whichever records the keyed routing
    # sends to eval (sentiment of 150 reviews is not, on about 1 split in 2)
    rows = sample(bbc_news(), 400, seed=3)
    # an article's topic shows in its first 64 tokens: half the workers' embedding cost
    monkeypatch.setenv("SILOLEARN_TRAINING__MAX_TOKENS", "64")
    ws = Workspace.init(tmp_path / "ws", actor="test")
    try:
        for name in ("alpha", "beta"):
            ws.create_tenant(name)
        ws.tenant("alpha").ingest(rows[:150])
        ws.tenant("beta").ingest(rows[200:350])
        assert ws.tenant("alpha").train().status == "active"
        assert ws.tenant("beta").train().status == "active"
        ws.tenant("alpha").ingest(rows[150:200])
        # a second version of A is promoted whatever its score (generous tolerance)
        monkeypatch.setenv("SILOLEARN_TRAINING__PROMOTION_TOLERANCE", "1.0")
        with Workspace.open(ws.path) as lenient:
            assert lenient.tenant("alpha").train().status == "active"
        monkeypatch.delenv("SILOLEARN_TRAINING__PROMOTION_TOLERANCE")
        texts = [r["text"] for r in rows[350:370]]
        b_before = ws.tenant("beta").predict(texts)
        b_versions = [v.to_dict() for v in _versions(ws, "beta")]
        registry = AdapterRegistry(ws.scope("alpha", purpose=Purpose.REGISTRY))
        assert registry.rollback().version == 1
        assert ws.tenant("alpha").predict(texts[:1])[0].version == 1
        assert [v.to_dict() for v in _versions(ws, "beta")] == b_versions
        assert ws.tenant("beta").predict(texts) == b_before
    finally:
        ws.close()


def test_per_tenant_run_limit_refuses_a_second_run(
    trained: tuple[Workspace, Any],
) -> None:
    ws, _ = trained
    info = ws.tenants.get(CRITICS)
    with (
        run_slot(ws.path / "locks" / "train", info.id, CRITICS, 1),
        pytest.raises(RunLimitReached, match="already has 1 training run"),
    ):
        Trainer(ws).train(CRITICS)


# -- the temporal cutoff ----------------------------------------------------------------------


def test_no_record_used_is_stamped_after_the_cutoff(
    trained: tuple[Workspace, Any], critics_rows: list[dict[str, Any]]
) -> None:
    ws, result = trained
    cutoff = result.lineage["cutoff"]
    scope = ws.scope(CRITICS, purpose=Purpose.TRAINING)
    stamps = {s.record.id: s.record.timestamp for s in scope.train.read()}
    assert max(stamps.values()) > cutoff  # later records exist and were left out
    pairs = json.loads(scope.blobs.get(f"run/{result.lineage['run_id']}/records"))
    assert all(stamps[record_id] <= cutoff for _, record_id in pairs)
    assert result.lineage["max_record_timestamp"] <= cutoff
    assert result.metrics["eval_window"]["last"] <= cutoff
    with pytest.raises(InvalidInput, match="never goes back in time"):
        Trainer(ws).train(CRITICS, cutoff="2000-01-01T00:00:00Z")


# -- lineage and predictions -------------------------------------------------------------------


def test_candidate_lineage_and_metrics_are_complete(trained: tuple[Workspace, Any]) -> None:
    ws, result = trained
    version = _versions(ws, CRITICS)[0]
    assert version.status == "active" and result.status == "active"
    lineage = version.lineage
    for key in (
        "parent",
        "records_digest",
        "config",
        "code_version",
        "base_sha256",
        "seed",
        "cutoff",
        "timings",
        "run_id",
    ):
        assert key in lineage, key
    assert lineage["seed"] == 3
    metrics = version.metrics
    assert 0.0 <= metrics["macro_f1"] <= metrics["accuracy"] + 1
    assert set(metrics["per_class"]) <= {"fresh", "rotten", "plot"}
    assert metrics["n"] >= 10
    data = AdapterRegistry(ws.scope(CRITICS, purpose=Purpose.REGISTRY)).load_artefact(version)
    assert hashlib.sha256(data).hexdigest() == version.sha256 == result.sha256


def test_predictions_use_the_active_version_and_are_audited_in_aggregate(
    trained: tuple[Workspace, Any],
) -> None:
    ws, result = trained
    texts = ["a gorgeous, moving film", "dull and far too long", "a heist goes wrong"]
    predictions = ws.tenant(CRITICS).predict(texts)
    assert [p.version for p in predictions] == [result.version] * 3
    for p in predictions:
        assert p.label in p.probabilities
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-4
    event = _events(ws, "predict")[-1]
    assert event.details == {"count": 3} and event.object == f"v{result.version}"
    assert not any("gorgeous" in json.dumps(e.details) for e in ws.audit.events())
    with pytest.raises(InvalidInput):
        ws.tenant(CRITICS).predict([])
    with pytest.raises(NotFoundError, match="no active adapter"):
        ws.tenant("other").predict(texts)


# -- replay -----------------------------------------------------------------------------------


def test_replay_keeps_first_round_knowledge_when_the_label_mix_shifts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 1 has all five BBC topics, round 2 only politics (a desk that moved to covering
    one beat). Accuracy on round 1's eval data after round 2 is higher with replay than
    without."""
    monkeypatch.setenv("SILOLEARN_INGEST__EVAL_FRACTION", "0.3")
    monkeypatch.setenv("SILOLEARN_TRAINING__MAX_TOKENS", "64")
    rows = bbc_news()
    first = sample(rows[:1100], 160, seed=1)
    second = [r for r in rows[1100:] if r["label"] == "politics"][:200]
    base = tmp_path / "base"
    with Workspace.init(base, actor="test") as ws:
        ws.create_tenant("news")
        ws.tenant("news").ingest(first)
        assert ws.tenant("news").train(seed=1).status == "active"
    accuracy = {}
    # a long second round makes forgetting without replay unmistakable: the eval split is
    # keyed by each workspace's own routing secret, and at the default 40 epochs the gap
    # ranged 0.03-0.12 over splits; at 150 it was 0.12-0.18
    monkeypatch.setenv("SILOLEARN_TRAINING__EPOCHS", "150")
    for name, size in (("replay", "2000"), ("no-replay", "0")):
        monkeypatch.setenv("SILOLEARN_TRAINING__REPLAY_SIZE", size)
        with Workspace.open(Path(shutil.copytree(base, tmp_path / name))) as world:
            world.tenant("news").ingest(second)
            result = world.tenant("news").train(seed=1)
            earlier = result.metrics["windows"]["earlier"]
            accuracy[name] = earlier["accuracy"]
            assert earlier["n"] >= 30
            assert (result.lineage["replay_records"] > 0) == (name == "replay")
    print(f"\nround-1 eval accuracy after round 2: {accuracy}")
    # ~50 earlier-window eval records, routed at random per workspace: the gap was 0.04-0.18
    # over CI runs (2-9 records); replay must win, by how much is what the printout shows
    assert accuracy["replay"] > accuracy["no-replay"]


# -- lora end to end ---------------------------------------------------------------------------


def test_lora_round_trains_in_a_worker_and_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, critics_rows: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SILOLEARN_TRAINING__MAX_TOKENS", "32")
    monkeypatch.setenv("SILOLEARN_TRAINING__LORA_BUDGET_EXAMPLES", "48")
    with Workspace.init(tmp_path / "ws", actor="test") as ws:
        ws.create_tenant("alpha")
        ws.tenant("alpha").ingest(critics_rows[:200])
        result = ws.tenant("alpha").train(kind="lora", seed=4)
        assert result.kind == "lora" and result.status == "active", result.decision
        # every record of the run, once: the example budget allows no second epoch
        assert result.lineage["records"] == result.lineage["new_records"] > 48
        assert result.lineage["fit"]["epochs"] == 1 and result.lineage["fit"]["tuning"]
        assert result.lineage["config"]["lora_rank"] == 8
        predictions = ws.tenant("alpha").predict(["a bright, sharp comedy", "a plodding mess"])
        assert [p.version for p in predictions] == [result.version] * 2
        registry = AdapterRegistry(ws.scope("alpha", purpose=Purpose.REGISTRY))
        artefact = registry.load_artefact(registry.active())  # type: ignore[arg-type]
        assert b'"kind":"lora"' in artefact and b"lora.base_model" not in artefact
        assert artefact.count(b"lora_B") == 12  # query and value in six layers
