"""The scheduler with the test clock, on real workspaces and real rounds of real data
(issue 17, acceptance 1): a volume trigger and a schedule start rounds when due and not
before; a rejected candidate backs off; a quarantined tenant never trains; two tenants'
schedules never interfere.

The manual clock starts years before the machine's: the rounds' own bookkeeping (training
runs, record arrival, the tenant's creation) is stamped by the system clock, and a
scheduler on another clock goes by its own decisions, never by those stamps."""

from __future__ import annotations

import doctest
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from silolearn import Workspace
from silolearn.clock import ManualClock
from silolearn.datasets import bbc_news, sample
from silolearn.ingest.gateway import Gateway
from silolearn.monitoring.signals import Signal, Signals
from silolearn.operations import triggers
from silolearn.operations.policy import SchedulePolicies
from silolearn.operations.scheduler import (
    Decision,
    Decisions,
    InlineLauncher,
    Launched,
    Scheduler,
    backoff,
    rounds_running,
    schedule_view,
)
from silolearn.operations.times import stamp
from silolearn.operations.triggers import Firing
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose

MONDAY = datetime(2025, 1, 6, tzinfo=UTC)
"""A Monday at midnight, before the machine's clock."""


@pytest.fixture(scope="module", autouse=True)
def _short_articles() -> Iterator[None]:
    """The rounds here train on BBC articles, whose topic shows in their first 64 tokens
    (tests/learning/test_adapters.py): embedded at 64 tokens instead of the default 128 they
    cost the workers half as much, and what the scheduler decides does not depend on it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SILOLEARN_TRAINING__MAX_TOKENS", "64")
        yield


def _scheduler(path: Path, clock: ManualClock) -> Scheduler:
    return Scheduler(lambda: Workspace.open(path, actor="scheduler"), InlineLauncher(clock), clock)


def _tick(scheduler: Scheduler, clock: ManualClock, moment: datetime) -> dict[str, Decision]:
    """Move the clock to ``moment`` and tick: the new decisions by tenant."""
    clock.set(moment)
    return {d.tenant: d for d in scheduler.tick()}


def _runs(path: Path, tenant: str) -> int:
    with Workspace.open(path, actor="test") as ws:
        info = ws.tenants.get(tenant)
        (count,) = ws.conn.execute(
            "SELECT COUNT(*) FROM training_runs WHERE tenant_id = ?", (info.id,)
        ).fetchone()
    return int(count)


def _view(path: Path, tenant: str, now: datetime) -> dict[str, Any]:
    with Workspace.open(path, actor="test") as ws:
        return schedule_view(ws, tenant, now, wall=False)


def _audited(path: Path, action: str, tenant: str) -> list[dict[str, Any]]:
    with Workspace.open(path, actor="test") as ws:
        return [e.to_dict() for e in ws.audit.events(action=action, tenant=tenant)]


def test_volume_and_schedule_start_rounds_when_due_and_not_before_and_never_interfere(
    ws: Workspace,
) -> None:
    path = ws.path
    # each first round's eval window needs the 10 labelled records the quality gate asks
    # for; the gateway routes 10% to eval, keyed by the workspace's random secret: 300
    # records leave fewer than 10 in 3e-6 of runs (200 did in 3.5e-3, 120 at times)
    rows = sample(bbc_news(), 740, seed=11)
    news_rows, weekly_rows = rows[:440], rows[440:]
    clock = ManualClock(MONDAY)
    for tenant in ("news", "weekly"):
        ws.create_tenant(tenant)
    ws.tenant("news").ingest(news_rows[:300])
    ws.tenant("weekly").ingest(weekly_rows)
    policies = SchedulePolicies(ws)
    policies.set("news", {"triggers": ["volume"], "min_new_records": 100}, at=clock.now())
    policies.set("weekly", {"triggers": ["schedule"], "cron": "0 3 * * 1"}, at=clock.now())
    scheduler = _scheduler(path, clock)

    # Monday 00:00: news has ~270 new labelled training records, weekly's first fire time
    # is 03:00
    made = _tick(scheduler, clock, MONDAY)
    assert set(made) == {"news"}
    first = made["news"]
    assert (first.decision, first.trigger, first.outcome) == ("trigger", "volume", "active")
    assert first.evidence is not None and first.evidence["new_labelled"] >= 100
    assert first.evidence["new_labelled"] == first.evidence["new_records"]
    weekly = _view(path, "weekly", clock.now())
    assert weekly["state"]["next_scheduled"] == "2025-01-06T03:00:00.000000Z"
    assert weekly["decisions"] == []

    # nothing new for news, and weekly's time has not come: nothing starts
    assert _tick(scheduler, clock, MONDAY + timedelta(hours=1)) == {}
    with Workspace.open(path, actor="test") as ws2:
        ws2.tenant("news").ingest(news_rows[300:360])  # ~54 training records: too few
    assert _tick(scheduler, clock, MONDAY + timedelta(hours=2, minutes=59, seconds=59)) == {}
    assert _runs(path, "weekly") == 0

    # 03:00: weekly's schedule fires; news's volume does not move
    news_before = _view(path, "news", clock.now())["state"]
    made = _tick(scheduler, clock, MONDAY + timedelta(hours=3))
    assert set(made) == {"weekly"}
    assert (made["weekly"].trigger, made["weekly"].outcome) == ("schedule", "active")
    assert made["weekly"].evidence is not None
    assert made["weekly"].evidence["fire_at"] == "2025-01-06T03:00:00.000000Z"
    news_after = _view(path, "news", clock.now())["state"]
    assert news_after["records_mark"] == news_before["records_mark"]
    assert news_after["since"] == news_before["since"]
    assert _tick(scheduler, clock, MONDAY + timedelta(days=7, hours=2)) == {}

    # a week later: news has enough new records and weekly's next fire time has come at
    # the same tick; one round at a time ([schedule] max_concurrent_rounds = 1)
    with Workspace.open(path, actor="test") as ws2:
        ws2.tenant("news").ingest(news_rows[360:])
    made = _tick(scheduler, clock, MONDAY + timedelta(days=7, hours=3))
    assert (made["news"].decision, made["news"].trigger) == ("trigger", "volume")
    assert made["news"].outcome in ("active", "rejected")
    assert made["news"].evidence is not None
    assert made["news"].evidence["after_seq"] == first.records_seq
    assert (made["weekly"].decision, made["weekly"].reason) == ("skip", "capacity")
    assert _runs(path, "weekly") == 1

    audited = _audited(path, "schedule.trigger", "news")
    assert [e["details"]["trigger"] for e in audited] == ["volume", "volume"]
    assert audited[0]["details"]["evidence"]["new_labelled"] == first.evidence["new_labelled"]
    assert [e["details"]["reason"] for e in _audited(path, "schedule.skip", "weekly")] == [
        "capacity"
    ]


def test_quarantined_tenant_never_trains(ws: Workspace) -> None:
    path = ws.path
    clock = ManualClock(MONDAY)
    ws.create_tenant("held")
    ws.tenant("held").ingest(sample(bbc_news(), 150, seed=5))
    SchedulePolicies(ws).set(
        "held",
        {"triggers": ["volume", "schedule"], "cron": "0 * * * *", "min_new_records": 50},
        at=clock.now(),
    )
    ws.tenant("held").quarantine("an incident under review")
    scheduler = _scheduler(path, clock)

    made = _tick(scheduler, clock, MONDAY + timedelta(hours=1))
    skipped = made["held"]
    assert (skipped.decision, skipped.trigger, skipped.reason) == ("skip", "volume", "quarantined")
    assert skipped.evidence is not None and skipped.evidence["also"] == ["schedule"]
    # the quarantined tenant's records are counted, never opened
    assert "new_labelled" not in skipped.evidence and skipped.evidence["new_records"] >= 50
    for hours in (2, 24, 24 * 7):
        assert _tick(scheduler, clock, MONDAY + timedelta(hours=hours)) == {}
    assert _runs(path, "held") == 0
    with Workspace.open(path, actor="test") as ws2:
        assert [d.decision for d in Decisions(ws2).list("held")] == ["skip"]
    assert len(_audited(path, "schedule.skip", "held")) == 1


def _contradicted(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` articles labelled with the topic after their own: must-pass examples that the
    tenant's own data contradicts, so that no candidate it learns answers them all."""
    topics = sorted({row["label"] for row in rows})
    return [
        {**row, "label": topics[(topics.index(row["label"]) + 1) % len(topics)]} for row in rows[:n]
    ]


def test_rejected_candidate_backs_off(ws: Workspace) -> None:
    """A tenant whose golden suite contradicts its data: every candidate fails the golden
    gate (the records separate well, so a candidate answers the articles' real topics)."""
    path = ws.path
    clock = ManualClock(MONDAY)
    ws.create_tenant("noise")
    # 300 records: the quality gate's 10 eval records are there whatever the keyed routing
    # (fewer in 3e-6 of runs; of 200, 3.5e-3), so golden is the only gate that fails
    rows = sample(bbc_news(), 306, seed=3)
    ws.tenant("noise").ingest(rows[:300])
    golden = Gateway(ws).ingest(
        "noise", _contradicted(rows[300:], 3), strict=True, all_to_eval=True, suite="golden"
    )
    assert golden.eval == 3
    SchedulePolicies(ws).set(
        "noise",
        {
            "triggers": ["schedule"],
            "cron": "*/10 * * * *",
            "backoff_minutes": 30,
            "backoff_max_hours": 6,
        },
        at=clock.now(),
    )
    scheduler = _scheduler(path, clock)

    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=9, seconds=59)) == {}
    first = _tick(scheduler, clock, MONDAY + timedelta(minutes=10))["noise"]
    assert (first.decision, first.outcome) == ("trigger", "rejected")
    with Workspace.open(path, actor="test") as ws2:
        version = AdapterRegistry(ws2.scope("noise", purpose=Purpose.REGISTRY)).get(1)
    assert version.status == "rejected" and version.decision["failed"] == ["golden"]
    assert first.backoff_until == "2025-01-06T00:40:00.000000Z"

    # due every ten minutes, held back until the back-off ends (recorded once)
    held = _tick(scheduler, clock, MONDAY + timedelta(minutes=20))["noise"]
    assert (held.decision, held.reason) == ("skip", "backoff")
    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=30)) == {}
    assert _runs(path, "noise") == 1

    second = _tick(scheduler, clock, MONDAY + timedelta(minutes=40))["noise"]
    assert second.decision == "trigger" and second.outcome in ("rejected", "failed")
    # doubled after the second unsuccessful round in a row
    assert second.backoff_until == "2025-01-06T01:40:00.000000Z"
    held = _tick(scheduler, clock, MONDAY + timedelta(hours=1, minutes=39))["noise"]
    assert held.reason == "backoff"
    view = _view(path, "noise", clock.now())
    assert view["state"]["failures"] == 2
    assert view["state"]["backoff_until"] == "2025-01-06T01:40:00.000000Z"
    finished = _audited(path, "schedule.finished", "noise")
    assert [e["details"]["failures"] for e in finished] == [1, 2]


def test_backoff_doubles_to_its_cap_and_a_promotion_resets_it(ws: Workspace) -> None:
    """The bookkeeping of outcomes on the real tables: rejected, failed, rejected, then a
    promotion; an interrupted round neither backs off nor resets."""
    ws.create_tenant("acme")
    policy = (
        SchedulePolicies(ws)
        .set("acme", {"backoff_minutes": 45, "backoff_max_hours": 2}, at=MONDAY)
        .policy
    )
    assert [backoff(policy, n) for n in range(5)] == [
        timedelta(0),
        timedelta(minutes=45),
        timedelta(minutes=90),
        timedelta(hours=2),
        timedelta(hours=2),
    ]
    decisions = Decisions(ws)
    info = ws.tenants.get("acme")
    now = MONDAY
    expected = [("rejected", 1), ("failed", 2), ("interrupted", 2), ("rejected", 3), ("active", 0)]
    for outcome, failures in expected:
        now += timedelta(hours=3)
        made = decisions.record(info, now, Firing("volume", {"new_records": 1}), reason=None)
        done = decisions.finish(info, made.id, Launched(job=None, outcome=outcome), now)
        assert decisions.failures("acme") == failures
        wait = backoff(policy, failures) if outcome in ("rejected", "failed") else timedelta(0)
        assert done.backoff_until == (None if wait == timedelta(0) else stamp(now + wait))


def test_confirmed_signals_newer_than_the_last_round_trigger(ws: Workspace) -> None:
    """Performance and drift triggers read the monitors' signals (monitoring.signals): only
    confirmed ones of the policy's families, recorded after the tenant's last round. The
    tenant is backing off from an earlier rejected round here, so what fires is recorded
    as a skip and no round runs."""
    ws.create_tenant("watched")
    SchedulePolicies(ws).set("watched", {"triggers": ["drift"], "backoff_minutes": 120}, at=MONDAY)
    info = ws.tenants.get("watched")
    decisions = Decisions(ws)
    made = decisions.record(info, MONDAY, Firing("drift", {}), reason=None)
    decisions.finish(info, made.id, Launched(job=None, outcome="rejected"), MONDAY)
    signals = Signals(ws)

    def signal(minutes: int, kind: str, *, confirmed: bool) -> Signal:
        return signals.record(
            Signal(
                tenant="watched",
                kind=kind,
                version=1,
                at=MONDAY + timedelta(minutes=minutes),
                statistic=0.31,
                threshold=0.12,
                confirmed=confirmed,
                evidence={"window": 100},
            )
        )

    signal(-30, "drift.embedding", confirmed=True)  # before the last round
    signal(5, "drift.prediction", confirmed=False)
    signal(10, "performance", confirmed=True)  # not a trigger of this policy
    clock = ManualClock(MONDAY)
    scheduler = _scheduler(ws.path, clock)
    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=15)) == {}
    drift = signal(20, "slice.drift", confirmed=True)
    held = _tick(scheduler, clock, MONDAY + timedelta(minutes=25))["watched"]
    assert (held.decision, held.trigger, held.reason) == ("skip", "drift", "backoff")
    assert held.evidence is not None and held.evidence["confirmed"] == 1
    assert [s["id"] for s in held.evidence["signals"]] == [drift.id]
    assert held.evidence["signals"][0]["statistic"] == 0.31
    assert _runs(ws.path, "watched") == 0


def test_the_triggers_examples_run() -> None:
    result = doctest.testmod(triggers)
    assert result.attempted > 0 and result.failed == 0


def _train_reads(path: Path, tenant: str) -> list[dict[str, Any]]:
    return [
        e["details"]
        for e in _audited(path, "data.read", tenant)
        if e["object"] == "train_store" and e["details"].get("purpose") == "training"
    ]


def test_volume_counts_labels_opening_only_records_not_counted_yet(ws: Workspace) -> None:
    """Many unlabelled records: the volume trigger opens them once, then on each tick only
    what was stored since; the round starts when enough of them are labelled."""
    path = ws.path
    clock = ManualClock(MONDAY)
    ws.create_tenant("mostly")
    rows = sample(bbc_news(), 160, seed=21)
    ws.tenant("mostly").ingest([{**row, "label": None} for row in rows[:80]])
    SchedulePolicies(ws).set(
        "mostly", {"triggers": ["volume"], "min_new_records": 40}, at=clock.now()
    )
    scheduler = _scheduler(path, clock)

    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=1)) == {}
    assert [r["records"] for r in _train_reads(path, "mostly")] == [80]
    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=2)) == {}
    assert len(_train_reads(path, "mostly")) == 1  # nothing new: nothing opened

    with Workspace.open(path, actor="test") as ws2:
        ws2.tenant("mostly").ingest(rows[80:100])
    assert _tick(scheduler, clock, MONDAY + timedelta(minutes=3)) == {}
    reads = _train_reads(path, "mostly")
    assert len(reads) == 2 and 0 < reads[1]["records"] <= 20 and reads[1]["after_seq"] > 0

    with Workspace.open(path, actor="test") as ws2:
        ws2.tenant("mostly").ingest(rows[100:])
    made = _tick(scheduler, clock, MONDAY + timedelta(minutes=4))["mostly"]
    assert (made.decision, made.trigger) == ("trigger", "volume")
    assert made.evidence is not None and made.evidence["new_labelled"] >= 40
    assert made.evidence["new_records"] >= 80 + made.evidence["new_labelled"]


def test_a_round_in_another_live_process_holds_the_tenant_back(ws: Workspace) -> None:
    """One round per tenant across processes: a training run recorded by another process
    that is still alive (here a real one) holds a due round back as ``running``; once that
    process is gone, it no longer does."""
    ws.create_tenant("busy")
    SchedulePolicies(ws).set("busy", {"triggers": ["schedule"], "cron": "*/10 * * * *"}, at=MONDAY)
    info = ws.tenants.get("busy")
    other = subprocess.Popen(["sleep", "600"])
    try:
        with ws.audit.write() as conn:
            conn.execute(
                "INSERT INTO training_runs (run_id, tenant_id, kind, status, host_pid, seed, "
                "cutoff, started_at) VALUES ('elsewhere', ?, 'round', 'running', ?, 0, '', ?)",
                (info.id, other.pid, stamp(MONDAY)),
            )
        assert rounds_running(ws) == {info.id}
        clock = ManualClock(MONDAY)
        held = _tick(_scheduler(ws.path, clock), clock, MONDAY + timedelta(minutes=10))["busy"]
        assert (held.decision, held.trigger, held.reason) == ("skip", "schedule", "running")
    finally:
        other.kill()
        other.wait()
    assert rounds_running(ws) == set()
    assert _runs(ws.path, "busy") == 1


def test_an_interrupted_round_leaves_its_triggers_due(ws: Workspace) -> None:
    """A round the service stopped before it ran trained nothing: the tenant's last round
    stays the one before it, so what was due is due again after the restart."""
    path = ws.path
    ws.create_tenant("paused")
    ws.tenant("paused").ingest(sample(bbc_news(), 60, seed=8))
    SchedulePolicies(ws).set("paused", {"triggers": ["volume"], "min_new_records": 20}, at=MONDAY)
    info = ws.tenants.get("paused")
    decisions = Decisions(ws)
    done = decisions.record(info, MONDAY, Firing("volume", {}), reason=None, records_seq=5)
    decisions.finish(info, done.id, Launched(job=None, outcome="active", version=1), MONDAY)
    later = MONDAY + timedelta(hours=1)
    stopped = decisions.record(info, later, Firing("volume", {}), reason=None, records_seq=50)
    decisions.finish(info, stopped.id, Launched(job="j-1", outcome="interrupted"), later)

    state = _view(path, "paused", later + timedelta(minutes=1))["state"]
    assert (state["since"], state["records_mark"]) == (stamp(MONDAY), 5)
    clock = ManualClock(later)
    again = _tick(_scheduler(path, clock), clock, later + timedelta(minutes=1))["paused"]
    assert (again.decision, again.trigger, again.evidence["after_seq"]) == ("trigger", "volume", 5)
