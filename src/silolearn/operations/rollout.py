"""Canary rollouts driven by live feedback: ``decide`` is the whole decision, a pure function
of a rollout's state, the tenant's policy, the time and the incidents opened since it
started; ``RolloutDriver`` reads that state, asks ``decide`` and carries the decision out
through the registry (``registry.rollout``), on each feedback and on a periodic tick, by
the one clock.

The decision, in order: an incident opened on the tenant since the rollout started rolls
it back (but for a monitor's SEV3 finding about the stable version, the reason a candidate
is rolling out, and a drift monitor's about either version: the traffic moved, which both
versions serve alike; the canary is judged against stable below); so does the canary's
predicted labels drifting abnormally from stable's (a chi-square test at looks of doubling
counts, ``validation.sequential``) while its accuracy so far is not above stable's; so does
the
canary being shown worse than stable (the upper end of the always-valid confidence
sequence of the accuracy difference below 0). After enough feedback and time in a step,
the canary steps up to the next share while it is not shown worse and its accuracy so far
is within the tolerance of stable's; the last step, to a
share of 1.0, makes it the active version, and only once it is shown not worse than stable
by more than the promotion tolerance (the lower end at least minus the tolerance): a small
share exposes few requests, all of them only after the evidence. Anything else holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from silolearn.clock import SYSTEM, Clock
from silolearn.config import RolloutPolicy
from silolearn.errors import ConflictError
from silolearn.registry.rollout import Rollout, RolloutStore, Tally
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.validation.sequential import difference_bounds, label_drift, look_due

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

Action = Literal["hold", "step", "promote", "rollback"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a rollout, why, on what evidence, and the drift test's looks so far."""

    action: Action
    reason: str
    evidence: dict[str, Any]
    drift_looks: int


def decide(
    rollout: Rollout,
    policy: RolloutPolicy,
    *,
    tolerance: float,
    now: datetime,
    incidents: Sequence[dict[str, Any]] = (),
) -> Decision:
    """The decision on one running rollout (see the module)."""
    canary, stable = rollout.canary_tally, rollout.stable_tally
    lower, upper = difference_bounds(
        (canary.correct, canary.feedback), (stable.correct, stable.feedback), policy.alpha
    )
    evidence: dict[str, Any] = {
        "share": rollout.share,
        "canary": {"version": rollout.version, **_arm(canary.correct, canary.feedback)},
        "stable": {"version": rollout.stable, **_arm(stable.correct, stable.feedback)},
        "difference": [round(float(lower), 4), round(float(upper), 4)],
        "alpha": policy.alpha,
        "tolerance": tolerance,
        "step_feedback": rollout.step_feedback,
    }
    looks = rollout.drift_looks
    if incidents:
        evidence["incidents"] = [dict(i) for i in incidents]
        return Decision("rollback", "an incident opened on the tenant", evidence, looks)
    if look_due(canary.served, looks, policy.drift_min_predictions):
        look = label_drift(
            canary.labels,
            stable.labels,
            look=looks,
            alpha=policy.drift_alpha,
            min_distance=policy.drift_min_distance,
        )
        looks += 1
        evidence["drift"] = look.to_dict()
        # predicted labels unlike stable's are a warning while live feedback does not speak
        # for the canary; once its accuracy so far is above stable's, they are the change
        # that made it better (a candidate retrained after a shift predicts what stable
        # cannot): rules 3 and 4 judge it, and this only ever spares a rollback
        if look.abnormal and not _ahead(canary.correct, canary.feedback, stable):
            return Decision(
                "rollback", "the canary's predicted labels drifted from stable's", evidence, looks
            )
    if upper < 0.0:
        return Decision("rollback", "the canary is worse than stable", evidence, looks)
    if rollout.step_feedback < policy.min_feedback:
        return Decision("hold", "not enough feedback in this step", evidence, looks)
    started = datetime.fromisoformat(rollout.step_started_at.replace("Z", "+00:00"))
    if now - started < timedelta(minutes=policy.min_step_minutes):
        return Decision("hold", "the step has not lasted long enough", evidence, looks)
    following = rollout.steps[rollout.step + 1]
    if following < 1.0:
        # early on the sequence is wide: more traffic goes to a canary only while its
        # accuracy so far is also within the tolerance of stable's
        if (
            canary.correct * stable.feedback
            < (stable.correct - tolerance * stable.feedback) * canary.feedback
        ):
            return Decision(
                "hold", "below stable by more than the tolerance so far", evidence, looks
            )
        evidence["next_share"] = following
        return Decision("step", "not shown worse than stable", evidence, looks)
    if lower < -tolerance:
        return Decision("hold", "not yet shown within the tolerance", evidence, looks)
    return Decision("promote", "not worse than stable within the tolerance", evidence, looks)


def _ahead(correct: int, feedback: int, stable: Tally) -> bool:
    """Whether the canary's accuracy so far is above stable's (both with feedback)."""
    if feedback == 0 or stable.feedback == 0:
        return False
    return correct * stable.feedback > stable.correct * feedback


def _arm(correct: int, feedback: int) -> dict[str, Any]:
    accuracy = None if feedback == 0 else round(correct / feedback, 4)
    return {"feedback": feedback, "correct": correct, "accuracy": accuracy}


class RolloutDriver:
    """Drives the running rollouts of one opened workspace by ``clock``."""

    def __init__(self, ws: Workspace, *, clock: Clock = SYSTEM) -> None:
        self.ws = ws
        self.clock = clock
        self._scopes: dict[str, tuple[str, int, TenantScope]] = {}

    def _store(self, tenant: str) -> RolloutStore:
        """The tenant's rollouts through its registry scope, opened (and audited) once per
        driver, and again only after the tenant was recreated or its data key rotated."""
        info = self.ws.tenants.get(tenant)
        cached = self._scopes.get(tenant)
        if cached is None or cached[:2] != (info.id, info.dek_version):
            scope = self.ws.scope(tenant, purpose=Purpose.REGISTRY)
            cached = (info.id, info.dek_version, scope)
            self._scopes[tenant] = cached
        return RolloutStore(cached[2])

    def feedback(self, tenant: str, version: int, *, correct: bool) -> Decision | None:
        """Feedback on a prediction ``version`` served: counted when the tenant's running
        rollout involves that version, which is then checked at once."""
        store = self._store(tenant)
        if store.serving() is None:
            return None
        with store.scope.write() as conn:
            store.record_feedback_in(conn, version, correct)
        return self.check(tenant)

    def check(self, tenant: str) -> Decision | None:
        """Decide on the tenant's running rollout, if any, and carry the decision out."""
        store = self._store(tenant)
        current = store.running()
        if current is None:
            return None
        info = self.ws.tenants.get(tenant)
        policy = self.ws.settings.rollout.for_tenant(tenant)
        now = self.clock.now()
        decision = decide(
            current,
            policy,
            tolerance=self.ws.settings.training.promotion_tolerance,
            now=now,
            incidents=self._incidents_since(info.id, current.incident_mark, current.stable),
        )
        evidence = {**decision.evidence, "decision": decision.reason}
        try:
            if decision.action == "rollback":
                store.roll_back(current, now=now, reason=decision.reason, evidence=evidence)
            elif decision.action == "promote":
                store.promote(current, now=now, evidence=evidence)
                # the new active version's probe predictions: what later rounds of other
                # tenants are checked against (I4), as a round's own promotion seals them
                from silolearn.validation.divergence import snapshot

                snapshot(self.ws, tenant)
            elif decision.action == "step":
                store.step(current, now=now, evidence=evidence, drift_looks=decision.drift_looks)
            elif decision.drift_looks != current.drift_looks:
                store.note(current, evidence=evidence, drift_looks=decision.drift_looks)
        except ConflictError:
            return None  # another thread acted on it first; the next check sees what it did
        return decision

    def tick(self) -> dict[str, Decision]:
        """Check every tenant with a running rollout (the service's periodic tick)."""
        rows = self.ws.conn.execute(
            "SELECT t.name FROM rollouts r JOIN tenants t ON t.id = r.tenant_id "
            "WHERE r.state = 'running' ORDER BY t.name"
        ).fetchall()
        decisions = {}
        for (tenant,) in rows:
            decision = self.check(str(tenant))
            if decision is not None:
                decisions[str(tenant)] = decision
        return decisions

    def _incidents_since(self, tenant_id: str, mark: int, stable: int) -> list[dict[str, Any]]:
        """Incidents opened on the tenant since the rollout started, but for a monitor's
        SEV3 finding about the stable version (its drift or its drop in accuracy: that is
        why a candidate is rolling out, and rolling back would answer it with stable) and a
        drift monitor's SEV3 finding about the canary (``drift.*``: the traffic moved away
        from its training window, as it did from stable's; the canary is judged against
        stable on the same traffic, by its predicted labels and its live feedback; the same
        for a slice's drift, ``slice.drift``)."""
        rows = self.ws.conn.execute(
            "SELECT id, severity, kind FROM incidents "
            "WHERE tenant_id = ? AND status = 'open' AND id > ? "
            "AND NOT (severity = 'SEV3' AND version IS NOT NULL "
            "AND (version = ? OR kind LIKE 'drift.%' OR kind = 'slice.drift')) ORDER BY id",
            (tenant_id, mark, stable),
        ).fetchall()
        return [{"id": int(r[0]), "severity": str(r[1]), "kind": str(r[2])} for r in rows]
