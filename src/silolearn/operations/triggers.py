"""Triggers: what makes a tenant's round due. Each is a small object with one method,
``fire(ws, view, now)``, answering a ``Firing`` (the trigger and its evidence) or ``None``.

Every trigger looks at what happened since the tenant's last round (``TenantView.since``
and ``records_mark``), so a round that starts resets them all:

- ``schedule``: the cron expression's first fire time after the last round has come;
- ``volume``: at least ``min_new_records`` labelled training records stored since;
- ``performance`` / ``drift``: a monitor confirmed a signal of that family since
  (``monitoring.signals``: performance from feedback or its estimate, drift of embeddings,
  predictions or labels, and their slices).

Example, a schedule on Sundays at 03:00 UTC::

    >>> from datetime import UTC, datetime
    >>> from silolearn.config import SchedulePolicy
    >>> policy = SchedulePolicy(triggers=["schedule"], cron="0 3 * * 0")
    >>> next_fire(policy, datetime(2027, 1, 1, 12, tzinfo=UTC)).isoformat()
    '2027-01-03T03:00:00+00:00'
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from croniter import croniter

from silolearn.config import SchedulePolicy
from silolearn.monitoring.signals import Signals
from silolearn.operations.times import stamp
from silolearn.storage.scope import Purpose

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

SIGNAL_EVIDENCE = 10
"""Most signals a firing names (the newest): their ids lead to the rest."""


@dataclass(frozen=True, slots=True)
class TenantView:
    """What the triggers see of one tenant at one tick."""

    name: str
    tenant_id: str
    policy: SchedulePolicy
    since: datetime
    """The tenant's last round began (or, before any, its policy was set or it was made)."""
    records_mark: int
    """The newest training record the last round could see (its sequence number)."""
    readable: bool = True
    """Whether its records may be read now (not for a quarantined tenant, whose due rounds
    are only reported: the volume trigger then counts records without opening them)."""


@dataclass(frozen=True, slots=True)
class Firing:
    trigger: str
    evidence: dict[str, Any] = field(default_factory=dict)


class Trigger(Protocol):
    kind: str

    def fire(self, ws: Workspace, view: TenantView, now: datetime) -> Firing | None: ...


def next_fire(policy: SchedulePolicy, since: datetime) -> datetime:
    """The cron expression's first fire time strictly after ``since``."""
    if policy.cron is None:
        raise ValueError("the policy has no cron expression")
    moment: datetime = croniter(policy.cron, since.astimezone(UTC)).get_next(datetime)
    return moment.astimezone(UTC)


class ScheduleTrigger:
    kind = "schedule"

    def fire(self, ws: Workspace, view: TenantView, now: datetime) -> Firing | None:
        due = next_fire(view.policy, view.since)
        if now < due:
            return None
        return Firing(
            self.kind, {"cron": view.policy.cron, "fire_at": stamp(due), "since": stamp(view.since)}
        )


class VolumeTrigger:
    """Counts the training records stored after the mark from the database's clear columns
    first; only when there are enough does it open them to count the labelled ones. What it
    opened it remembers (the labelled count up to the newest record seen, per tenant and
    mark), so a tick opens only the records stored since the last one: a tenant with many
    unlabelled records is not decrypted whole every tick. A record deleted after it was
    counted (erasure, retention) stays counted until the next round moves the mark."""

    kind = "volume"

    def __init__(self) -> None:
        self._counted: dict[tuple[str, str], tuple[int, int, int]] = {}
        """(workspace, tenant id) -> (mark, newest seq opened, labelled after the mark)."""
        self._lock = threading.Lock()

    def fire(self, ws: Workspace, view: TenantView, now: datetime) -> Firing | None:
        threshold = view.policy.min_new_records
        stored, newest = ws.conn.execute(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM train_records WHERE tenant_id = ? "
            "AND status = 'active' AND seq > ?",
            (view.tenant_id, view.records_mark),
        ).fetchone()
        if int(stored) < threshold:
            return None
        evidence: dict[str, Any] = {
            "new_records": int(stored),
            "threshold": threshold,
            "after_seq": view.records_mark,
        }
        if view.readable:
            labelled = self._labelled(ws, view, int(newest))
            if labelled < threshold:
                return None
            evidence["new_labelled"] = labelled
        return Firing(self.kind, evidence)

    def _labelled(self, ws: Workspace, view: TenantView, newest: int) -> int:
        """Labelled active records after the mark, opening only those not counted yet."""
        key = (str(ws.path), view.tenant_id)
        with self._lock:
            mark, seen, labelled = self._counted.get(key, (view.records_mark, 0, 0))
        if mark != view.records_mark:
            seen, labelled = 0, 0
        if newest > seen:
            scope = ws.scope(view.name, purpose=Purpose.TRAINING)
            fresh = scope.train.read(after_seq=max(seen, view.records_mark))
            labelled += sum(1 for stored in fresh if stored.record.label is not None)
            seen = max([newest, *(stored.seq for stored in fresh)])
        with self._lock:
            self._counted[key] = (view.records_mark, seen, labelled)
        return labelled


class SignalTrigger:
    """Confirmed monitor signals of one family (``performance`` or ``drift``, their
    estimates and slices included) recorded after the last round."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def _matches(self, signal_kind: str) -> bool:
        family = signal_kind.removeprefix("slice.").split(".")[0]
        return family == self.kind

    def fire(self, ws: Workspace, view: TenantView, now: datetime) -> Firing | None:
        found = [
            signal
            for signal in Signals(ws).since(view.name, view.since, confirmed=True)
            if self._matches(signal.kind) and signal.at <= now
        ]
        if not found:
            return None
        return Firing(
            self.kind,
            {
                "signals": [
                    {
                        "id": s.id,
                        "kind": s.kind,
                        "version": s.version,
                        "at": stamp(s.at),
                        "statistic": s.statistic,
                        "threshold": s.threshold,
                    }
                    for s in found[-SIGNAL_EVIDENCE:]
                ],
                "confirmed": len(found),
            },
        )


TRIGGERS: dict[str, Trigger] = {
    trigger.kind: trigger
    for trigger in (
        ScheduleTrigger(),
        VolumeTrigger(),
        SignalTrigger("performance"),
        SignalTrigger("drift"),
    )
}
"""Every trigger by the name a policy gives it, in the order they are asked."""


def firings(ws: Workspace, view: TenantView, now: datetime) -> list[Firing]:
    """The triggers of the tenant's policy that fire now, in the policy's order."""
    fired = (TRIGGERS[kind].fire(ws, view, now) for kind in view.policy.triggers)
    return [firing for firing in fired if firing is not None]
