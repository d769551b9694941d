"""I7: the audit log is hash-chained, signed, and detects every edit, deletion, reordering
and truncation; concurrent writers keep a valid chain."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import run_cli
from silolearn import Workspace
from silolearn.errors import AuditChainBroken

TAMPERS = {
    "edit": "UPDATE audit_events SET details = '{\"records\":999}' WHERE seq = 5",
    "delete": "DELETE FROM audit_events WHERE seq = 5",
    "swap": (
        "UPDATE audit_events SET seq = -1 WHERE seq = 5;"
        "UPDATE audit_events SET seq = 5 WHERE seq = 6;"
        "UPDATE audit_events SET seq = 6 WHERE seq = -1"
    ),
    "swap-whole-rows": (
        # swap every column but seq, so each row keeps its own hash and prev_hash
        "CREATE TEMP TABLE t AS SELECT * FROM audit_events WHERE seq IN (5, 6);"
        "UPDATE audit_events SET ts=(SELECT ts FROM t WHERE seq=6), actor=(SELECT actor FROM t "
        "WHERE seq=6), action=(SELECT action FROM t WHERE seq=6), details=(SELECT details FROM "
        "t WHERE seq=6), prev_hash=(SELECT prev_hash FROM t WHERE seq=6), hash=(SELECT hash "
        "FROM t WHERE seq=6) WHERE seq=5;"
        "UPDATE audit_events SET ts=(SELECT ts FROM t WHERE seq=5), actor=(SELECT actor FROM t "
        "WHERE seq=5), action=(SELECT action FROM t WHERE seq=5), details=(SELECT details FROM "
        "t WHERE seq=5), prev_hash=(SELECT prev_hash FROM t WHERE seq=5), hash=(SELECT hash "
        "FROM t WHERE seq=5) WHERE seq=6"
    ),
    "truncate": "DELETE FROM audit_events WHERE seq > 8",
}
EXPECTED_SEQ = {"edit": 5, "delete": 5, "swap": 5, "swap-whole-rows": 5, "truncate": 9}


def _populated(path: Path) -> None:
    with Workspace.init(path, actor="test") as ws:
        for i in range(12):
            ws.audit.append("test.event", tenant="acme", obj=str(i), details={"i": i})


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_I7_audit_verify_names_the_first_bad_event(tmp_path: Path, tamper: str) -> None:
    original = tmp_path / "ws"
    _populated(original)
    clean = run_cli("audit", "verify", "--workspace", str(original), "--json")
    assert clean.returncode == 0, clean.stderr

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    conn = sqlite3.connect(copy / "silolearn.db")
    conn.executescript(
        "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;"
        + TAMPERS[tamper]
    )
    conn.commit()
    conn.close()

    broken = run_cli("audit", "verify", "--workspace", str(copy))
    assert broken.returncode == 8
    assert f"audit event {EXPECTED_SEQ[tamper]}" in broken.stderr or (
        f"ends at event {EXPECTED_SEQ[tamper] - 1}" in broken.stderr
    ), broken.stderr
    as_json = run_cli("audit", "verify", "--workspace", str(copy), "--json")
    assert as_json.returncode == 8
    assert f'"seq": {EXPECTED_SEQ[tamper]}' in as_json.stdout


def test_I7_audit_table_refuses_update_and_delete(ws: Workspace) -> None:
    ws.audit.append("test.event")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("UPDATE audit_events SET action = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("DELETE FROM audit_events")


def test_I7_forged_checkpoint_signature_is_detected(ws: Workspace) -> None:
    ws.audit.append("test.event")
    ws.audit.checkpoint()
    ws.conn.execute("UPDATE audit_checkpoints SET signature = zeroblob(64)")
    with pytest.raises(AuditChainBroken, match="invalid signature"):
        ws.audit.verify()


def test_I7_head_file_removed_is_detected(ws: Workspace) -> None:
    ws.audit.append("test.event")
    ws.audit.checkpoint()
    ws.audit.head_file.unlink()
    with pytest.raises(AuditChainBroken, match="head file"):
        ws.audit.verify()


def _append_many(path: str, label: str, n: int) -> None:
    ws = Workspace.open(path, actor=label)
    try:
        for i in range(n):
            ws.audit.append("test.concurrent", obj=f"{label}-{i}")
    finally:
        ws.close()


def test_I7_two_processes_appending_concurrently_keep_a_valid_chain(ws_path: Path) -> None:
    Workspace.init(ws_path, actor="test").close()
    before = _count(ws_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(ws_path), label, 1000)) for label in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    with Workspace.open(ws_path) as ws:
        events = ws.audit.events(action="test.concurrent")
        assert len(events) == 2000
        assert {e.object for e in events} == {f"{x}-{i}" for x in "ab" for i in range(1000)}
        report = ws.audit.verify()
    assert report.events == before + 2000 + 0  # checkpoints are not events


def _count(path: Path) -> int:
    with Workspace.open(path) as ws:
        return ws.audit.verify().events


@settings(max_examples=25, deadline=None)
@given(
    details=st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=8),
            st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
            max_size=4,
        ),
        min_size=1,
        max_size=8,
    ),
    victim=st.integers(min_value=0, max_value=7),
)
def test_I7_property_any_single_edit_breaks_the_chain_there(
    tmp_path_factory: pytest.TempPathFactory, details: list[dict[str, object]], victim: int
) -> None:
    path = tmp_path_factory.mktemp("ws") / "ws"
    with Workspace.init(path, actor="prop") as ws:
        first = ws.audit.append("test.prop", details=details[0])
        for d in details[1:]:
            ws.audit.append("test.prop", details=d)
        assert ws.audit.verify().events == first + len(details) - 1
        target = first + victim % len(details)
        ws.conn.executescript("DROP TRIGGER audit_events_no_update")
        ws.conn.execute("UPDATE audit_events SET details = details || ' ' WHERE seq = ?", (target,))
        with pytest.raises(AuditChainBroken) as caught:
            ws.audit.verify()
        assert caught.value.seq == target
