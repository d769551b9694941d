"""I6 for what the coordinator records about a tenant's data: label names, per-class metrics,
lineage, gate evidence, incidents and audit details are sealed under the tenant's metadata
key, so no file of the workspace holds them in clear; the API and the CLI show them
decrypted, and once the tenant is shredded they stay sealed while the audit chain still
verifies. A workspace made at schema 0010 has them sealed when it is opened."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli
from legacy_schema import rewind_to_0010
from silolearn import Workspace
from silolearn.audit.log import append_event
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.db import SCHEMA_HEAD, schema_revision
from silolearn.errors import KeyDestroyed, MetadataSealed
from silolearn.monitoring.incidents import Incidents
from silolearn.pipeline import list_gate_runs, list_sweeps, train_many
from silolearn.registry.versions import AdapterRegistry
from silolearn.rounds.commit import record_gates
from silolearn.rounds.context import Coordinator
from silolearn.security.keys import METADATA_KEY, WrappedKey
from silolearn.storage.scope import Purpose
from silolearn.verification import METADATA_KEYS, find_in_clear
from silolearn.workspace import DB_FILE

# the demo's tenants and datasets (silolearn.demo.SOURCES): topics and review categories
DEMO_TENANTS = {"newsroom": (bbc_news, 120), "critics": (rotten_tomatoes, 300)}


@pytest.fixture(scope="module", autouse=True)
def _small_eval_windows() -> Iterator[None]:
    """As in tests/learning/conftest.py: 30% of texts to eval, judged on 3 or more."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_TRAINING__MIN_EVAL_RECORDS", "3")
        patch.setenv("SILOLEARN_INGEST__EVAL_FRACTION", "0.3")
        yield


def _files(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def _in_clear(files: list[tuple[Path, bytes]], needles: dict[bytes, str]) -> list[str]:
    """Every needle found: a label as its raw bytes and as a JSON string (ensure_ascii or
    not), a metric key quoted. Needles under 5 bytes count only as words amid text
    (``verification.find_in_clear``): in a few MB of ciphertext four given bytes turn up by
    chance."""
    found = []
    for path, data in files:
        for needle, what in needles.items():
            hit = next(iter(find_in_clear(data, needle)), None)
            if hit is not None:
                found.append(f"{what} as {needle!r} in {path.name} at {hit}")
    return found


def _needles(labels: set[str]) -> dict[bytes, str]:
    needles: dict[bytes, str] = {}
    for label in labels:
        for form in (
            label.encode(),
            json.dumps(label).encode(),
            json.dumps(label, ensure_ascii=False).encode(),
        ):
            needles[form] = f"label {label!r}"
    needles.update({json.dumps(k).encode(): f"metric key {k!r}" for k in METADATA_KEYS})
    return needles


@pytest.fixture(scope="module")
def after_a_round(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """Two of the demo's tenants on real records: ingested, one round each (gates recorded,
    divergence checked), a gate rerun recorded, an incident opened from a version's
    per-class metrics, the workspace closed."""
    path = tmp_path_factory.mktemp("sealed") / "ws"
    labels: dict[str, set[str]] = {}
    with Workspace.init(path, actor="test") as ws:
        for tenant, (dataset, n) in DEMO_TENANTS.items():
            rows = sample(dataset(), n, seed=7)
            labels[tenant] = {r["label"] for r in rows}
            ws.create_tenant(tenant)
            ws.tenant(tenant).ingest(rows)
    results = train_many(lambda: Workspace.open(path, actor="test"), list(DEMO_TENANTS), seed=5)
    assert all(r.version is not None for r in results), [r.error for r in results]
    with Workspace.open(path, actor="test") as ws:
        registry = AdapterRegistry(ws.scope("critics", purpose=Purpose.REGISTRY))
        version = registry.list()[-1]
        record_gates(Coordinator.of(ws), "critics", version.version, "rerun", version.decision)
        per_class = version.metrics["per_class"]
        worst = min(per_class, key=lambda label: per_class[label]["f1"])
        Incidents(ws).open(
            "critics",
            severity="SEV3",
            kind="quality",
            version=version.version,
            summary=f"v{version.version}: {worst} f1 {per_class[worst]['f1']:.2f}",
            evidence={"per_class": per_class},
            actions=["rejected"],
        )
    return path, labels


def test_I6_no_label_name_or_per_class_metric_in_clear_after_a_round(
    after_a_round: tuple[Path, dict[str, set[str]]],
) -> None:
    path, labels = after_a_round
    with Workspace.open(path, actor="test") as ws:
        # what is sealed is there, and the API gives it back decrypted
        for tenant, names in labels.items():
            for version in AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).list():
                assert set(version.metrics["per_class"]) <= names
                assert set(version.lineage["label_counts"]) <= names
                assert version.decision["gates"]
        runs = list_gate_runs(ws, "critics")
        assert [r["trigger"] for r in runs] == ["round", "rerun"]
        assert runs[0]["verdicts"] == runs[1]["verdicts"]
        [incident] = Incidents(ws).list(tenant="critics")
        assert set(incident["evidence"]["per_class"]) <= labels["critics"]
        evaluated = ws.audit.events(tenant="critics", action="adapter.evaluated")
        assert evaluated and "accuracy" in evaluated[-1].details
    files = _files(path)
    assert {"silolearn.db", "head.json"} <= {p.name for p, _ in files}
    assert any(p.parent.name == "blobs" or p.parent.parent.name == "blobs" for p, _ in files)
    all_labels = set().union(*labels.values())
    assert _in_clear(files, _needles(all_labels)) == []
    # the same scan finds them where they are in clear: the API's own output
    exported = json.dumps(incident, ensure_ascii=False).encode()
    assert _in_clear([(Path("export.json"), exported)], _needles(labels["critics"]))


def test_I6_verify_metadata_scans_the_workspace_and_fails_on_a_label_in_clear(
    after_a_round: tuple[Path, dict[str, set[str]]], tmp_path: Path
) -> None:
    path, labels = after_a_round
    clean = run_cli("verify", "metadata", "--workspace", str(path), "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert report["ok"] and report["hits"] == []
    assert report["labels"] == {t: len(n) for t, n in sorted(labels.items())}
    assert "silolearn.db" in report["files"]

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    leaked = sorted(labels["newsroom"])[0]
    conn = sqlite3.connect(copy / DB_FILE)
    conn.execute(
        "UPDATE tenants SET status_reason = ? WHERE name = 'newsroom'", (f"too few {leaked}",)
    )
    conn.commit()
    conn.close()
    dirty = run_cli("verify", "metadata", "--workspace", str(copy), "--json")
    assert dirty.returncode == 8, dirty.stderr
    hits = json.loads(dirty.stdout)["hits"]
    assert {(h["needle"], h["tenant"]) for h in hits} == {(leaked, "newsroom")}
    assert "Traceback" not in dirty.stderr


def _metadata(ws: Workspace, tenant: str, label: str) -> int:
    """A version with per-class metrics and label counts, a gate run and an incident."""
    registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.TRAINING))
    candidate = registry.register_candidate(
        b"weights of " + tenant.encode(),
        kind="head",
        lineage={"label_counts": {label: 40}, "new_label_counts": {label: 40}},
        metrics={"accuracy": 0.8, "per_class": {label: {"f1": 0.8, "support": 10}}},
    )
    decision = {
        "passed": True,
        "severity": None,
        "gates": [{"gate": "quality", "passed": True, "reason": f"{label} holds"}],
    }
    AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).promote(
        candidate.version, decision=decision
    )
    record_gates(Coordinator.of(ws), tenant, candidate.version, "round", decision)
    incident = Incidents(ws).open(
        tenant,
        severity="SEV3",
        kind="quality",
        version=candidate.version,
        summary=f"{label} dropped",
        evidence={"per_class": {label: 0.1}},
        actions=["rejected"],
    )
    return int(incident["id"])


def test_I6_I7_a_shredded_tenants_metadata_stays_sealed_and_the_chain_verifies(
    tmp_path: Path,
) -> None:
    ws = Workspace.init(tmp_path / "ws", actor="test")
    ws.create_tenant("critics")
    ws.create_tenant("newsroom")
    gone = ws.tenants.get("critics")
    incident = _metadata(ws, "critics", "rotten")
    kept = _metadata(ws, "newsroom", "politics")
    # a rotation re-seals the rows under the new metadata key and keeps the old one for
    # the audit events sealed under it
    events_before = [e.to_dict() for e in ws.audit.events(tenant="critics")]
    ws.tenants.rotate_data_key("critics")
    assert [e.to_dict() for e in ws.audit.events(tenant="critics")][: len(events_before)] == (
        events_before
    )
    assert {r[0] for r in ws.conn.execute("SELECT dek_version FROM adapter_versions")} == {1, 2}
    assert Incidents(ws).get(incident)["summary"] == "rotten dropped"
    ws.audit.checkpoint()
    backup = tmp_path / "before-shred.db"
    ws.conn.execute("VACUUM INTO ?", (str(backup),))

    ws.tenants.shred("critics")

    # the Python API: typed errors for the sealed part, the clear columns still listed
    with pytest.raises(MetadataSealed, match="shredded"):
        Incidents(ws).get(incident)
    listed = {i["id"]: i for i in Incidents(ws).list()}
    assert listed[incident]["sealed"] is True and listed[incident]["summary"] is None
    assert listed[incident]["severity"] == "SEV3" and listed[incident]["tenant"] == "critics"
    assert listed[kept]["sealed"] is False and listed[kept]["summary"] == "politics dropped"
    sealed = [e for e in ws.audit.events(tenant="critics") if e.sealed]
    assert {"adapter.candidate", "gates.verdict", "incident.open"} <= {e.action for e in sealed}
    assert all(set(e.details) <= {"row_digests"} for e in sealed)
    # the copy of the database taken before the shred holds the wrapped metadata keys,
    # which nothing unwraps any more
    old = sqlite3.connect(backup)
    wrapped = old.execute(
        "SELECT version, kek_id, wrapped FROM data_keys WHERE tenant_id = ? AND purpose = ?",
        (gone.id, METADATA_KEY),
    ).fetchall()
    old.close()
    assert sorted(v for v, _, _ in wrapped) == [1, 2]
    for version, kek_id, key in wrapped:
        with pytest.raises(KeyDestroyed):
            ws.keys.unwrap(gone.id, version, WrappedKey(kek_id, key), purpose=METADATA_KEY)
    ws.close()

    # the command line: the chain verifies without keys, sealed details say so
    verify = run_cli("audit", "verify", "--workspace", str(ws.path), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["findings"] == []
    shown = run_cli("audit", "show", "--tenant", "critics", "--workspace", str(ws.path), "--json")
    assert shown.returncode == 0, shown.stderr
    by_action = {e["action"]: e for e in json.loads(shown.stdout)}
    assert by_action["incident.open"]["sealed"] is True
    assert by_action["tenant.shred"]["sealed"] is False
    human = run_cli("audit", "show", "--tenant", "critics", "--workspace", str(ws.path))
    assert human.returncode == 0 and "sealed" in human.stdout
    show = run_cli("incidents", "show", str(incident), "--workspace", str(ws.path))
    assert show.returncode == 9
    assert "MetadataSealed" in show.stderr and "Traceback" not in show.stderr
    listing = run_cli("incidents", "list", "--workspace", str(ws.path), "--json")
    assert listing.returncode == 0, listing.stderr
    assert [i["sealed"] for i in json.loads(listing.stdout)] == [True, False]
    other = run_cli("incidents", "show", str(kept), "--workspace", str(ws.path), "--json")
    assert json.loads(other.stdout)["evidence"] == {"per_class": {"politics": 0.1}}


def _old_rows(db_file: Path, tenant_id: str, gone_id: str) -> dict[str, Any]:
    """Rows and events as a workspace at schema 0010 wrote them: metadata in clear."""
    lineage = {"label_counts": {"sport": 30, "tech": 12}, "records_digest": "d" * 64}
    metrics = {"accuracy": 0.7, "per_class": {"sport": {"f1": 0.9}, "tech": {"f1": 0.4}}}
    decision = {"passed": True, "gates": [{"gate": "quality", "reason": "tech f1 0.4"}]}
    sweep = {"sweep_id": "0123456789abcdef", "results": [{"epsilon": 1.0, "accuracy": 0.6}]}
    conn = sqlite3.connect(db_file, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(
        "INSERT INTO adapter_versions (tenant_id, version, status, kind, sha256, parent, "
        "lineage, metrics, decision, created_at, updated_at, run_id) VALUES "
        "(?, 1, 'active', 'head', ?, NULL, ?, ?, ?, '2026-01-01', '2026-01-01', "
        "'abcdef0123456789')",
        (tenant_id, "a" * 64, json.dumps(lineage), json.dumps(metrics), json.dumps(decision)),
    )
    append_event(
        conn, actor="test", action="adapter.promote", tenant="newsroom", obj="v1", details={}
    )
    conn.execute(
        "INSERT INTO gate_runs (tenant_id, version, trigger, passed, severity, verdicts, "
        "created_at) VALUES (?, 1, 'round', 1, NULL, ?, '2026-01-01')",
        (tenant_id, json.dumps(decision["gates"])),
    )
    for owner, name, summary in (
        (tenant_id, "newsroom", "tech f1 dropped"),
        (gone_id, "archive", "an incident of a tenant shredded before the upgrade"),
    ):
        conn.execute(
            "INSERT INTO incidents (tenant_id, tenant, severity, kind, version, summary, "
            "evidence, actions, created_at) VALUES (?, ?, 'SEV3', 'quality', 1, ?, ?, ?, "
            "'2026-01-01')",
            (owner, name, summary, json.dumps({"tech": 0.4}), json.dumps(["rejected"])),
        )
    conn.execute(
        "INSERT INTO privacy_sweeps (sweep_id, tenant_id, scope, results, created_at) "
        "VALUES (?, ?, 'tenant', ?, '2026-01-01')",
        (sweep["sweep_id"], tenant_id, json.dumps(sweep)),
    )
    append_event(
        conn,
        actor="test",
        action="ingest.label_warning",
        tenant="newsroom",
        obj=None,
        details={"label": "sport", "kind": "no_training"},
    )
    conn.execute("COMMIT")
    conn.close()
    return {"lineage": lineage, "metrics": metrics, "decision": decision, "sweep": sweep}


def test_I6_a_workspace_at_schema_0010_has_its_metadata_sealed_when_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old"
    with Workspace.init(path, actor="test") as ws:
        info = ws.create_tenant("newsroom")
    rewind_to_0010(path / DB_FILE)
    old = _old_rows(path / DB_FILE, info.id, "t-0000000000000000")

    with Workspace.open(path, actor="test") as ws:
        assert schema_revision(ws.conn) == SCHEMA_HEAD
        [sealing] = ws.audit.events(action="keys.migrate_metadata_key")
        assert sealing.tenant == "newsroom" and sealing.seq <= ws.audit.signed_seq()
        assert {k: sealing.details[k] for k in ("adapter_versions", "gate_runs")} == {
            "adapter_versions": 1,
            "gate_runs": 1,
        }
        assert sealing.details["incidents"] == sealing.details["privacy_sweeps"] == 1
        # the same objects as before, from sealed rows
        [version] = AdapterRegistry(ws.scope("newsroom", purpose=Purpose.REGISTRY)).list()
        assert (version.lineage, version.metrics, version.decision) == (
            old["lineage"],
            old["metrics"],
            old["decision"],
        )
        assert list_gate_runs(ws, "newsroom")[0]["verdicts"] == old["decision"]["gates"]
        assert list_sweeps(ws, "newsroom") == [old["sweep"]]
        incidents = Incidents(ws).list()
        assert [i["summary"] for i in incidents] == [
            "tech f1 dropped",
            "an incident of a tenant shredded before the upgrade",
        ]
        # every row of the tenant is sealed under its metadata key; the incident of a tenant
        # shredded before the upgrade has no key to be sealed under and stays as it was
        for table in ("adapter_versions", "gate_runs", "incidents", "privacy_sweeps"):
            versions = ws.conn.execute(
                f"SELECT tenant_id, dek_version, typeof(sealed) FROM {table}"
            ).fetchall()
            for owner, dek_version, stored in versions:
                expected = (1, "blob") if owner == info.id else (0, "text")
                assert (dek_version, stored) == expected, table
        # the chain covers what was appended before: that event keeps its details in clear
        [warning] = ws.audit.events(action="ingest.label_warning")
        assert warning.details == {"label": "sport", "kind": "no_training"}
        assert not warning.sealed
        # what the tenant's events record from now on is sealed
        ws.scope("newsroom").blobs.put("notes", b"x")
        assert "sealed_details" in json.loads(
            ws.conn.execute("SELECT details FROM audit_events ORDER BY seq DESC").fetchone()[0]
        )

    verify = run_cli("audit", "verify", "--workspace", str(path), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["rows"]["adapter_versions"] == 1
    # no file holds the sealed rows' contents in clear: the per-class keys and the texts
    # that only they held (the old audit event names "sport" in clear, by design)
    files = _files(path)
    assert _in_clear(files, {b'"per_class"': "per_class", b'"label_counts"': "label_counts"}) == []
    assert _in_clear(files, {b"tech f1 dropped": "incident summary"}) == []
    assert _in_clear(files, {b"tech f1 0.4": "gate reason"}) == []
    # opening again seals nothing more
    with Workspace.open(path, actor="test") as ws:
        assert len(ws.audit.events(action="keys.migrate_metadata_key")) == 1
