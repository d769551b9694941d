"""I5 and I6 by purpose: a tenant's eval material is sealed under its evaluation key, the
rest under its training key, and a workspace from before keys had purposes is migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers import record
from legacy_schema import rewind_to_0010
from silolearn import Workspace
from silolearn.db import SCHEMA_HEAD, schema_revision
from silolearn.errors import DecryptionError
from silolearn.records import Record
from silolearn.security.envelope import DataKey
from silolearn.storage.scope import Purpose
from silolearn.workspace import DB_FILE

TENANTS = ("acme", "beta")


def _fill(ws: Workspace, name: str) -> None:
    """Train and eval records through the gateway (so the contamination index has both
    sides), direct eval records, an adapter blob and an eval blob."""
    ws.create_tenant(name)
    # the gateway sends 10% of them to eval, keyed by the workspace's random secret: none of
    # 150 in 0.9**150 = 1.4e-7 of runs (of 60, 1.8e-3 per tenant)
    rows = [
        record(f"{name}-{i}", f"record {i} of tenant {name} says something {i * 7}", label="l")
        for i in range(150)
    ]
    ws.tenant(name).ingest(rows)
    evals = [record(f"{name}-e{i}", f"eval record {i} of tenant {name}") for i in range(3)]
    ws.scope(name).eval.append([Record.model_validate(r) for r in evals])
    ws.scope(name).blobs.put("adapter", b"adapter weights " * 10)
    ws.scope(name, purpose=Purpose.EVALUATION).blobs.put("eval/probes/v1", b"probe " * 10)


def _snapshot(ws: Workspace, name: str) -> tuple[list[str], list[str], bytes, bytes]:
    train = [s.record.text for s in ws.scope(name, purpose=Purpose.TRAINING).train.read()]
    evaluation = ws.scope(name, purpose=Purpose.EVALUATION)
    evals = [s.record.text for s in evaluation.eval.read()]
    golden_and_all = evals + [s.record.text for s in evaluation.eval.golden()]
    return (
        train,
        golden_and_all,
        ws.scope(name).blobs.get("adapter"),
        evaluation.blobs.get("eval/probes/v1"),
    )


def _sealed(ws: Workspace, tenant_id: str) -> list[tuple[str, str, bytes, bool]]:
    """Every ciphertext of a tenant: (kind, object id, box, whether it is eval material)."""
    out: list[tuple[str, str, bytes, bool]] = []
    for kind in ("train", "eval"):
        rows = ws.conn.execute(
            f"SELECT rid, box FROM {kind}_records WHERE tenant_id = ?", (tenant_id,)
        ).fetchall()
        out += [(kind, bytes(rid).hex(), bytes(box), kind == "eval") for rid, box in rows]
    rows = ws.conn.execute(
        "SELECT object_id, box FROM contamination_segments WHERE owner = ?", (tenant_id,)
    ).fetchall()
    out += [("index", str(oid), bytes(box), True) for oid, box in rows]
    blob_dir = ws.path / "blobs" / tenant_id
    rows = ws.conn.execute(
        "SELECT name, object_id, file FROM blobs WHERE tenant_id = ?", (tenant_id,)
    ).fetchall()
    out += [
        ("blob", str(oid), (blob_dir / file).read_bytes(), str(name).startswith("eval/"))
        for name, oid, file in rows
    ]
    return out


def _assert_sealed_by_purpose(ws: Workspace, name: str, *also_not: DataKey) -> None:
    """Eval material opens under the evaluation key only; the rest under the training key
    only; neither under any of ``also_not``."""
    info = ws.tenants.get(name)
    train, evaluation = ws.tenants.data_key(info), ws.tenants.eval_key(info)
    assert train.material != evaluation.material
    sealed = _sealed(ws, info.id)
    assert {(kind, is_eval) for kind, _, _, is_eval in sealed} == {
        ("train", False),
        ("eval", True),
        ("index", True),
        ("blob", False),
        ("blob", True),
    }
    for kind, object_id, box, is_eval in sealed:
        right, wrong = (evaluation, train) if is_eval else (train, evaluation)
        right.open(box, kind=kind, object_id=object_id)
        for key in (wrong, *also_not):
            with pytest.raises(DecryptionError):
                DataKey(info.id, key.version, key.material).open(
                    box, kind=kind, object_id=object_id
                )


def test_I5_eval_material_is_sealed_under_the_evaluation_key_and_the_rest_under_training(
    ws: Workspace,
) -> None:
    _fill(ws, "acme")
    _assert_sealed_by_purpose(ws, "acme")


# -- a workspace from before keys had purposes --------------------------------------------


def _seal_eval_material_under_the_data_key(ws: Workspace, name: str) -> None:
    """What a tenant looked like before keys had purposes: its eval records, eval blobs and
    contamination index sealed under its one data key (today's training key)."""
    info = ws.tenants.get(name)
    train, evaluation = ws.tenants.data_key(info), ws.tenants.eval_key(info)

    def reseal(kind: str, object_id: str, box: bytes) -> bytes:
        plain = evaluation.open(box, kind=kind, object_id=object_id)
        return train.seal(plain, kind=kind, object_id=object_id)

    for kind, object_id, box, is_eval in _sealed(ws, info.id):
        if not is_eval:
            continue
        new = reseal(kind, object_id, box)
        if kind == "blob":
            (file,) = ws.conn.execute(
                "SELECT file FROM blobs WHERE object_id = ?", (object_id,)
            ).fetchone()
            (ws.tenants.blob_dir(info.id) / file).write_bytes(new)
            continue
        with ws.audit.write() as conn:
            # the eval store's append-only trigger lets a rekey transaction through
            conn.execute("INSERT INTO maintenance (tenant_id, op) VALUES (?, 'rekey')", (info.id,))
            if kind == "eval":
                conn.execute(
                    "UPDATE eval_records SET box = ? WHERE tenant_id = ? AND rid = ?",
                    (new, info.id, bytes.fromhex(object_id)),
                )
            else:
                conn.execute(
                    "UPDATE contamination_segments SET box = ? WHERE object_id = ?",
                    (new, object_id),
                )
            conn.execute("DELETE FROM maintenance WHERE tenant_id = ?", (info.id,))


def _schema_before_key_purposes(db_file: Path) -> None:
    """The 0008 schema: one wrapped data key per tenant and version, no purpose column."""
    rewind_to_0010(db_file)
    conn = sqlite3.connect(db_file)
    conn.executescript(
        """
        CREATE TABLE data_keys_0008 (
            tenant_id TEXT NOT NULL REFERENCES tenants(id),
            version INTEGER NOT NULL,
            kek_id TEXT NOT NULL,
            wrapped BLOB NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (tenant_id, version)
        );
        INSERT INTO data_keys_0008 SELECT tenant_id, version, kek_id, wrapped, created_at
            FROM data_keys WHERE purpose = 'train';
        DROP TABLE data_keys;
        ALTER TABLE data_keys_0008 RENAME TO data_keys;
        UPDATE alembic_version SET version_num = '0008';
        """
    )
    conn.commit()
    conn.close()


def test_I5_a_workspace_from_before_key_purposes_gets_an_evaluation_key_on_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ws"
    with Workspace.init(path, actor="test") as ws:
        for name in TENANTS:
            _fill(ws, name)
        before = {name: _snapshot(ws, name) for name in TENANTS}
        legacy = {name: ws.tenants.data_key(ws.tenants.get(name)) for name in TENANTS}
        for name in TENANTS:
            _seal_eval_material_under_the_data_key(ws, name)
        # the old layout: the one data key, which training workers held, opens eval records
        info = ws.tenants.get("acme")
        rid, box = ws.conn.execute(
            "SELECT rid, box FROM eval_records WHERE tenant_id = ? LIMIT 1", (info.id,)
        ).fetchone()
        legacy["acme"].open(box, kind="eval", object_id=bytes(rid).hex())
        events_before = ws.audit.events()[-1].seq
    _schema_before_key_purposes(path / DB_FILE)

    with Workspace.open(path, actor="test") as ws:
        assert schema_revision(ws.conn) == SCHEMA_HEAD
        migrated = ws.audit.events(action="keys.migrate_eval_key")
        assert sorted(e.tenant for e in migrated) == list(TENANTS)
        for event in migrated:
            assert event.seq > events_before and event.actor == "test"
            assert event.details["from_version"] == 1 and event.details["to_version"] == 2
            counts = ws.tenants.stats(ws.tenants.get(str(event.tenant)))
            assert event.details["eval"] == counts["eval"] > 3
            assert event.details["blobs"] == 2 and event.details["index_segments"] > 0
        for name in TENANTS:
            assert ws.tenants.get(name).dek_version == 2
            # nothing opens under the data key training workers used to hold
            _assert_sealed_by_purpose(ws, name, legacy[name])
            assert _snapshot(ws, name) == before[name]
            assert len(list(ws.tenants.blob_dir(ws.tenants.get(name).id).iterdir())) == 2
        # the contamination index survived the move: a near-copy of an eval record is caught
        evaluation = ws.scope("acme", purpose=Purpose.EVALUATION)
        routed = [
            s.record.text for s in evaluation.eval.read() if "eval record" not in s.record.text
        ]
        assert routed, "routing sent none of acme's records to eval"
        report = ws.tenant("acme").ingest([record("copy", routed[0], label=None)])
        assert report.contaminated == 1
        assert ws.audit.verify().events > 0

    with Workspace.open(path, actor="test") as ws:
        assert len(ws.audit.events(action="keys.migrate_eval_key")) == len(TENANTS)
        assert ws.tenants.get("acme").dek_version == 2
