"""Tenant lifecycle, crypto-shredding (I6) and key rotation."""

from __future__ import annotations

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
    # the earlier copy still holds the wrapped key and the ciphertexts ...
    old = sqlite3.connect(backup)
    version, kek_id, wrapped = old.execute(
        "SELECT version, kek_id, wrapped FROM data_keys WHERE tenant_id = ?", (info.id,)
    ).fetchone()
    rid, box = old.execute(
        "SELECT rid, box FROM train_records WHERE tenant_id = ? LIMIT 1", (info.id,)
    ).fetchone()
    old.close()
    # ... but nothing left in the workspace unwraps it: not the tenant's keys, nor another's
    with pytest.raises(KeyDestroyed):
        ws.keys.unwrap(info.id, version, WrappedKey(kek_id, wrapped))
    keyring_text = (ws.path / "keys" / "keyring.json").read_text()
    assert info.id not in keyring_text
    other = ws.tenants.get("keeper")
    for tenant_id in ws.keys.tenant_ids():
        with pytest.raises((DecryptionError, KeyDestroyed)):
            ws.keys.unwrap(tenant_id, version, WrappedKey(kek_id, wrapped))
    with pytest.raises(DecryptionError):
        ws.tenants.data_key(other).open(box, kind="train", object_id=bytes(rid).hex())
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


def _snapshot(ws: Workspace, name: str) -> tuple[list[str], list[str], bytes]:
    train = [s.record.text for s in ws.scope(name, purpose=Purpose.TRAINING).train.read()]
    evals = [s.record.text for s in ws.scope(name, purpose=Purpose.EVALUATION).eval.read()]
    return train, evals, ws.scope(name).blobs.get("adapter")


def test_I6_kek_rotation_rewraps_without_reencrypting_and_keeps_records_readable(
    ws: Workspace, tmp_path: Path
) -> None:
    _ingest_sample(ws, "acme", tmp_path)
    _ingest_sample(ws, "beta", tmp_path)
    before = {n: _snapshot(ws, n) for n in ("acme", "beta")}
    boxes = ws.conn.execute("SELECT box FROM train_records ORDER BY seq").fetchall()
    keks = dict(ws.conn.execute("SELECT tenant_id, kek_id FROM data_keys").fetchall())

    result = run_cli("keys", "rotate", "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr

    assert ws.conn.execute("SELECT box FROM train_records ORDER BY seq").fetchall() == boxes
    new_keks = dict(ws.conn.execute("SELECT tenant_id, kek_id FROM data_keys").fetchall())
    assert all(new_keks[t] != keks[t] for t in keks)
    assert {n: _snapshot(ws, n) for n in ("acme", "beta")} == before
    assert len(ws.audit.events(action="keys.rotate_kek")) == 2


def test_I6_data_key_rotation_reencrypts_everything_and_keeps_it_readable(
    ws: Workspace, tmp_path: Path
) -> None:
    _ingest_sample(ws, "acme", tmp_path)
    before = _snapshot(ws, "acme")
    old_key = ws.tenants.data_key(ws.tenants.get("acme"))
    old_boxes = ws.conn.execute("SELECT rid, box FROM eval_records").fetchall()

    result = run_cli(
        "keys", "rotate", "--tenant", "acme", "--data-key", "--workspace", str(ws.path), "--json"
    )
    assert result.returncode == 0, result.stderr

    info = ws.tenants.get("acme")
    assert info.dek_version == old_key.version + 1
    assert _snapshot(ws, "acme") == before
    # the new ciphertexts no longer open under the old key; old versions are gone
    rid, box = ws.conn.execute("SELECT rid, box FROM eval_records LIMIT 1").fetchone()
    assert (rid, box) not in old_boxes
    with pytest.raises(DecryptionError):
        DataKey(info.id, old_key.version, old_key.material).open(
            box, kind="eval", object_id=bytes(rid).hex()
        )
    assert ws.conn.execute("SELECT COUNT(*) FROM data_keys").fetchone()[0] == 1
    assert len(list(ws.tenants.blob_dir(info.id).iterdir())) == 1
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
