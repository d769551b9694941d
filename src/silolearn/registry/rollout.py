"""Canary rollouts of one tenant: which version serves what share of its requests, the
tallies the sequential test reads, and the transitions (start, step, promote, roll back),
each one transaction with its audit event (I7) that moves the version rows too (I8).

A rollout's canary and stable versions, step, share and state stay in clear, so the
service reads them on every predict without a key; its tallies (feedback and predicted
labels per version) and evidence name the tenant's labels and are sealed under its
metadata key. Which requests the canary answers is decided by ``assign``: a keyed hash
(HMAC under the tenant's key, never a plain hash) of the request key the client sent,
sticky across requests and steps, or a fresh random draw per request without one.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from silolearn.errors import ConflictError, InvalidInput
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.metadata import ROLLOUTS
from silolearn.storage.scope import TenantScope

ARMS = ("canary", "stable")
_SYSTEM_RANDOM = secrets.SystemRandom()
_COLUMNS = (
    "id, version, stable, state, step, share, started_at, step_started_at, updated_at, "
    "ended_at, sealed, dek_version"
)


def assign(scope: TenantScope, canary: int, share: float, request_key: str | None) -> bool:
    """Whether the canary answers this request: the request key's keyed hash, read as a
    number in [0, 1), falls below the share (so a key answered by the canary at 1% still
    is at 5%), or without a key a random draw does."""
    if request_key is None:
        return _SYSTEM_RANDOM.random() < share
    digest = scope.keyed_hash("canary", f"v{canary}\x00{request_key}")
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Tally:
    """What one version of a rollout served and what feedback said about it."""

    served: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    feedback: int = 0
    correct: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "labels": dict(sorted(self.labels.items())),
            "feedback": self.feedback,
            "correct": self.correct,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        return cls(
            served=int(data["served"]),
            labels={str(k): int(v) for k, v in data["labels"].items()},
            feedback=int(data["feedback"]),
            correct=int(data["correct"]),
        )


@dataclass(frozen=True, slots=True)
class Rollout:
    """One rollout as stored: the clear columns and the sealed policy, tallies, evidence."""

    id: int
    tenant: str
    version: int
    stable: int
    state: str
    step: int
    share: float
    started_at: str
    step_started_at: str
    updated_at: str
    ended_at: str | None
    steps: list[float]
    incident_mark: int
    canary_tally: Tally
    stable_tally: Tally
    step_feedback: int
    drift_looks: int
    evidence: dict[str, Any]

    def tally(self, arm: str) -> Tally:
        return self.canary_tally if arm == "canary" else self.stable_tally

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "version": self.version,
            "stable": self.stable,
            "state": self.state,
            "step": self.step,
            "share": self.share,
            "steps": self.steps,
            "started_at": self.started_at,
            "step_started_at": self.step_started_at,
            "updated_at": self.updated_at,
            "ended_at": self.ended_at,
            "tallies": {arm: self.tally(arm).to_dict() for arm in ARMS},
            "step_feedback": self.step_feedback,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class Serving:
    """What the predict path needs of a running rollout, read without any key."""

    version: int
    stable: int
    share: float


class RolloutStore:
    """The rollouts of the tenant whose scope it is given."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope
        self._registry = AdapterRegistry(scope)

    @property
    def scope(self) -> TenantScope:
        return self._scope

    # -- reading ----------------------------------------------------------------------------

    def serving(self) -> Serving | None:
        row = self._scope.connection.execute(
            "SELECT version, stable, share FROM rollouts WHERE tenant_id = ? AND state = 'running'",
            (self._scope.tenant.id,),
        ).fetchone()
        return None if row is None else Serving(int(row[0]), int(row[1]), float(row[2]))

    def running(self, conn: sqlite3.Connection | None = None) -> Rollout | None:
        row = (
            (conn or self._scope.connection)
            .execute(
                f"SELECT {_COLUMNS} FROM rollouts WHERE tenant_id = ? AND state = 'running'",
                (self._scope.tenant.id,),
            )
            .fetchone()
        )
        return None if row is None else self._rollout(row)

    def history(self) -> list[Rollout]:
        """Every rollout of the tenant, oldest first."""
        rows = self._scope.connection.execute(
            f"SELECT {_COLUMNS} FROM rollouts WHERE tenant_id = ? ORDER BY id",
            (self._scope.tenant.id,),
        ).fetchall()
        return [self._rollout(r) for r in rows]

    def _rollout(self, row: tuple[Any, ...]) -> Rollout:
        (rid, version, stable, state, step, share, started, step_started, updated, ended) = row[:10]
        fields = self._scope.open_metadata(ROLLOUTS, int(rid), row[10], int(row[11]))
        policy, tallies = fields["policy"], fields["tallies"]
        return Rollout(
            id=int(rid),
            tenant=self._scope.tenant.name,
            version=int(version),
            stable=int(stable),
            state=str(state),
            step=int(step),
            share=float(share),
            started_at=str(started),
            step_started_at=str(step_started),
            updated_at=str(updated),
            ended_at=None if ended is None else str(ended),
            steps=[float(s) for s in policy["steps"]],
            incident_mark=int(policy["incident_mark"]),
            canary_tally=Tally.from_dict(tallies["canary"]),
            stable_tally=Tally.from_dict(tallies["stable"]),
            step_feedback=int(tallies["step_feedback"]),
            drift_looks=int(tallies["drift_looks"]),
            evidence=fields["evidence"],
        )

    # -- tallies ----------------------------------------------------------------------------

    def record_served_in(self, conn: sqlite3.Connection, version: int, labels: list[str]) -> None:
        """Count what ``version`` answered, inside the caller's write transaction (the one
        that keeps and audits the prediction); nothing when no rollout involves it."""
        self._update_tally(conn, version, served=labels)

    def record_feedback_in(self, conn: sqlite3.Connection, version: int, correct: bool) -> None:
        """Count feedback on a prediction of ``version`` (right or wrong)."""
        self._update_tally(conn, version, correct=correct)

    def _update_tally(
        self,
        conn: sqlite3.Connection,
        version: int,
        *,
        served: list[str] | None = None,
        correct: bool | None = None,
    ) -> None:
        current = self.running(conn)
        if current is None or version not in (current.version, current.stable):
            return
        arm = "canary" if version == current.version else "stable"
        tally = current.tally(arm)
        labels = dict(tally.labels)
        for label in served or []:
            labels[label] = labels.get(label, 0) + 1
        new = Tally(
            served=tally.served + len(served or []),
            labels=labels,
            feedback=tally.feedback + (correct is not None),
            correct=tally.correct + bool(correct),
        )
        step_feedback = current.step_feedback + (arm == "canary" and correct is not None)
        tallies = {
            **{a: current.tally(a).to_dict() for a in ARMS},
            arm: new.to_dict(),
            "step_feedback": step_feedback,
            "drift_looks": current.drift_looks,
        }
        self._reseal(conn, current, tallies=tallies)

    def _reseal(
        self,
        conn: sqlite3.Connection,
        current: Rollout,
        *,
        tallies: dict[str, Any] | None = None,
        evidence: dict[str, Any] | None = None,
        clear: dict[str, Any] | None = None,
    ) -> None:
        fields = {
            "policy": {"steps": current.steps, "incident_mark": current.incident_mark},
            "tallies": tallies
            or {
                **{a: current.tally(a).to_dict() for a in ARMS},
                "step_feedback": current.step_feedback,
                "drift_looks": current.drift_looks,
            },
            "evidence": current.evidence if evidence is None else evidence,
        }
        sealed, dek_version = self._scope.seal_metadata(conn, ROLLOUTS, current.id, fields)
        sets = {"sealed": sealed, "dek_version": dek_version, **(clear or {})}
        conn.execute(
            f"UPDATE rollouts SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
            (*sets.values(), current.id),
        )

    # -- transitions ------------------------------------------------------------------------

    def start(
        self,
        version: int,
        *,
        steps: list[float],
        now: datetime,
        decision: dict[str, Any],
    ) -> Rollout:
        """The candidate becomes the canary at the first step's share beside the active
        version (a running canary is superseded); audited ``rollout.start``. Incidents of
        the tenant opened from now on roll it back (``incident_mark``: the newest before)."""
        if len(steps) < 2:
            raise InvalidInput("a canary rollout has at least one step below 1.0")
        scope = self._scope
        stamp = _stamp(now)
        with scope.write() as conn:
            active = conn.execute(
                "SELECT version FROM adapter_versions WHERE tenant_id = ? AND status = 'active'",
                (scope.tenant.id,),
            ).fetchone()
            if active is None:
                raise ConflictError(
                    f"tenant {scope.tenant.name!r} has no active version to run a canary beside",
                    version=version,
                )
            self._registry.move_in(
                conn, version, expect=("candidate",), to="canary", decision=decision
            )
            cursor = conn.execute(
                "INSERT INTO rollouts (tenant_id, version, stable, state, step, share, "
                "started_at, step_started_at, updated_at, sealed, dek_version) "
                "VALUES (?, ?, ?, 'running', 0, ?, ?, ?, ?, x'', 0)",
                (scope.tenant.id, version, int(active[0]), steps[0], stamp, stamp, stamp),
            )
            rid = int(cursor.lastrowid or 0)
            incident_mark = int(
                conn.execute(
                    "SELECT COALESCE(MAX(id), 0) FROM incidents WHERE tenant_id = ?",
                    (scope.tenant.id,),
                ).fetchone()[0]
            )
            fields = {
                "policy": {"steps": steps, "incident_mark": incident_mark},
                "tallies": {
                    **{a: Tally().to_dict() for a in ARMS},
                    "step_feedback": 0,
                    "drift_looks": 0,
                },
                "evidence": {},
            }
            sealed, dek_version = scope.seal_metadata(conn, ROLLOUTS, rid, fields)
            conn.execute(
                "UPDATE rollouts SET sealed = ?, dek_version = ? WHERE id = ?",
                (sealed, dek_version, rid),
            )
            scope.audit_in(
                conn,
                "rollout.start",
                obj=f"v{version}",
                details={"rollout": rid, "stable": int(active[0]), "share": steps[0], "at": stamp},
            )
        started = self.running()
        assert started is not None
        return started

    def note(self, current: Rollout, *, evidence: dict[str, Any], drift_looks: int) -> None:
        """Keep the latest evidence and the drift test's looks of a rollout that holds."""
        with self._scope.write() as conn:
            fresh = self._check_current(conn, current)
            tallies = {
                **{a: fresh.tally(a).to_dict() for a in ARMS},
                "step_feedback": fresh.step_feedback,
                "drift_looks": drift_looks,
            }
            self._reseal(conn, fresh, tallies=tallies, evidence=evidence)

    def step(
        self,
        current: Rollout,
        *,
        now: datetime,
        evidence: dict[str, Any],
        drift_looks: int | None = None,
    ) -> Rollout:
        """The canary takes the next step's share; audited ``rollout.step`` with evidence."""
        share = current.steps[current.step + 1]
        stamp = _stamp(now)
        with self._scope.write() as conn:
            fresh = self._check_current(conn, current)
            tallies = {
                **{a: fresh.tally(a).to_dict() for a in ARMS},
                "step_feedback": 0,
                "drift_looks": fresh.drift_looks if drift_looks is None else drift_looks,
            }
            clear: dict[str, Any] = {"step": current.step + 1, "share": share}
            clear |= {"step_started_at": stamp, "updated_at": stamp}
            self._reseal(conn, fresh, tallies=tallies, evidence=evidence, clear=clear)
            self._scope.audit_in(
                conn,
                "rollout.step",
                obj=f"v{current.version}",
                details={"rollout": current.id, "share": share, "at": stamp, **evidence},
            )
        stepped = self.running()
        assert stepped is not None
        return stepped

    def promote(self, current: Rollout, *, now: datetime, evidence: dict[str, Any]) -> None:
        """The canary becomes the active version (stable retired); ``rollout.promote``."""
        self._end(current, "promoted", now=now, evidence=evidence, to="active")

    def roll_back(
        self, current: Rollout, *, now: datetime, reason: str, evidence: dict[str, Any]
    ) -> None:
        """The canary is rejected, stable serves alone; ``rollout.rollback``."""
        self._end(
            current, "rolled_back", now=now, evidence={"reason": reason, **evidence}, to="rejected"
        )

    def _end(
        self, current: Rollout, state: str, *, now: datetime, evidence: dict[str, Any], to: str
    ) -> None:
        stamp = _stamp(now)
        action = {"promoted": "rollout.promote", "rolled_back": "rollout.rollback"}[state]
        with self._scope.write() as conn:
            fresh = self._check_current(conn, current)
            clear: dict[str, Any] = {"state": state, "ended_at": stamp, "updated_at": stamp}
            if state == "promoted":
                clear["share"] = 1.0
            self._reseal(conn, fresh, evidence=evidence, clear=clear)
            decision = {"reason": action, "rollout": current.id, **evidence}
            self._registry.move_in(
                conn, current.version, expect=("canary",), to=to, decision=decision
            )
            self._scope.audit_in(
                conn,
                action,
                obj=f"v{current.version}",
                details={"rollout": current.id, "at": stamp, "automatic": True, **evidence},
            )

    def _check_current(self, conn: sqlite3.Connection, current: Rollout) -> Rollout:
        """The rollout as it stands in the caller's transaction; refused when it moved
        since ``current`` was read (another thread acted on it)."""
        fresh = self.running(conn)
        if fresh is None or fresh.id != current.id or fresh.step != current.step:
            raise ConflictError(
                f"rollout {current.id} of {self._scope.tenant.name!r} moved since it was read",
                rollout=current.id,
            )
        return fresh


def with_rollouts(scope: TenantScope, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Version rows (``AdapterVersion.to_dict``) with the rollout each took part in: a
    canary's (its latest) in full, the stable version of a running one by its share."""
    rollouts = RolloutStore(scope).history()
    as_canary = {r.version: r for r in rollouts}
    as_stable = {r.stable: r for r in rollouts if r.state == "running"}
    out = []
    for row in rows:
        rollout: dict[str, Any] | None = None
        if row["version"] in as_canary:
            rollout = {"role": "canary", **as_canary[row["version"]].to_dict()}
        elif row["version"] in as_stable:
            running = as_stable[row["version"]]
            rollout = {
                "role": "stable",
                "id": running.id,
                "state": running.state,
                "share": round(1.0 - running.share, 6),
                "canary": running.version,
            }
        out.append({**row, "rollout": rollout})
    return out


def describe(rollout: dict[str, Any] | None) -> str:
    """One line for a table: ``canary 5% (step 2 of 3, vs v1)``, ``stable 95%``, ..."""
    if rollout is None:
        return ""
    if rollout["role"] == "stable":
        return f"stable {rollout['share']:.0%} (canary v{rollout['canary']})"
    if rollout["state"] == "running":
        steps = len(rollout["steps"])
        return (
            f"canary {rollout['share']:.0%} (step {rollout['step'] + 1} of {steps}, "
            f"vs v{rollout['stable']})"
        )
    return f"canary {rollout['state'].replace('_', ' ')} (vs v{rollout['stable']})"
