"""I7, I8, I9 beyond the audit table: privacy-ledger and adapter-version rows are bound to the
audit chain, so an attacker holding a copy of the workspace who drops the append-only
triggers and deletes, edits, reorders or inserts a row is caught by `silolearn audit verify`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli
from legacy_schema import rewind_to_0010
from silolearn import Workspace
from silolearn.audit.log import append_event
from silolearn.audit.rows import ROW_DIGESTS, verify_rows
from silolearn.privacy.accountant import MechanismEvent
from silolearn.privacy.ledger import BOUND_TABLES, tenant_scope
from silolearn.registry.versions import VERSIONS_TABLE, AdapterRegistry
from silolearn.storage.scope import Purpose

TABLES = (*BOUND_TABLES, VERSIONS_TABLE)
NO_FEDERATION = {"federated_lineage": 0, "federation_decisions": 0}
"""The federation's bound rows (tests/federation/test_lineage.py), none here."""
DROP_TRIGGERS = "DROP TRIGGER privacy_events_no_update; DROP TRIGGER privacy_events_no_delete;"


def _candidate(ws: Workspace, tenant: str, payload: bytes) -> int:
    registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.TRAINING))
    version = registry.register_candidate(
        payload,
        kind="head",
        lineage={"records_digest": "d" * 64, "seed": 0},
        metrics={"accuracy": 0.8, "macro_f1": 0.75},
    )
    return version.version


def _registry(ws: Workspace, tenant: str) -> AdapterRegistry:
    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with three ledger events in two charged runs, a scope policy, versions
    that were promoted, retired, rejected and evaluated, and a shredded tenant."""
    path = tmp_path_factory.mktemp("bound") / "ws"
    with Workspace.init(path, actor="test") as ws:
        ws.create_tenant("acme")
        ledger = ws.ledger()
        scope = tenant_scope(ws.tenants.get("acme").id)
        ledger.set_policy(scope, tenant="acme", epsilon_budget=20.0, mode="dp")
        runs = [
            [MechanismEvent(0.05, 2.0, 100)],
            [MechanismEvent(0.2, 4.0, 20), MechanismEvent(1.0, 8.0, 2)],
        ]
        for i, planned in enumerate(runs):
            ledger.charge(
                scope, tenant="acme", run_id=f"run-{i}", purpose="adapter", planned=planned
            )
        v1 = _candidate(ws, "acme", b"weights one")
        _registry(ws, "acme").promote(v1, decision={"reason": "first"})
        v2 = _candidate(ws, "acme", b"weights two")
        _registry(ws, "acme").set_metrics(v2, {"accuracy": 0.9, "macro_f1": 0.85, "n": 40})
        _registry(ws, "acme").promote(v2, decision={"reason": "better"})
        v3 = _candidate(ws, "acme", b"weights three")
        _registry(ws, "acme").reject(v3, decision={"reason": "worse"})
        ws.create_tenant("gone")
        _registry(ws, "gone").promote(_candidate(ws, "gone", b"gone"), decision={"reason": "x"})
        ws.tenants.shred("gone")
    return path


def _copy(original: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    return copy


def _attack(workspace: Path, script: str) -> None:
    """What an attacker with the database file does: plain sqlite3, triggers dropped."""
    conn = sqlite3.connect(workspace / "silolearn.db")
    conn.executescript(DROP_TRIGGERS + script)
    conn.commit()
    conn.close()


def _acme_id(workspace: Path) -> str:
    conn = sqlite3.connect(workspace / "silolearn.db")
    try:
        return str(conn.execute("SELECT id FROM tenants WHERE name = 'acme'").fetchone()[0])
    finally:
        conn.close()


def _verify_json(workspace: Path) -> tuple[int, dict[str, Any]]:
    result = run_cli("audit", "verify", "--workspace", str(workspace), "--json")
    return result.returncode, json.loads(result.stdout)


def _findings(workspace: Path) -> list[tuple[str, str, str]]:
    with Workspace.open(workspace) as ws:
        report = verify_rows(ws.conn, TABLES, signed_seq=ws.audit.signed_seq())
    return [(f.kind, f.table, f.row) for f in report.findings]


def test_I7_untampered_workspace_verifies_clean(original: Path, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path)
    code, report = _verify_json(copy)
    assert code == 0, report
    assert report["ok"] is True and report["findings"] == []
    assert report["rows"] == {
        "privacy_events": 3,
        "privacy_scopes": 1,
        "adapter_versions": 3,
        **NO_FEDERATION,
    }
    human = run_cli("audit", "verify", "--workspace", str(copy))
    assert human.returncode == 0, human.stderr
    assert "bound rows OK: 3 privacy_events, 1 privacy_scopes, 3 adapter_versions" in human.stdout


def test_I9_deleting_a_ledger_row_is_detected(original: Path, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path)
    _attack(copy, "DELETE FROM privacy_events WHERE id = (SELECT MAX(id) FROM privacy_events)")

    code, report = _verify_json(copy)
    assert code == 8
    assert report["ok"] is False
    [finding] = report["findings"]
    assert finding["kind"] == "deleted" and finding["table"] == "privacy_events"
    assert finding["row"] == "id=3" and isinstance(finding["seq"], int)
    assert "privacy_events row id=3 is missing" in report["message"]

    human = run_cli("audit", "verify", "--workspace", str(copy))
    assert human.returncode == 8
    assert "privacy_events row id=3 is missing" in " ".join(human.stderr.split())


def test_I9_deleting_the_only_ledger_row_of_a_run_in_the_middle_is_detected(
    original: Path, tmp_path: Path
) -> None:
    copy = _copy(original, tmp_path)
    _attack(copy, "DELETE FROM privacy_events WHERE id = 1")
    assert _findings(copy) == [("deleted", "privacy_events", "id=1")]


def test_I9_editing_a_ledger_rows_epsilon_is_detected(original: Path, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path)
    _attack(copy, "UPDATE privacy_events SET epsilon_after = 0.01 WHERE id = 2")

    code, report = _verify_json(copy)
    assert code == 8
    assert [(f["kind"], f["table"], f["row"]) for f in report["findings"]] == [
        ("altered", "privacy_events", "id=2")
    ]


def test_I9_raising_a_scope_budget_is_detected(original: Path, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path)
    _attack(copy, "UPDATE privacy_scopes SET epsilon_budget = 1000")
    assert _findings(copy) == [("altered", "privacy_scopes", f"scope=tenant:{_acme_id(copy)}")]


def test_I9_reordering_ledger_rows_is_detected(original: Path, tmp_path: Path) -> None:
    copy = _copy(original, tmp_path)
    _attack(
        copy,
        "UPDATE privacy_events SET id = -1 WHERE id = 1;"
        "UPDATE privacy_events SET id = 1 WHERE id = 2;"
        "UPDATE privacy_events SET id = 2 WHERE id = -1;",
    )
    assert _findings(copy) == [
        ("altered", "privacy_events", "id=1"),
        ("altered", "privacy_events", "id=2"),
    ]


def test_I9_a_ledger_row_inserted_behind_silolearns_back_is_detected(
    original: Path, tmp_path: Path
) -> None:
    copy = _copy(original, tmp_path)
    _attack(
        copy,
        "INSERT INTO privacy_events (scope, run_id, purpose, sampling_rate, noise_multiplier, "
        "steps, delta, epsilon_after, created_at) SELECT scope, 'forged', purpose, "
        "sampling_rate, noise_multiplier, steps, delta, epsilon_after, created_at "
        "FROM privacy_events WHERE id = 1",
    )
    assert _findings(copy) == [("unbound", "privacy_events", "id=4")]


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        # a silent rollback: the retired v1 serves again, v2 is retired
        (
            "UPDATE adapter_versions SET status = 'retired' WHERE version = 2;"
            "UPDATE adapter_versions SET status = 'active' WHERE version = 1;",
            [("altered", 1), ("altered", 2)],
        ),
        (
            "UPDATE adapter_versions SET sha256 = lower(hex(randomblob(32))) WHERE version = 2",
            [("altered", 2)],
        ),
        ("UPDATE adapter_versions SET status = 'candidate' WHERE version = 3", [("altered", 3)]),
        ("DELETE FROM adapter_versions WHERE version = 3", [("deleted", 3)]),
        (
            "UPDATE adapter_versions SET version = 9 WHERE version = 1;"
            "UPDATE adapter_versions SET version = 1 WHERE version = 3;"
            "UPDATE adapter_versions SET version = 3 WHERE version = 9;",
            [("altered", 1), ("altered", 3)],
        ),
    ],
    ids=["status", "sha256", "unreject", "delete", "reorder"],
)
def test_I7_I8_editing_or_deleting_a_version_row_is_detected(
    original: Path, tmp_path: Path, attack: str, expected: list[tuple[str, int]]
) -> None:
    copy = _copy(original, tmp_path)
    _attack(copy, attack)
    acme = _acme_id(copy)

    code, report = _verify_json(copy)
    assert code == 8
    found = [(f["kind"], f["table"], f["row"]) for f in report["findings"]]
    assert found == [
        (kind, "adapter_versions", f"tenant_id={acme}, version={v}") for kind, v in expected
    ]


def test_I7_a_forged_event_vouching_for_an_edit_is_not_signed(
    original: Path, tmp_path: Path
) -> None:
    """The attacker edits v1 and appends a well-linked audit event binding the new row: the
    chain links, but no signature covers the event, and the keyring is not in the file."""
    copy = _copy(original, tmp_path)
    _attack(copy, "UPDATE adapter_versions SET status = 'candidate' WHERE version = 3")
    acme = _acme_id(copy)
    conn = sqlite3.connect(copy / "silolearn.db", isolation_level=None)
    conn.execute("BEGIN")
    row = conn.execute(
        f"{VERSIONS_TABLE.select()} WHERE tenant_id = ? AND version = 3", (acme,)
    ).fetchone()
    forged = {ROW_DIGESTS: {"adapter_versions": {f"{acme}/3": VERSIONS_TABLE.digest(row)}}}
    seq, _ = append_event(
        conn,
        actor="user:admin",
        action="adapter.evaluated",
        tenant="acme",
        obj="v3",
        details=forged,
    )
    conn.execute("COMMIT")
    conn.close()

    code, report = _verify_json(copy)
    assert code == 8
    [finding] = report["findings"]
    assert finding["kind"] == "unsigned" and finding["seq"] == seq
    assert finding["row"] == f"tenant_id={acme}, version=3"
    assert report["signed_seq"] == seq - 1


def test_I7_shredding_a_tenant_deletes_its_versions_without_a_finding(original: Path) -> None:
    """The fixture shredded ``gone`` after it had an active version: its rows' deletion is
    vouched for by the signed ``tenant.shred`` event."""
    with Workspace.open(original) as ws:
        shredded = [e for e in ws.audit.events() if e.action == "tenant.shred"]
        assert [e.tenant for e in shredded] == ["gone"]
        bound = [e for e in ws.audit.events(tenant="gone") if ROW_DIGESTS in e.details]
        assert bound, "gone's versions were bound before the shred"
    assert _findings(original) == []


def test_I7_rows_written_before_binding_are_backfilled_by_the_migration(tmp_path: Path) -> None:
    """A workspace whose ledger and versions were written before rows were bound (no digests
    in their audit events) verifies clean once opened at the new schema; tampering after that
    is caught like anywhere else."""
    path = tmp_path / "old"
    with Workspace.init(path, actor="test") as ws:
        info = ws.create_tenant("acme")
    # the rows and their events as a workspace at 0009 wrote them, through plain sqlite3
    rewind_to_0010(path / "silolearn.db")
    conn = sqlite3.connect(path / "silolearn.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO privacy_events (scope, run_id, purpose, sampling_rate, "
        "noise_multiplier, steps, delta, epsilon_after, created_at) "
        "VALUES (?, 'old-run', 'adapter', 0.05, 2.0, 100, 1e-5, 0.4, '2026-01-01')",
        (tenant_scope(info.id),),
    )
    append_event(
        conn,
        actor="test",
        action="privacy.charge",
        tenant="acme",
        obj=None,
        details={"run_id": "old"},
    )
    conn.execute(
        "INSERT INTO adapter_versions (tenant_id, version, status, kind, sha256, parent, "
        "lineage, metrics, decision, created_at, updated_at, run_id) VALUES "
        "(?, 1, 'active', 'head', ?, NULL, '{}', '{}', '{}', '2026-01-01', "
        "'2026-01-01', 'abcdef0123456789')",
        (info.id, "a" * 64),
    )
    append_event(conn, actor="test", action="adapter.promote", tenant="acme", obj="v1", details={})
    conn.execute("UPDATE alembic_version SET version_num = '0009'")
    conn.execute("COMMIT")
    conn.close()

    code, report = _verify_json(path)
    assert code == 0, report
    assert report["rows"] == {
        "privacy_events": 1,
        "privacy_scopes": 0,
        "adapter_versions": 1,
        **NO_FEDERATION,
    }
    with Workspace.open(path) as ws:
        backfills = {e.actor: e for e in ws.audit.events(action="audit.rows_bound")}
        assert backfills["silolearn:migration-0010"].details["rows"] == {
            "privacy_events": 1,
            "adapter_versions": 1,
        }
        # 0011 stores version rows in another form: bound again, then again once sealed
        assert backfills["silolearn:migration-0011"].details["rows"] == {"adapter_versions": 1}
        [sealing] = ws.audit.events(action="keys.migrate_metadata_key")
        assert sealing.details["adapter_versions"] == 1
        assert max(e.seq for e in (*backfills.values(), sealing)) <= ws.audit.signed_seq()

    _attack(path, "DELETE FROM privacy_events")
    code, report = _verify_json(path)
    assert code == 8
    assert [(f["kind"], f["row"]) for f in report["findings"]] == [("deleted", "id=1")]
