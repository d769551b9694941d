"""Monitors' signals: recorded per tenant with their evidence sealed (I6), found again by the
scheduler's query (confirmed, after a moment, oldest first), never another tenant's, kept
across a data-key rotation and deleted with their tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from silolearn import Workspace
from silolearn.clock import ManualClock
from silolearn.errors import InvalidInput, TenantNotFound
from silolearn.monitoring.signals import Signal, Signals
from silolearn.workspace import DB_FILE

START = datetime(2026, 3, 1, 9, tzinfo=UTC)


def _signal(tenant: str, at: datetime, *, confirmed: bool, kind: str = "drift.embedding") -> Signal:
    return Signal(
        tenant=tenant,
        kind=kind,
        version=2,
        at=at,
        statistic=0.031,
        threshold=0.012,
        confirmed=confirmed,
        evidence={"window": 200, "labels": {"sealed-label-xyz": 41}},
    )


def test_signals_found_by_tenant_time_and_confirmation(ws: Workspace) -> None:
    ws.create_tenant("alpha")
    ws.create_tenant("beta")
    clock = ManualClock(START)
    signals = Signals(ws)
    first = signals.record(_signal("alpha", clock.now(), confirmed=False))
    clock.advance(timedelta(hours=1))
    second = signals.record(_signal("alpha", clock.now(), confirmed=True))
    clock.advance(timedelta(hours=1))
    signals.record(_signal("beta", clock.now(), confirmed=True, kind="performance"))
    assert first.id is not None and second.id is not None

    assert [s.id for s in signals.since("alpha", START - timedelta(seconds=1))] == [second.id]
    everything = signals.since("alpha", START - timedelta(seconds=1), confirmed=False)
    assert [s.id for s in everything] == [first.id, second.id]
    # the newest few alone, still oldest first
    assert signals.since("alpha", START - timedelta(seconds=1), confirmed=False, newest=1) == [
        second
    ]
    assert signals.since("alpha", START - timedelta(seconds=1), confirmed=False, newest=5) == (
        everything
    )
    assert signals.since("alpha", second.at) == []  # strictly after
    assert everything[1] == second
    assert [s.kind for s in signals.since("beta", START)] == ["performance"]
    assert signals.since("beta", START, kinds=frozenset({"drift.label"})) == []
    assert signals.latest("alpha", "drift.embedding") == second

    audited = ws.audit.events(action="monitor.signal")
    assert (audited[0].tenant, audited[0].object) == ("alpha", f"signal/{second.id}")
    assert [e.tenant for e in audited] == ["alpha", "beta"]  # only confirmed ones
    assert audited[0].details["evidence"]["window"] == 200
    raw = (ws.path / DB_FILE).read_bytes()
    assert b"sealed-label-xyz" not in raw


def test_signals_refuse_what_is_not_a_signal(ws: Workspace) -> None:
    ws.create_tenant("alpha")
    signals = Signals(ws)
    with pytest.raises(InvalidInput, match="unknown signal kind"):
        signals.record(_signal("alpha", START, confirmed=True, kind="drift.vibes"))
    with pytest.raises(InvalidInput, match="timezone-aware"):
        signals.record(_signal("alpha", datetime(2026, 3, 1), confirmed=True))
    with pytest.raises(InvalidInput, match="finite"):
        bad = _signal("alpha", START, confirmed=True)
        signals.record(Signal(**{**bad.to_dict(), "at": START, "statistic": float("nan")}))
    with pytest.raises(TenantNotFound):
        signals.record(_signal("nobody", START, confirmed=True))


def test_signals_survive_rotation_and_go_with_their_tenant(ws: Workspace) -> None:
    ws.create_tenant("alpha")
    signals = Signals(ws)
    kept = signals.record(_signal("alpha", START, confirmed=True))
    ws.tenants.rotate_data_key("alpha")
    assert signals.since("alpha", START - timedelta(days=1)) == [kept]
    deleted = ws.tenants.shred("alpha")["deleted"]
    assert deleted["signals"] == 1
    assert ws.conn.execute("SELECT COUNT(*) FROM signals").fetchone()[0] == 0
