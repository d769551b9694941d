"""I1 and I5: one tenant per scope, purposes fix capabilities, the eval store is append-only."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sqlite3

import pytest

import silolearn
from helpers import record
from silolearn import Workspace
from silolearn.errors import AccessDenied, ConflictError, DecryptionError, IntegrityError
from silolearn.records import Record
from silolearn.security.envelope import DataKey
from silolearn.storage.scope import Purpose, TenantScope


def _records(n: int, prefix: str = "r") -> list[Record]:
    return [Record.model_validate(record(f"{prefix}{i}", f"text {prefix} {i}")) for i in range(n)]


def _functions() -> list[tuple[str, object]]:
    found = []
    for module_info in pkgutil.walk_packages(silolearn.__path__, "silolearn."):
        module = importlib.import_module(module_info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                found.append((f"{module.__name__}.{name}", obj))
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member):
                        found.append((f"{module.__name__}.{name}.{attr}", member))
    return found


def test_I1_no_function_receives_two_tenant_scopes() -> None:
    functions = _functions()
    assert len(functions) > 100
    offenders = []
    for qualname, func in functions:
        # annotations are strings (postponed evaluation): match the class name in them
        scoped = [
            p.name
            for p in inspect.signature(func).parameters.values()  # type: ignore[arg-type]
            if "TenantScope" in str(p.annotation) or p.annotation is TenantScope
        ]
        if len(scoped) > 1:
            offenders.append(qualname)
    assert offenders == []


def test_I1_scope_reads_only_its_own_tenant(ws: Workspace) -> None:
    ws.create_tenant("acme")
    ws.create_tenant("beta")
    ws.scope("acme").train.append(_records(3, "a"))
    ws.scope("beta").train.append(_records(5, "b"))
    acme = ws.scope("acme", purpose=Purpose.TRAINING).train.read()
    assert [s.record.id for s in acme] == ["a0", "a1", "a2"]
    assert ws.scope("beta").train.count() == 5


def test_I1_a_scope_refuses_another_tenants_key(ws: Workspace) -> None:
    ws.create_tenant("acme")
    ws.create_tenant("beta")
    beta_key = ws.tenants.data_key(ws.tenants.get("beta"))
    acme = ws.scope("acme")
    with pytest.raises(IntegrityError, match="own tenant's data key"):
        TenantScope(
            conn=ws.conn,
            audit=ws.audit,
            tenant=acme.tenant,
            data_key=beta_key,
            token_key=b"k" * 32,
            blob_dir=ws.path,
            purpose=Purpose.TRAINING,
        )


def test_I5_training_scope_cannot_read_or_write_eval_and_the_attempt_is_audited(
    ws: Workspace,
) -> None:
    ws.create_tenant("acme")
    ws.scope("acme").eval.append(_records(2))
    training = ws.scope("acme", purpose=Purpose.TRAINING)
    with pytest.raises(AccessDenied, match="eval read"):
        training.eval.read()
    with pytest.raises(AccessDenied, match="eval append"):
        training.eval.append(_records(1, "x"))
    with pytest.raises(AccessDenied, match="train append"):
        training.train.append(_records(1, "x"))
    denied = ws.audit.events(tenant="acme", action="access.denied")
    assert [e.details["capability"] for e in denied] == ["eval:read", "eval:append", "train:append"]
    assert all(e.details["purpose"] == "training" for e in denied)
    # only an evaluation scope reads eval records, and it cannot touch training data
    evaluation = ws.scope("acme", purpose=Purpose.EVALUATION)
    assert len(evaluation.eval.read()) == 2
    with pytest.raises(AccessDenied):
        evaluation.train.read()


def test_I5_a_training_scope_holds_no_evaluation_key(ws: Workspace) -> None:
    """Not a capability flag: the key itself is absent, and cannot be handed to it."""
    ws.create_tenant("acme")
    ws.scope("acme").eval.append(_records(2))
    info = ws.tenants.get("acme")
    train_key, eval_key = ws.tenants.data_key(info), ws.tenants.eval_key(info)
    holders = {p for p in Purpose if p.holds_eval_key}
    assert holders == {
        Purpose.INGEST,
        Purpose.EVALUATION,
        Purpose.AUDIT,
        Purpose.CONTAMINATION,
    }
    for purpose in Purpose:
        scope = ws.scope("acme", purpose=purpose)
        held = [v.material for v in vars(scope).values() if isinstance(v, DataKey)]
        assert (eval_key.material in held) == (purpose in holders), purpose
        assert train_key.material in held
    for purpose in set(Purpose) - holders:
        with pytest.raises(IntegrityError, match="never holds the evaluation key"):
            TenantScope(
                conn=ws.conn,
                audit=ws.audit,
                tenant=ws.scope("acme").tenant,
                data_key=train_key,
                eval_key=eval_key,
                token_key=b"k" * 32,
                blob_dir=ws.path,
                purpose=purpose,
            )
    # an evaluation scope built without the key reads nothing of eval, and says why
    keyless = TenantScope(
        conn=ws.conn,
        audit=ws.audit,
        tenant=ws.scope("acme").tenant,
        data_key=train_key,
        token_key=ws.keys.token_key(info.id),
        blob_dir=ws.tenants.blob_dir(info.id),
        purpose=Purpose.EVALUATION,
    )
    with pytest.raises(AccessDenied, match="holds no evaluation key"):
        keyless.eval.read()
    with pytest.raises(AccessDenied, match="holds no evaluation key"):
        keyless.blobs.put("eval/embeddings/x", b"cache")
    denied = ws.audit.events(tenant="acme", action="access.denied")
    assert [e.object for e in denied] == ["evaluation key", "evaluation key"]
    # and an eval record's ciphertext does not open under the training key
    rid, box = ws.conn.execute("SELECT rid, box FROM eval_records LIMIT 1").fetchone()
    with pytest.raises(DecryptionError):
        train_key.open(box, kind="eval", object_id=bytes(rid).hex())
    assert eval_key.open(box, kind="eval", object_id=bytes(rid).hex())


def test_I5_eval_tables_refuse_update_and_delete(ws: Workspace) -> None:
    ws.create_tenant("acme")
    ws.scope("acme").eval.append(_records(2))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("UPDATE eval_records SET box = x'00'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("UPDATE eval_records SET ts = '1970-01-01'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("DELETE FROM eval_records")
    assert ws.scope("acme").eval.count() == 2


def test_I6_ciphertext_moved_to_another_object_or_tenant_fails_to_open(ws: Workspace) -> None:
    ws.create_tenant("acme")
    ws.create_tenant("beta")
    ws.scope("acme").train.append(_records(2))
    ws.scope("beta").train.append(_records(1))
    acme_id, beta_id = ws.tenants.get("acme").id, ws.tenants.get("beta").id
    (rid1, box1), (_, box2) = ws.conn.execute(
        "SELECT rid, box FROM train_records WHERE tenant_id = ? ORDER BY seq", (acme_id,)
    ).fetchall()
    # swap two records' ciphertexts inside one tenant: both reads fail
    ws.conn.execute("UPDATE train_records SET box = ? WHERE rid = ?", (box2, rid1))
    with pytest.raises(DecryptionError, match="does not open"):
        ws.scope("acme", purpose=Purpose.TRAINING).train.read()
    ws.conn.execute("UPDATE train_records SET box = ? WHERE rid = ?", (box1, rid1))
    # copy acme's ciphertext into beta's row: beta cannot open it
    ws.conn.execute("UPDATE train_records SET box = ? WHERE tenant_id = ?", (box1, beta_id))
    with pytest.raises(DecryptionError):
        ws.scope("beta", purpose=Purpose.TRAINING).train.read()
    # a blob file moved between tenants fails the same way
    ws.conn.execute("UPDATE train_records SET box = ? WHERE tenant_id = ?", (box2, beta_id))
    ws.scope("acme").blobs.put("adapter", b"acme weights")
    ws.scope("beta").blobs.put("adapter", b"beta weights")
    acme_dir = ws.tenants.blob_dir(acme_id)
    beta_dir = ws.tenants.blob_dir(beta_id)
    acme_file = next(acme_dir.iterdir())
    beta_file = next(beta_dir.iterdir())
    beta_file.write_bytes(acme_file.read_bytes())
    with pytest.raises(DecryptionError):
        ws.scope("beta").blobs.get("adapter")
    assert ws.scope("acme").blobs.get("adapter") == b"acme weights"


def test_blob_store_round_trip_replace_and_integrity(ws: Workspace) -> None:
    ws.create_tenant("acme")
    blobs = ws.scope("acme").blobs
    first = blobs.put("adapter", b"v1")
    second = blobs.put("adapter", b"v2 weights")
    assert first.object_id != second.object_id
    assert blobs.get("adapter") == b"v2 weights"
    assert [b.name for b in blobs.list()] == ["adapter"]
    assert len(list(blobs.iter_files())) == 1
    with pytest.raises(silolearn.errors.NotFoundError):
        blobs.get("missing")


def test_I5_training_scope_cannot_probe_eval_metadata_or_decrypt(ws: Workspace) -> None:
    ws.create_tenant("acme")
    ws.scope("acme").eval.append(_records(2))
    training = ws.scope("acme", purpose=Purpose.TRAINING)
    assert not hasattr(training, "open_box")
    with pytest.raises(AccessDenied):
        training.eval.count()
    with pytest.raises(AccessDenied):
        training.eval.existing([b"x" * 32])
    with pytest.raises(AccessDenied):
        training.eval.fingerprints_present([b"x" * 32])


def test_I6_a_scope_opened_before_a_data_key_rotation_cannot_write_under_the_old_key(
    ws: Workspace,
) -> None:
    ws.create_tenant("acme")
    stale = ws.scope("acme")
    stale.train.append(_records(2))
    ws.tenants.rotate_data_key("acme")
    with pytest.raises(ConflictError, match="open a new scope"):
        stale.train.append(_records(1, "late"))
    fresh = ws.scope("acme", purpose=Purpose.TRAINING)
    assert [s.record.id for s in fresh.train.read()] == ["r0", "r1"]
