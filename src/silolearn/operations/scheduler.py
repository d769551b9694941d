"""The scheduler: ``Scheduler.tick(now)`` decides which tenants' rounds are due and starts
them; in the service a ``clock.Periodic`` ticks it every ``[schedule] tick_seconds``.

A tick, for every tenant in name order: settle the outcome of its round in progress (a
rejected or failed candidate sets a back-off, a promotion resets it, a canary counts as its
rollout ends), ask the triggers of its policy (``operations.triggers``) whether a round is
due, and if one is, start it unless

- the tenant is quarantined (or being shredded): nothing runs for it;
- it has a round in progress (started by the scheduler or by anyone over the API);
- its canary rollout runs: a new candidate would supersede the canary before its live
  feedback decides it (the triggers wait for the rollout to end);
- it is backing off: after ``n`` unsuccessful rounds in a row no triggered round for
  ``min(backoff_minutes x 2^(n-1), backoff_max_hours)`` after the last one ended;
- the service runs ``[schedule] max_concurrent_rounds`` rounds already.

Every decision is a row of ``schedule_decisions`` (its evidence sealed under the tenant's
metadata key) and an audit event: ``schedule.trigger`` with the trigger and its evidence,
``schedule.skip`` with the reason (recorded once while the same reason holds the same
trigger back), ``schedule.finished`` with the round's outcome and any back-off. Decisions
depend only on the workspace and ``now``: with a manual clock, tests and the demo play days
of operation in seconds. Rounds start through a ``RoundLauncher``: the service's runs them
as its background jobs (the path of ``POST /v1/tenants/{t}/rounds``), ``InlineLauncher``
runs each in the tick, one after another (the tick counts them against the limit on
concurrent rounds as if they ran at once).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from silolearn.clock import SYSTEM, Clock, SystemClock
from silolearn.config import SchedulePolicy
from silolearn.errors import MetadataSealed, NotFoundError, SiloError
from silolearn.operations.policy import SchedulePolicies
from silolearn.operations.times import parse, stamp
from silolearn.operations.triggers import Firing, TenantView, firings, next_fire
from silolearn.pipeline import Trainer
from silolearn.rounds.run import process_alive
from silolearn.storage.metadata import SCHEDULE_DECISIONS
from silolearn.tenancy.tenants import TenantInfo
from silolearn.workspace import Workspace

_log = logging.getLogger("silolearn.scheduler")

UNSUCCESSFUL = frozenset({"rejected", "failed"})
"""Outcomes that back a tenant off; ``interrupted`` (the service stopped) neither backs
off nor resets, nor does ``canary`` (a candidate that passed every gate, now serving a
share of the traffic), any other (a promotion) resets."""
UNDECIDED = frozenset({"interrupted", "canary"})

SkipReason = Literal["quarantined", "running", "rollout", "backoff", "capacity"]

_COLUMNS = (
    "id, tenant_id, at, decision, trigger, reason, sealed, dek_version, records_seq, job, "
    "outcome, version, finished_at, backoff_until"
)


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision about one tenant: a round started (``trigger``) or held back (``skip``)."""

    id: str
    tenant: str
    at: str
    decision: str
    trigger: str
    reason: str | None
    evidence: dict[str, Any] | None
    """``None`` once the tenant is shredded (sealed for good)."""
    records_seq: int | None = None
    job: str | None = None
    outcome: str | None = None
    version: int | None = None
    finished_at: str | None = None
    backoff_until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "at": self.at,
            "decision": self.decision,
            "trigger": self.trigger,
            "reason": self.reason,
            "evidence": self.evidence,
            "job": self.job,
            "outcome": self.outcome,
            "version": self.version,
            "finished_at": self.finished_at,
            "backoff_until": self.backoff_until,
        }


@dataclass(frozen=True, slots=True)
class Launched:
    """A round started: its job, and its outcome once known (at once for an inline one)."""

    job: str | None
    outcome: str | None = None
    version: int | None = None


class RoundLauncher(Protocol):
    """How the scheduler starts rounds and learns how they ended."""

    def launch(self, ws: Workspace, tenant: str, decision: str) -> Launched: ...

    def outcome(self, ws: Workspace, job: str) -> Launched | None:
        """The round's outcome, ``None`` while it runs."""
        ...

    def in_progress(self, ws: Workspace) -> set[str]:
        """Tenants (by id) with a round in progress, whoever started it."""
        ...


class InlineLauncher:
    """Runs the round in the tick, on the scheduler's workspace (``pipeline.Trainer``), on
    ``clock`` (give it the scheduler's, so what the round decides by time, a canary's
    steps, keeps the same time)."""

    def __init__(self, clock: Clock = SYSTEM) -> None:
        self._clock = clock

    def launch(self, ws: Workspace, tenant: str, decision: str) -> Launched:
        try:
            result = Trainer(ws, clock=self._clock).train(tenant)
        except SiloError as exc:
            _log.warning("scheduled round of %s failed: %s", tenant, exc.code)
            return Launched(job=None, outcome="failed")
        return Launched(job=None, outcome=result.status, version=result.version)

    def outcome(self, ws: Workspace, job: str) -> Launched | None:
        return Launched(job=job, outcome="interrupted")

    def in_progress(self, ws: Workspace) -> set[str]:
        return set()


def backoff(policy: SchedulePolicy, failures: int) -> timedelta:
    """How long a tenant waits after ``failures`` unsuccessful rounds in a row (0: none)."""
    if failures <= 0:
        return timedelta(0)
    minutes = policy.backoff_minutes * 2.0 ** min(failures - 1, 64)
    return min(timedelta(minutes=minutes), timedelta(hours=policy.backoff_max_hours))


class Decisions:
    """The scheduler's decisions about the tenants of one opened workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def _decision(self, tenant: str, row: tuple[Any, ...]) -> Decision:
        values = dict(zip([c.strip() for c in _COLUMNS.split(",")], row, strict=True))
        try:
            fields = self.ws.metadata.open(
                SCHEDULE_DECISIONS,
                values["tenant_id"],
                values["id"],
                values["sealed"],
                values["dek_version"],
            )
            evidence: dict[str, Any] | None = dict(fields["evidence"])
        except MetadataSealed:
            evidence = None
        return Decision(
            id=values["id"],
            tenant=tenant,
            at=values["at"],
            decision=values["decision"],
            trigger=values["trigger"],
            reason=values["reason"],
            evidence=evidence,
            records_seq=values["records_seq"],
            job=values["job"],
            outcome=values["outcome"],
            version=values["version"],
            finished_at=values["finished_at"],
            backoff_until=values["backoff_until"],
        )

    def list(self, tenant: str, *, limit: int = 50, decision: str | None = None) -> list[Decision]:
        """The tenant's decisions, newest first."""
        info = self.ws.tenants.get(tenant)
        where = "" if decision is None else " AND decision = ?"
        rows = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM schedule_decisions WHERE tenant_id = ?{where} "
            "ORDER BY at DESC, rowid DESC LIMIT ?",
            (info.id, *(() if decision is None else (decision,)), limit),
        ).fetchall()
        return [self._decision(info.name, row) for row in rows]

    def get(self, tenant: str, decision_id: str) -> Decision:
        info = self.ws.tenants.get(tenant)
        row = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM schedule_decisions WHERE tenant_id = ? AND id = ?",
            (info.id, decision_id),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no decision {decision_id!r} of tenant {tenant!r}")
        return self._decision(info.name, row)

    def latest(self, tenant: str, *, decision: str | None = None) -> Decision | None:
        found = self.list(tenant, limit=1, decision=decision)
        return found[0] if found else None

    def last_round(self, tenant: str) -> Decision | None:
        """The newest round the scheduler started that was not interrupted (one the service
        stopped before it ran, or that never started, trained nothing: the triggers it
        answered are still due)."""
        info = self.ws.tenants.get(tenant)
        row = self.ws.conn.execute(
            f"SELECT {_COLUMNS} FROM schedule_decisions WHERE tenant_id = ? AND decision = "
            "'trigger' AND (outcome IS NULL OR outcome != 'interrupted') "
            "ORDER BY at DESC, rowid DESC LIMIT 1",
            (info.id,),
        ).fetchone()
        return None if row is None else self._decision(info.name, row)

    def failures(self, tenant: str) -> int:
        """Unsuccessful rounds in a row, the newest last (interrupted ones skipped). A
        round whose outcome was a canary counts as its rollout ended: once promoted it
        resets the count, once rolled back it is one more unsuccessful round (for the
        next back-off: it sets none itself), while it runs it is skipped."""
        info = self.ws.tenants.get(tenant)
        rows = self.ws.conn.execute(
            "SELECT d.outcome, v.status FROM schedule_decisions d LEFT JOIN adapter_versions v "
            "ON v.tenant_id = d.tenant_id AND v.version = d.version "
            "WHERE d.tenant_id = ? AND d.decision = 'trigger' AND d.outcome IS NOT NULL "
            "AND d.outcome != 'interrupted' ORDER BY d.at DESC, d.rowid DESC",
            (info.id,),
        ).fetchall()
        count = 0
        for outcome, status in rows:
            settled = status if outcome == "canary" else outcome
            if settled == "canary":
                continue
            if settled not in UNSUCCESSFUL:
                break
            count += 1
        return count

    def record(
        self,
        info: TenantInfo,
        now: datetime,
        firing: Firing,
        *,
        reason: SkipReason | None,
        records_seq: int | None = None,
    ) -> Decision:
        decision_id = "s-" + secrets.token_hex(8)
        kind = "trigger" if reason is None else "skip"
        with self.ws.audit.write() as conn:
            sealed, dek_version = self.ws.metadata.seal(
                conn, SCHEDULE_DECISIONS, info.id, decision_id, {"evidence": firing.evidence}
            )
            conn.execute(
                f"INSERT INTO schedule_decisions ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
                (
                    decision_id,
                    info.id,
                    stamp(now),
                    kind,
                    firing.trigger,
                    reason,
                    sealed,
                    dek_version,
                    records_seq,
                ),
            )
            self.ws.audit.append_in(
                conn,
                f"schedule.{kind}",
                tenant=info.name,
                obj=decision_id,
                details={
                    "trigger": firing.trigger,
                    "reason": reason,
                    "at": stamp(now),
                    "evidence": firing.evidence,
                },
            )
        return self.get(info.name, decision_id)

    def started(self, decision_id: str, job: str | None) -> None:
        with self.ws.audit.write() as conn:
            conn.execute("UPDATE schedule_decisions SET job = ? WHERE id = ?", (job, decision_id))

    def finish(
        self, info: TenantInfo, decision_id: str, launched: Launched, now: datetime
    ) -> Decision:
        """Record how a started round ended, and the back-off it sets."""
        policy = SchedulePolicies(self.ws).get(info.name).policy
        outcome = launched.outcome or "failed"
        failures = self.failures(info.name)  # before this round's outcome is known
        if outcome in UNSUCCESSFUL:
            failures += 1
        elif outcome not in UNDECIDED:
            failures = 0
        wait = backoff(policy, failures) if outcome in UNSUCCESSFUL else timedelta(0)
        until = stamp(now + wait) if wait > timedelta(0) else None
        with self.ws.audit.write() as conn:
            conn.execute(
                "UPDATE schedule_decisions SET job = COALESCE(?, job), outcome = ?, version = ?, "
                "finished_at = ?, backoff_until = ? WHERE id = ?",
                (launched.job, outcome, launched.version, stamp(now), until, decision_id),
            )
            self.ws.audit.append_in(
                conn,
                "schedule.finished",
                tenant=info.name,
                obj=decision_id,
                details={
                    "outcome": outcome,
                    "version": launched.version,
                    "failures": failures,
                    "backoff_until": until,
                },
            )
        return self.get(info.name, decision_id)


class Scheduler:
    """Decides and starts due rounds; one per workspace, ticked by one thread at a time."""

    def __init__(
        self,
        open_workspace: Callable[[], Workspace],
        launcher: RoundLauncher,
        clock: Clock,
    ) -> None:
        self._open = open_workspace
        self.launcher = launcher
        self.clock = clock
        self._wall = isinstance(clock, SystemClock)
        self._lock = threading.Lock()

    def tick(self, now: datetime | None = None) -> list[Decision]:
        """Settle finished rounds, then decide for every tenant; the new decisions."""
        with self._lock, self._open() as ws:
            now = self.clock.now() if now is None else now
            made: list[Decision] = []
            busy = self.launcher.in_progress(ws) | rounds_running(ws)
            budget = ws.settings.schedule.max_concurrent_rounds - len(busy)
            for info in sorted(ws.tenants.list(), key=lambda t: t.name):
                try:
                    decision = self._decide(ws, info, now, busy, budget)
                except Exception:
                    # one tenant's trouble (its policy, its records) holds back no other
                    _log.exception("scheduler: no decision for tenant %s", info.id)
                    continue
                if decision is not None:
                    made.append(decision)
                    if decision.decision == "trigger":
                        budget -= 1
            return made

    def _decide(
        self, ws: Workspace, info: TenantInfo, now: datetime, busy: set[str], budget: int
    ) -> Decision | None:
        decisions = Decisions(ws)
        running = self._settle(ws, decisions, info, now)
        policy = SchedulePolicies(ws).get(info.name)
        if policy.manual_only:
            return None
        reason = self._held_back(decisions, info, now, running or info.id in busy, budget)
        view = tenant_view(
            ws, decisions, info, policy.policy, policy.updated_at, reason, wall=self._wall
        )
        fired = firings(ws, view, now)
        if not fired:
            return None
        firing = Firing(
            fired[0].trigger,
            {**fired[0].evidence, "also": [f.trigger for f in fired[1:]]},
        )
        if reason is not None:
            latest = decisions.latest(info.name)
            same = ("skip", reason, firing.trigger)
            if latest is not None and (latest.decision, latest.reason, latest.trigger) == same:
                return None  # held back for the same reason already: recorded once
            return decisions.record(info, now, firing, reason=reason)
        mark = self._records_now(ws, info)
        decision = decisions.record(info, now, firing, reason=None, records_seq=mark)
        try:
            launched = self.launcher.launch(ws, info.name, decision.id)
        except SiloError as exc:
            # not the tenant's doing (a round started over the API meanwhile, the service
            # stopping): the round did not start, nothing backs off
            _log.warning("could not start a round of %s: %s", info.name, exc.code)
            stopped = Launched(job=None, outcome="interrupted")
            return decisions.finish(info, decision.id, stopped, now)
        decisions.started(decision.id, launched.job)
        if launched.outcome is not None:
            return decisions.finish(info, decision.id, launched, now)
        return decisions.get(info.name, decision.id)

    def _settle(self, ws: Workspace, decisions: Decisions, info: TenantInfo, now: datetime) -> bool:
        """Record the outcome of the tenant's round if it ended; whether one still runs."""
        last = decisions.latest(info.name, decision="trigger")
        if last is None or last.outcome is not None:
            return False
        launched = (
            Launched(job=None, outcome="interrupted")
            if last.job is None
            else self.launcher.outcome(ws, last.job)
        )
        if launched is None:
            return True
        decisions.finish(info, last.id, launched, now)
        return False

    @staticmethod
    def _held_back(
        decisions: Decisions, info: TenantInfo, now: datetime, running: bool, budget: int
    ) -> SkipReason | None:
        if info.status != "active":
            return "quarantined"
        if running:
            return "running"
        if rollout_running(decisions.ws, info):
            return "rollout"
        last = decisions.latest(info.name, decision="trigger")
        if last is not None and last.backoff_until is not None and now < parse(last.backoff_until):
            return "backoff"
        if budget <= 0:
            return "capacity"
        return None

    @staticmethod
    def _records_now(ws: Workspace, info: TenantInfo) -> int:
        (seq,) = ws.conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM train_records WHERE tenant_id = ?", (info.id,)
        ).fetchone()
        return int(seq)


def rollout_running(ws: Workspace, info: TenantInfo) -> bool:
    """Whether a canary rollout of the tenant runs (``registry.rollout``)."""
    row = ws.conn.execute(
        "SELECT 1 FROM rollouts WHERE tenant_id = ? AND state = 'running' LIMIT 1", (info.id,)
    ).fetchone()
    return row is not None


def rounds_running(ws: Workspace) -> set[str]:
    """Tenants (by id) with a training run in progress in another live process
    (``silolearn train``, a ``schedule tick`` beside the service): one round per tenant
    holds across processes. This process's rounds are its launcher's to count."""
    rows = ws.conn.execute(
        "SELECT tenant_id, host_pid FROM training_runs WHERE status = 'running'"
    ).fetchall()
    return {
        str(tenant_id)
        for tenant_id, pid in rows
        if int(pid) != os.getpid() and process_alive(int(pid))
    }


def tenant_view(
    ws: Workspace,
    decisions: Decisions,
    info: TenantInfo,
    policy: SchedulePolicy,
    policy_set_at: str | None,
    reason: SkipReason | None,
    *,
    wall: bool = True,
) -> TenantView:
    """What the triggers see of the tenant now (``operations.triggers.TenantView``);
    ``wall``: the scheduler's clock is the system's."""
    last = decisions.last_round(info.name)
    run = ws.conn.execute(
        "SELECT MAX(started_at) FROM training_runs WHERE tenant_id = ?", (info.id,)
    ).fetchone()[0]
    # the scheduler's own moments are on its clock; the tenant's creation and rounds started
    # by hand are stamped by the system's, comparable only when the scheduler runs on it
    # (the service, ``schedule tick``): on another clock its decisions alone say when
    ticked = [m for m in (policy_set_at, None if last is None else last.at) if m is not None]
    stamped = [m for m in (info.created_at, run) if m is not None]
    moments: list[str] = [*ticked, *stamped] if wall or not ticked else ticked
    since = max(parse(m) for m in moments)
    marks = [0 if last is None or last.records_seq is None else last.records_seq]
    if run is not None:
        # a round started by hand saw the records stored before it began
        (seen,) = ws.conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM train_records WHERE tenant_id = ? "
            "AND created_at <= ?",
            (info.id, run),
        ).fetchone()
        marks.append(int(seen))
    return TenantView(
        name=info.name,
        tenant_id=info.id,
        policy=policy,
        since=since,
        records_mark=max(marks),
        readable=reason != "quarantined",
    )


def schedule_view(
    ws: Workspace, tenant: str, now: datetime, *, limit: int = 20, wall: bool = True
) -> dict[str, Any]:
    """What ``silolearn schedule show``, the API and the dashboard show of a tenant: its
    policy, its state (round in progress, back-off, next scheduled fire time) and its
    newest decisions with their evidence (``wall``: ``now`` is the system clock's)."""
    info = ws.tenants.get(tenant)
    policy = SchedulePolicies(ws).get(tenant)
    decisions = Decisions(ws)
    last = decisions.latest(info.name, decision="trigger")
    view = tenant_view(ws, decisions, info, policy.policy, policy.updated_at, None, wall=wall)
    backing_off = (
        last is not None and last.backoff_until is not None and now < parse(last.backoff_until)
    )
    scheduled = "schedule" in policy.policy.triggers
    return {
        **policy.to_dict(),
        "status": info.status,
        "state": {
            "since": stamp(view.since),
            "records_mark": view.records_mark,
            "running": last is not None and last.outcome is None,
            "failures": decisions.failures(info.name),
            "backoff_until": last.backoff_until if backing_off and last is not None else None,
            "next_scheduled": stamp(next_fire(policy.policy, view.since)) if scheduled else None,
        },
        "decisions": [d.to_dict() for d in decisions.list(info.name, limit=limit)],
    }
