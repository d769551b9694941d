"""I5 and I11 by cryptography: no worker is sent a key of its tenant (the coordinator
decrypts what it serves), so no record it could reach in the database opens under anything
it holds, and the coordinator holds the evaluation key only for evaluation and gate jobs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import record
from silolearn import Workspace
from silolearn.errors import DecryptionError
from silolearn.pipeline import Trainer
from silolearn.records import Record
from silolearn.security.sandbox import landlock_abi
from silolearn.worker.job import ACTIONS, EVAL_KEY_ACTIONS
from silolearn.worker.probe import held_keys, open_with_held_keys
from silolearn.worker.protocol import job_message

TENANT = "acme"
ATTEMPT = "decrypt its own eval record with the keys it holds"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.init(tmp_path_factory.mktemp("keys") / "ws", actor="test")
    for name in (TENANT, "other"):
        workspace.create_tenant(name)
        rows = [record(f"{name}-{i}", f"training text {i} of {name}", label="l") for i in range(8)]
        workspace.scope(name).train.append([Record.model_validate(r) for r in rows])
        evals = [record(f"{name}-e{i}", f"eval text {i} of {name}") for i in range(3)]
        workspace.scope(name).eval.append([Record.model_validate(r) for r in evals])
    yield workspace
    workspace.close()


def _first(ws: Workspace, table: str) -> tuple[str, bytes]:
    rid, box = ws.conn.execute(
        f"SELECT rid, box FROM {table} WHERE tenant_id = ? ORDER BY seq LIMIT 1",
        (ws.tenants.get(TENANT).id,),
    ).fetchone()
    return bytes(rid).hex(), bytes(box)


def test_I11_no_job_sends_its_worker_a_key_and_only_eval_jobs_are_served_with_the_eval_key(
    ws: Workspace,
) -> None:
    """What crosses the socket holds no key and no path to the database: the keys stay in
    the coordinator's ``Access``, which holds the evaluation key only for the actions
    whose data requests read eval records."""
    info = ws.tenants.get(TENANT)
    train_key, eval_key = ws.tenants.data_key(info), ws.tenants.eval_key(info)
    token_key = ws.keys.token_key(info.id)
    assert set(EVAL_KEY_ACTIONS) == {"evaluate", "gates"}
    for action in ACTIONS:
        params = {"seed": 1, "version_hint": 1} if action == "train" else {}
        job = Trainer(ws)._job(TENANT, action, params)
        wire = job_message(job).job
        assert "access" not in wire
        sent = json.dumps(wire, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))
        for secret in (train_key.material, eval_key.material, token_key):
            assert secret.hex() not in sent, action
        assert "silolearn.db" not in sent and "keyring" not in sent, action
        assert held_keys(job) == (
            {"params.canary_seed": job.params["canary_seed"]} if action == "train" else {}
        )
        assert job.access is not None and job.access.data_key == train_key.material
        if action in EVAL_KEY_ACTIONS:
            assert job.access.eval_key == eval_key.material
        else:
            assert job.access.eval_key is None


def test_I5_the_keys_a_worker_holds_do_not_open_any_record_of_its_tenant(ws: Workspace) -> None:
    """The cryptographic half of the worker's attack, on ciphertexts handed to it: whatever
    the operating system lets a worker read, nothing it holds opens its tenant's eval
    records, nor its training records."""
    object_id, box = _first(ws, "eval_records")
    train_id, train_box = _first(ws, "train_records")
    for action in ACTIONS:
        params = {"seed": 1, "version_hint": 1} if action == "train" else {}
        job = Trainer(ws)._job(TENANT, action, params)
        with pytest.raises(DecryptionError, match="no key the worker holds opens its eval"):
            open_with_held_keys(job, box, kind="eval", object_id=object_id)
        with pytest.raises(DecryptionError, match="no key the worker holds opens its train"):
            open_with_held_keys(job, train_box, kind="train", object_id=train_id)
    # and it would catch a job that carried the coordinator's keys: the attack is a real one
    gates = Trainer(ws)._job(TENANT, "gates", {})
    assert gates.access is not None and gates.access.eval_key is not None
    leaky = dataclasses.replace(gates, params={"leaked": gates.access.eval_key})
    opened = open_with_held_keys(leaky, box, kind="eval", object_id=object_id)
    assert json.loads(opened)["id"] == f"{TENANT}-e0"


def test_I5_a_training_worker_cannot_decrypt_its_own_eval_records(ws: Workspace) -> None:
    """From inside a real training worker: the operating system refuses the database file
    (where Landlock is), no key the worker holds opens one of its eval records handed to
    it, and the coordinator serves it no eval record; each attempt is audited under the
    worker's actor."""
    before = ws.audit.events()[-1].seq
    probe = Trainer(ws).probe(TENANT)
    attempts: dict[str, Any] = {a["attempt"]: a for a in probe["attempts"]}
    assert attempts[ATTEMPT]["blocked"], attempts[ATTEMPT]
    assert attempts[ATTEMPT]["how"].startswith("cryptography: no key the worker holds")
    assert attempts["read its own eval store"]["how"].startswith("capability:")
    if landlock_abi() > 0:
        assert attempts["open the database file"]["how"] == "operating system: Permission denied"
    denied = [
        e for e in ws.audit.events(action="access.denied") if e.seq > before and e.object == ATTEMPT
    ]
    assert [(e.actor, e.details["refused_by"]) for e in denied] == [
        (f"worker:probe:{TENANT}", "cryptography")
    ]
