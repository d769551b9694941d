"""The coordinator's side of a worker's data (I1, I5, I11): what a worker may ask for over
its socket, served from a scope of its job's purpose, and what is refused and audited.

These call ``DataService`` directly, as the runner does for each ``scope.*`` request; the
same requests from inside real workers are in test_rounds (the probe) and every round."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from helpers import record
from silolearn import Workspace
from silolearn.errors import AccessDenied, InvalidInput, NotFoundError
from silolearn.pipeline import Trainer
from silolearn.records import Record
from silolearn.worker.service import DataService

TENANT, OTHER = "acme", "other"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.init(tmp_path_factory.mktemp("service") / "ws", actor="test")
    for name in (TENANT, OTHER):
        workspace.create_tenant(name)
        rows = [record(f"{name}-{i}", f"training text {i} of {name}", label="l") for i in range(6)]
        workspace.scope(name).train.append([Record.model_validate(r) for r in rows])
        evals = [record(f"{name}-e{i}", f"eval text {i} of {name}") for i in range(3)]
        workspace.scope(name).eval.append([Record.model_validate(r) for r in evals])
        workspace.scope(name).blobs.put("notes", f"{name}'s notes".encode())
    yield workspace
    workspace.close()


def service(ws: Workspace, action: str, tenant: str = TENANT) -> DataService:
    params = {"seed": 1, "version_hint": 1} if action == "train" else {}
    return DataService(Trainer(ws)._job(tenant, action, params))


def rows(answer: dict[str, object]) -> list[list[object]]:
    data = answer["rows"]
    assert isinstance(data, bytes)
    decoded: list[list[object]] = json.loads(data)
    return decoded


def test_I11_a_training_job_is_served_its_own_training_records_and_blobs(ws: Workspace) -> None:
    served = service(ws, "train")
    try:
        answer = served.answer("scope.records", {"store": "train", "until": None})
        ids = [row[1] for row in rows(answer)]
        assert ids == [f"{TENANT}-{i}" for i in range(6)]
        keys = answer["keys"]
        assert isinstance(keys, bytes) and len(keys) == 6 * 32  # one keyed hash per record
        scope = ws.scope(TENANT)
        first = scope.train.read(limit=1)[0].record
        assert keys[:32] == scope.record_id_hash(first)
        assert served.answer("scope.blob", {"name": "notes"})["data"] == b"acme's notes"
        with pytest.raises(NotFoundError):
            served.answer("scope.blob", {"name": "absent"})
    finally:
        served.close()


def test_I5_a_training_job_is_refused_eval_records_and_eval_blobs(ws: Workspace) -> None:
    before = ws.audit.events()[-1].seq
    for action in ("train", "shared", "probe"):
        served = service(ws, action)
        try:
            for store in ("eval", "golden"):
                with pytest.raises(AccessDenied):
                    served.answer("scope.records", {"store": store})
            with pytest.raises(AccessDenied):
                served.answer("scope.blob", {"name": "eval/embeddings/x"})
        finally:
            served.close()
    denied = [e for e in ws.audit.events(action="access.denied") if e.seq > before]
    assert {e.actor for e in denied} == {
        f"worker:{a}:{TENANT}" for a in ("train", "shared", "probe")
    }


def test_I5_evaluation_and_gate_jobs_are_served_eval_records(ws: Workspace) -> None:
    for action in ("evaluate", "gates"):
        served = service(ws, action)
        try:
            answer = served.answer("scope.records", {"store": "eval"})
            assert [row[1] for row in rows(answer)] == [f"{TENANT}-e{i}" for i in range(3)]
        finally:
            served.close()
    evaluate = service(ws, "evaluate")
    try:  # the evaluation scope reads no training record
        with pytest.raises(AccessDenied):
            evaluate.answer("scope.records", {"store": "train"})
    finally:
        evaluate.close()


def test_I1_a_request_naming_another_tenant_is_refused_and_audited(ws: Workspace) -> None:
    other_id = ws.tenants.get(OTHER).id
    before = ws.audit.events()[-1].seq
    served = service(ws, "train")
    try:
        for name, details in (
            ("scope.records", {"store": "train", "tenant": other_id}),
            ("scope.blob", {"name": "notes", "tenant": other_id}),
        ):
            with pytest.raises(AccessDenied, match="its own tenant only"):
                served.answer(name, details)
        # its own id is fine: the channel serves exactly one tenant
        own = {"store": "train", "tenant": ws.tenants.get(TENANT).id}
        assert len(rows(served.answer("scope.records", own))) == 6
    finally:
        served.close()
    denied = [e for e in ws.audit.events(action="access.denied") if e.seq > before]
    assert [(e.actor, e.tenant) for e in denied] == [(f"worker:train:{TENANT}", TENANT)] * 2


def test_I11_what_a_worker_may_not_ask_for_is_refused_with_a_typed_error(ws: Workspace) -> None:
    served = service(ws, "shared")
    try:
        with pytest.raises(InvalidInput, match="not a data request"):
            served.answer("scope.sql", {"query": "SELECT * FROM tenants"})
        with pytest.raises(InvalidInput, match="no record store"):
            served.answer("scope.records", {"store": "keys"})
        with pytest.raises(InvalidInput):
            served.answer("scope.records", {"store": "train", "limit": -1})
        # keyed hashes only in the shared-label domain: never record ids or PII tokens
        labels = served.answer("scope.keyed_hash", {"domain": "shared-label", "values": ["l"]})
        assert labels["hashes"] == [ws.scope(TENANT).keyed_hash("shared-label", "l").hex()]
        for domain in ("rid", "pii-tokens", "record"):
            with pytest.raises(AccessDenied):
                served.answer("scope.keyed_hash", {"domain": domain, "values": ["acme-0"]})
        # audit events of the kinds a worker records, under its own actor, for its tenant
        seq = served.answer(
            "scope.audit", {"action": "shared.contribute", "obj": "shared", "details": {"n": 1}}
        )["seq"]
        event = next(e for e in ws.audit.events() if e.seq == seq)
        assert (event.actor, event.tenant, event.action) == (
            f"worker:shared:{TENANT}",
            TENANT,
            "shared.contribute",
        )
        for action in ("model.promote", "tenant.shred"):
            with pytest.raises(AccessDenied):
                served.answer("scope.audit", {"action": action, "obj": None, "details": {}})
        with pytest.raises(InvalidInput):
            served.answer("scope.put_blob", {"name": "x", "data": "text, not bytes"})
        with pytest.raises(InvalidInput):
            served.answer("scope.put_blob", {"name": "\x00bad", "data": b"x"})
    finally:
        served.close()
