"""I5 and I11 by cryptography: a worker that trains is never sent its tenant's evaluation
key, so the eval records it can reach in the database open under nothing it holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import pytest

from helpers import record
from silolearn import Workspace
from silolearn.errors import DecryptionError
from silolearn.learning.worker import ACTIONS, EVAL_KEY_ACTIONS, open_with_held_keys
from silolearn.pipeline import Trainer
from silolearn.records import Record

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


def test_I11_only_evaluation_and_gate_jobs_carry_the_evaluation_key(ws: Workspace) -> None:
    info = ws.tenants.get(TENANT)
    train_key, eval_key = ws.tenants.data_key(info), ws.tenants.eval_key(info)
    assert set(EVAL_KEY_ACTIONS) == {"evaluate", "gates"}
    for action in ACTIONS:
        job = Trainer(ws)._job(TENANT, action, {})
        assert job.data_key == train_key.material
        held = [getattr(job, f.name) for f in fields(job)]
        if action in EVAL_KEY_ACTIONS:
            assert job.eval_key == eval_key.material
        else:
            assert job.eval_key is None
            assert eval_key.material not in held, action


def test_I5_the_keys_a_training_job_holds_do_not_open_an_eval_record(ws: Workspace) -> None:
    """The cryptographic half of the worker's attack, on a ciphertext handed to it: whatever
    the OS lets a worker read, the keys of a training job open none of its eval records."""
    object_id, box = _first(ws, "eval_records")
    for action in ("train", "shared", "probe"):
        job = Trainer(ws)._job(TENANT, action, {})
        with pytest.raises(DecryptionError, match=r"holds \(data_key, token_key\)"):
            open_with_held_keys(job, box, kind="eval", object_id=object_id)
        # the same keys do open the tenant's training records: the attack is a real one
        train_id, train_box = _first(ws, "train_records")
        opened = open_with_held_keys(job, train_box, kind="train", object_id=train_id)
        assert json.loads(opened)["id"] == f"{TENANT}-0"
    # and it would catch a job that carried the evaluation key
    gates = Trainer(ws)._job(TENANT, "gates", {})
    opened = open_with_held_keys(gates, box, kind="eval", object_id=object_id)
    assert json.loads(opened)["id"] == f"{TENANT}-e0"


def test_I5_a_training_worker_cannot_decrypt_its_own_eval_records(ws: Workspace) -> None:
    """From inside a real training worker: a plain sqlite3 connection reads an eval record
    of its own tenant, and no key the worker holds opens it (or the OS refuses the
    database); the attempt is audited by the worker."""
    before = ws.audit.events()[-1].seq
    probe = Trainer(ws).probe(TENANT)
    attempts: dict[str, Any] = {a["attempt"]: a for a in probe["attempts"]}
    attempt = attempts[ATTEMPT]
    assert attempt["blocked"], attempt
    refused_by = attempt["how"].split(":")[0]
    assert refused_by in ("cryptography", "operating system"), attempt
    if refused_by == "cryptography":
        assert "none of the keys the worker holds (data_key, token_key)" in attempt["how"]
    denied = [
        e for e in ws.audit.events(action="access.denied") if e.seq > before and e.object == ATTEMPT
    ]
    assert [(e.actor, e.details["refused_by"]) for e in denied] == [
        (f"worker:probe:{TENANT}", refused_by)
    ]
