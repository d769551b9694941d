"""Tenant lifecycle, crypto-shredding (I6) and key rotation."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from helpers import record, run_cli, write_jsonl
from silolearn import Workspace
from silolearn.errors import (
    DecryptionError,
    InvalidTenantName,
    KeyDestroyed,
    TenantExists,
    TenantNotFound,
    TenantQuarantined,
)
from silolearn.records import Record
from silolearn.security.envelope import DataKey
from silolearn.security.keys import WrappedKey
from silolearn.storage.scope import Purpose


@pytest.mark.parametrize(
    "name", ["A", "a", "ab_c", "Upper", "x" * 41, "tab\tname", "spa ce", "é-accent", "", "../x"]
)
def test_tenant_names_are_validated(ws: Workspace, name: str) -> None:
    with pytest.raises(InvalidTenantName, match="2-40 characters"):
        ws.create_tenant(name)


@pytest.mark.parametrize("name", ["ab", "a-b", "x" * 40, "2024-dept", "--"])
def test_valid_tenant_names(ws: Workspace, name: str) -> None:
    assert ws.create_tenant(name).name == name


def test_duplicate_and_missing_tenants(ws: Workspace) -> None:
    ws.create_tenant("acme")
    with pytest.raises(TenantExists):
        ws.create_tenant("acme")
    with pytest.raises(TenantNotFound):
        ws.tenant("nobody")


def test_quarantined_tenant_accepts_no_ingestion_or_training(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    scope = ws.scope("acme")
    ws.tenant("acme").quarantine("suspected poisoning")
    rows = write_jsonl(tmp_path / "r.jsonl", [record(1, "hello there")])
    with pytest.raises(TenantQuarantined):
        ws.tenant("acme").ingest(rows)
    # a scope opened before the quarantine is refused too: the check is inside the write
    with pytest.raises(TenantQuarantined):
        scope.train.append([])
    with pytest.raises(TenantQuarantined):
        ws.scope("acme", purpose=Purpose.TRAINING)
    denied = ws.audit.events(tenant="acme", action="access.denied")
    assert len(denied) == 3
    assert ws.tenant("acme").info().status_reason == "suspected poisoning"
    ws.tenant("acme").release()
    assert ws.tenant("acme").ingest(rows).accepted == 1


def _ingest_sample(ws: Workspace, name: str, tmp_path: Path, n: int = 40) -> None:
    ws.create_tenant(name)
    rows = [
        record(f"{name}-{i}", f"record number {i} of tenant {name}", label="l") for i in range(n)
    ]
    ws.tenant(name).ingest(write_jsonl(tmp_path / f"{name}.jsonl", rows))
    # routing is keyed and random per workspace: put some eval records in for certain
    evals = [record(f"{name}-e{i}", f"eval record {i} of tenant {name}") for i in range(3)]
    ws.scope(name).eval.append([Record.model_validate(r) for r in evals])
    ws.scope(name).blobs.put("adapter", b"adapter weights " * 10)
    # eval material beside records: a probe snapshot, sealed under the evaluation key
    ws.scope(name, purpose=Purpose.EVALUATION).blobs.put("eval/probes/v1", b"probe " * 10)


def test_I6_shredded_tenant_is_unrecoverable_from_an_earlier_database_copy(
    ws: Workspace, tmp_path: Path
) -> None:
    _ingest_sample(ws, "doomed", tmp_path)
    _ingest_sample(ws, "keeper", tmp_path)
    info = ws.tenants.get("doomed")
    blob_dir = ws.tenants.blob_dir(info.id)
    blob_files = {p.name: p.read_bytes() for p in blob_dir.iterdir()}
    backup = tmp_path / "backup.db"
    target = sqlite3.connect(backup)
    ws.conn.backup(target)
    target.close()

    result = run_cli("tenant", "delete", "doomed", "--shred", "--yes", "--workspace", str(ws.path))
    assert result.returncode == 0, result.stderr

    with pytest.raises(TenantNotFound):
        ws.tenant("doomed")
    assert not blob_dir.exists()
    for table in ("train_records", "eval_records", "blobs", "data_keys"):
        assert (
            ws.conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE tenant_id = ?", (info.id,)
            ).fetchone()[0]
            == 0
        )
    # the earlier copy still holds the three wrapped keys and the ciphertexts ...
    old = sqlite3.connect(backup)
    wrapped_keys = old.execute(
        "SELECT purpose, version, kek_id, wrapped FROM data_keys WHERE tenant_id = ?", (info.id,)
    ).fetchall()
    boxes = {
        kind: old.execute(
            f"SELECT rid, box FROM {kind}_records WHERE tenant_id = ? LIMIT 1", (info.id,)
        ).fetchone()
        for kind in ("train", "eval")
    }
    old.close()
    assert sorted(purpose for purpose, *_ in wrapped_keys) == ["eval", "metadata", "train"]
    # ... but nothing left in the workspace unwraps them: not the tenant's keys, nor another's
    keyring_text = (ws.path / "keys" / "keyring.json").read_text()
    assert info.id not in keyring_text
    other = ws.tenants.get("keeper")
    for purpose, version, kek_id, wrapped in wrapped_keys:
        with pytest.raises(KeyDestroyed):
            ws.keys.unwrap(info.id, version, WrappedKey(kek_id, wrapped), purpose=purpose)
        for tenant_id in ws.keys.tenant_ids():
            with pytest.raises((DecryptionError, KeyDestroyed)):
                ws.keys.unwrap(tenant_id, version, WrappedKey(kek_id, wrapped), purpose=purpose)
    for kind, (rid, box) in boxes.items():
        for key in (ws.tenants.data_key(other), ws.tenants.eval_key(other)):
            with pytest.raises(DecryptionError):
                key.open(box, kind=kind, object_id=bytes(rid).hex())
    assert blob_files  # the blob files existed and were sealed; they are gone now
    # the other tenant is untouched
    assert len(ws.scope("keeper", purpose=Purpose.TRAINING).train.read()) > 0
    assert ws.audit.events(tenant="doomed", action="tenant.shred")


def test_shred_needs_explicit_confirmation(ws: Workspace) -> None:
    ws.create_tenant("acme")
    for args in (["--shred"], ["--yes"], []):
        result = run_cli("tenant", "delete", "acme", *args, "--workspace", str(ws.path))
        assert result.returncode == 6
        assert "--shred" in result.stderr or "--yes" in result.stderr
    assert ws.tenant("acme").info().status == "active"


def _snapshot(ws: Workspace, name: str) -> tuple[list[str], list[str], bytes, bytes]:
    train = [s.record.text for s in ws.scope(name, purpose=Purpose.TRAINING).train.read()]
    evaluation = ws.scope(name, purpose=Purpose.EVALUATION)
    evals = [s.record.text for s in evaluation.eval.read()]
    return train, evals, ws.scope(name).blobs.get("adapter"), evaluation.blobs.get("eval/probes/v1")


def test_I6_kek_rotation_rewraps_without_reencrypting_and_keeps_records_readable(
    ws: Workspace, tmp_path: Path
) -> None:
    _ingest_sample(ws, "acme", tmp_path)
    _ingest_sample(ws, "beta", tmp_path)
    before = {n: _snapshot(ws, n) for n in ("acme", "beta")}
    boxes = [
        ws.conn.execute(f"SELECT box FROM {table} ORDER BY seq").fetchall()
        for table in ("train_records", "eval_records")
    ]
    query = "SELECT tenant_id, purpose, kek_id FROM data_keys"
    keks = {(t, p): k for t, p, k in ws.conn.execute(query).fetchall()}
    assert len(keks) == 6  # a training, an evaluation and a metadata key per tenant

    result = run_cli("keys", "rotate", "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rewrapped"] == 6

    assert [
        ws.conn.execute(f"SELECT box FROM {table} ORDER BY seq").fetchall()
        for table in ("train_records", "eval_records")
    ] == boxes
    new_keks = {(t, p): k for t, p, k in ws.conn.execute(query).fetchall()}
    assert new_keks.keys() == keks.keys()
    assert all(new_keks[t] != keks[t] for t in keks)
    # one KEK per tenant wraps all of its keys
    assert all(new_keks[(t, "eval")] == new_keks[(t, "train")] for t, _ in keks)
    assert all(new_keks[(t, "metadata")] == new_keks[(t, "train")] for t, _ in keks)
    assert {n: _snapshot(ws, n) for n in ("acme", "beta")} == before
    assert len(ws.audit.events(action="keys.rotate_kek")) == 2


def test_I6_data_key_rotation_reencrypts_everything_and_keeps_it_readable(
    ws: Workspace, tmp_path: Path
) -> None:
    _ingest_sample(ws, "acme", tmp_path)
    before = _snapshot(ws, "acme")
    old_key = ws.tenants.data_key(ws.tenants.get("acme"))
    old_eval_key = ws.tenants.eval_key(ws.tenants.get("acme"))
    old_boxes = ws.conn.execute("SELECT rid, box FROM eval_records").fetchall()

    result = run_cli(
        "keys", "rotate", "--tenant", "acme", "--data-key", "--workspace", str(ws.path), "--json"
    )
    assert result.returncode == 0, result.stderr

    info = ws.tenants.get("acme")
    assert info.dek_version == old_key.version + 1
    assert _snapshot(ws, "acme") == before
    # both keys are fresh: the new ciphertexts open under neither old key, each store's
    # under its own new key only; old versions are gone
    new_key, new_eval_key = ws.tenants.data_key(info), ws.tenants.eval_key(info)
    assert (
        len({old_key.material, old_eval_key.material, new_key.material, new_eval_key.material}) == 4
    )
    for kind, opens in (("train", new_key), ("eval", new_eval_key)):
        rid, box = ws.conn.execute(f"SELECT rid, box FROM {kind}_records LIMIT 1").fetchone()
        assert (rid, box) not in old_boxes
        opens.open(box, kind=kind, object_id=bytes(rid).hex())
        for key in {old_key, old_eval_key, new_key, new_eval_key} - {opens}:
            with pytest.raises(DecryptionError):
                DataKey(info.id, key.version, key.material).open(
                    box, kind=kind, object_id=bytes(rid).hex()
                )
    # the old metadata key stays, for the audit events sealed under it
    assert ws.conn.execute(
        "SELECT purpose, version FROM data_keys ORDER BY purpose, version"
    ).fetchall() == [
        ("eval", info.dek_version),
        ("metadata", old_key.version),
        ("metadata", info.dek_version),
        ("train", info.dek_version),
    ]
    assert len(list(ws.tenants.blob_dir(info.id).iterdir())) == 2
    assert ws.audit.events(tenant="acme", action="keys.rotate_data_key")


def test_rotate_flags_must_go_together(ws: Workspace) -> None:
    result = run_cli("keys", "rotate", "--data-key", "--workspace", str(ws.path))
    assert result.returncode == 6 and "--tenant" in result.stderr


def test_sealed_keyring_needs_the_passphrase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILOLEARN_PASSPHRASE", "correct horse battery staple")
    path = tmp_path / "sealed"
    with Workspace.init(path, sealed=True) as ws:
        ws.create_tenant("acme")
        ws.scope("acme").train.append([])
    keyring = (path / "keys" / "keyring.json").read_text()
    assert '"sealed": true' in keyring and "kek-" not in keyring
    assert (path / "keys" / "keyring.json").stat().st_mode & 0o777 == 0o600
    with Workspace.open(path) as ws:
        assert ws.tenant("acme").info().status == "active"
    result = run_cli(
        "tenant", "list", "--workspace", str(path), env={"SILOLEARN_PASSPHRASE": "wrong"}
    )
    assert result.returncode == 9 and "wrong passphrase" in result.stderr
    monkeypatch.delenv("SILOLEARN_PASSPHRASE")
    result = run_cli("tenant", "list", "--workspace", str(path))
    assert result.returncode == 9 and "SILOLEARN_PASSPHRASE" in result.stderr


def test_copying_the_workspace_keeps_it_working(ws: Workspace, tmp_path: Path) -> None:
    _ingest_sample(ws, "acme", tmp_path)
    ws.audit.checkpoint()
    shutil.copytree(ws.path, tmp_path / "copy")
    with Workspace.open(tmp_path / "copy") as copy:
        assert copy.audit.verify().events > 0
        assert len(copy.scope("acme", purpose=Purpose.TRAINING).train.read()) > 0
