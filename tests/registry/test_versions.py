"""I8: versions with lineage; promotion and rollback atomic and per tenant; a crash at any
point leaves the previous version serving."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from helpers import run_cli
from silolearn import Workspace
from silolearn.errors import ConflictError, IntegrityError, TenantQuarantined
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose


def _candidate(ws: Workspace, tenant: str, payload: bytes, accuracy: float) -> int:
    registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.TRAINING))
    version = registry.register_candidate(
        payload,
        kind="head",
        lineage={"records_digest": "d" * 64, "seed": 0},
        metrics={"accuracy": accuracy, "macro_f1": accuracy - 0.05},
    )
    return version.version


def _registry(ws: Workspace, tenant: str) -> AdapterRegistry:
    return AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))


def test_I8_promotion_retires_the_previous_version_and_rollback_restores_it(
    ws: Workspace,
) -> None:
    ws.create_tenant("acme")
    v1 = _candidate(ws, "acme", b"weights one", 0.7)
    _registry(ws, "acme").promote(v1, decision={"reason": "first"})
    v2 = _candidate(ws, "acme", b"weights two", 0.8)
    registry = _registry(ws, "acme")
    assert registry.get(v2).parent == v1
    registry.promote(v2, decision={"reason": "better"})
    assert [(v.version, v.status) for v in registry.list()] == [(1, "retired"), (2, "active")]
    assert registry.load_artefact(registry.get(v2)) == b"weights two"

    rolled = registry.rollback()
    assert rolled.version == v1 and rolled.status == "active"
    assert registry.get(v2).status == "retired"
    assert registry.load_artefact(rolled) == b"weights one"
    actions = [e.action for e in ws.audit.events(tenant="acme", action="adapter")]
    assert actions == [
        "adapter.candidate",
        "adapter.promote",
        "adapter.candidate",
        "adapter.promote",
        "adapter.rollback",
    ]


def test_I8_rollback_of_one_tenant_leaves_another_unchanged(ws: Workspace) -> None:
    for name in ("acme", "beta"):
        ws.create_tenant(name)
        for i in range(2):
            version = _candidate(ws, name, f"{name}-{i}".encode(), 0.5 + i / 10)
            _registry(ws, name).promote(version, decision={"reason": "test"})
    before = [v.to_dict() for v in _registry(ws, "beta").list()]
    result = run_cli("adapters", "rollback", "acme", "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 1
    after = [v.to_dict() for v in _registry(ws, "beta").list()]
    assert after == before
    assert _registry(ws, "beta").active().version == 2  # type: ignore[union-attr]


def test_I8_at_most_one_active_version_per_tenant(ws: Workspace) -> None:
    ws.create_tenant("acme")
    for i in range(2):
        _candidate(ws, "acme", f"w{i}".encode(), 0.5)
    with pytest.raises(sqlite3.IntegrityError):
        ws.conn.execute("UPDATE adapter_versions SET status = 'active'")


def test_I8_candidate_states_are_enforced(ws: Workspace) -> None:
    ws.create_tenant("acme")
    v1 = _candidate(ws, "acme", b"w", 0.5)
    registry = _registry(ws, "acme")
    registry.reject(v1, decision={"reason": "worse"})
    with pytest.raises(ConflictError, match="rejected"):
        registry.promote(v1, decision={})
    with pytest.raises(ConflictError):
        registry.rollback(to=v1)
    # a tampered artefact is refused when loaded
    v2 = _candidate(ws, "acme", b"good weights", 0.6)
    registry.promote(v2, decision={})
    ws.conn.execute("UPDATE adapter_versions SET sha256 = ? WHERE version = ?", ("0" * 64, v2))
    with pytest.raises(IntegrityError, match="SHA-256"):
        registry.load_artefact(registry.get(v2))


def test_I8_quarantined_tenant_can_roll_back_but_not_promote(ws: Workspace) -> None:
    ws.create_tenant("acme")
    for i in range(2):
        _registry(ws, "acme").promote(_candidate(ws, "acme", f"w{i}".encode(), 0.5), decision={})
    v3 = _candidate(ws, "acme", b"w3", 0.9)
    ws.tenant("acme").quarantine("drift alarm")
    registry = _registry(ws, "acme")
    with pytest.raises(TenantQuarantined):
        registry.promote(v3, decision={})
    assert registry.rollback().version == 1


def _die_mid_promotion(path: str, version: int) -> None:
    ws = Workspace.open(path, actor="crasher")
    scope = ws.scope("acme", purpose=Purpose.REGISTRY)
    with scope.write() as conn:
        conn.execute("UPDATE adapter_versions SET status = 'retired' WHERE status = 'active'")
        conn.execute("UPDATE adapter_versions SET status = 'active' WHERE version = ?", (version,))
        os.kill(os.getpid(), signal.SIGKILL)


def test_I8_a_crash_mid_promotion_leaves_the_previous_version_serving(ws: Workspace) -> None:
    ws.create_tenant("acme")
    v1 = _candidate(ws, "acme", b"serving", 0.7)
    _registry(ws, "acme").promote(v1, decision={})
    v2 = _candidate(ws, "acme", b"candidate", 0.8)
    process = multiprocessing.get_context("spawn").Process(
        target=_die_mid_promotion, args=(str(ws.path), v2)
    )
    process.start()
    process.join(timeout=120)
    assert process.exitcode == -signal.SIGKILL
    registry = _registry(ws, "acme")
    assert registry.active().version == v1  # type: ignore[union-attr]
    assert registry.get(v2).status == "candidate"
    assert registry.promote(v2, decision={"reason": "after crash"}).status == "active"
    assert ws.audit.verify().events > 0


def test_candidate_without_artefact_cannot_serve(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    v1 = _candidate(ws, "acme", b"w", 0.5)
    ws.conn.execute("DELETE FROM blobs")
    with pytest.raises(IntegrityError, match="no stored artefact"):
        _registry(ws, "acme").promote(v1, decision={})


def test_rollback_never_activates_an_ungated_candidate(ws: Workspace) -> None:
    ws.create_tenant("acme")
    _registry(ws, "acme").promote(_candidate(ws, "acme", b"w1", 0.5), decision={})
    v2 = _candidate(ws, "acme", b"w2", 0.9)
    with pytest.raises(ConflictError, match="candidate"):
        _registry(ws, "acme").rollback(to=v2)


def test_shredding_a_tenant_with_adapter_versions(ws: Workspace) -> None:
    ws.create_tenant("acme")
    _registry(ws, "acme").promote(_candidate(ws, "acme", b"w1", 0.5), decision={})
    ws.tenants.shred("acme")
    assert ws.conn.execute("SELECT COUNT(*) FROM adapter_versions").fetchone()[0] == 0
    assert ws.tenants.list() == []
