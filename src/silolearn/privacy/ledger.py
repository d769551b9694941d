"""The privacy ledger (invariant I9): per-scope budgets and the events that spend them.

A scope is what a privacy guarantee is about: each tenant's adapter (``tenant:<id>``), the
shared model (``shared``) and each federation's model across sites (``federation:<name>``,
a client-level guarantee: ``silolearn.federation.privacy``). Every differentially private
run *charges* its planned mechanism events before it starts (a federated round: its worst
accepted case is prechecked before any site trains, its achieved noise charged after it),
inside one write transaction that also recomputes the scope's cumulative epsilon over
**all** its events with the configured accountant: if the projected total would exceed the
budget the run is refused (``PrivacyBudgetExceeded``, audited as ``privacy.refused``) and
nothing is charged; otherwise the events are appended (audited as ``privacy.charge``) and
the run may start. A run executes exactly the steps it charged, so it never overshoots
mid-way; a run that fails after charging stays charged (it may have touched the data),
which errs on the safe side.

Events are append-only (database triggers refuse UPDATE and DELETE) and each one records
the cumulative epsilon after it, so the ledger can be re-derived and checked at any time.
Triggers stop a mistake, not someone holding the database file: every event and every scope
policy is also bound to the audit chain (``audit.rows``: the audit event of the transaction
that writes a row records its digest), so ``silolearn audit verify`` reports a ledger row
deleted, edited or inserted behind silolearn's back.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from silolearn.audit.log import AuditLog, utcnow
from silolearn.audit.rows import ROW_DIGESTS, BoundTable, row_digests
from silolearn.config import Settings
from silolearn.errors import InvalidInput, PrivacyBudgetExceeded
from silolearn.privacy.accountant import MechanismEvent, epsilon

SHARED = "shared"
FEDERATION_PREFIX = "federation:"
MODES = ("off", "dp")
SLACK = 1e-9
"""Rounding slack when comparing a projected epsilon with the budget."""


EVENTS_TABLE = BoundTable(
    "privacy_events",
    key=("id",),
    content=(
        "scope",
        "run_id",
        "purpose",
        "sampling_rate",
        "noise_multiplier",
        "steps",
        "delta",
        "epsilon_after",
        "created_at",
    ),
)
SCOPES_TABLE = BoundTable(
    "privacy_scopes",
    key=("scope",),
    content=("epsilon_budget", "delta", "mode", "run_epsilon", "updated_at"),
)
BOUND_TABLES = (EVENTS_TABLE, SCOPES_TABLE)
"""The ledger's tables whose rows the audit chain covers."""


def tenant_scope(tenant_id: str) -> str:
    return f"tenant:{tenant_id}"


def federation_scope(name: str) -> str:
    """The scope of a federation's model: one site's whole contribution is the unit."""
    if not name or "/" in name or not name.isprintable():
        raise InvalidInput(f"federation name {name!r} is not a valid name")
    return f"{FEDERATION_PREFIX}{name}"


def always_private(scope: str) -> bool:
    """Scopes whose model is shared beyond one tenant: trained only under DP (I9)."""
    return scope == SHARED or scope.startswith(FEDERATION_PREFIX)


def _subject(scope: str, tenant: str | None) -> str:
    if scope == SHARED:
        return "the shared model"
    if scope.startswith(FEDERATION_PREFIX):
        return f"federation {scope.removeprefix(FEDERATION_PREFIX)!r}"
    return f"tenant {tenant!r}"


@dataclass(frozen=True, slots=True)
class ScopePolicy:
    scope: str
    epsilon_budget: float
    delta: float
    mode: str
    run_epsilon: float
    explicit: bool
    """Whether the budget was set for this scope (not a default from the settings)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "epsilon_budget": self.epsilon_budget,
            "delta": self.delta,
            "mode": self.mode,
            "run_epsilon": self.run_epsilon,
            "explicit": self.explicit,
        }


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    id: int
    run_id: str
    purpose: str
    event: MechanismEvent
    delta: float
    epsilon_after: float
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "purpose": self.purpose,
            **self.event.to_dict(),
            "delta": self.delta,
            "epsilon_after": self.epsilon_after,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Charge:
    scope: str
    run_id: str
    epsilon_before: float
    epsilon_after: float
    epsilon_budget: float
    delta: float
    accountant: str
    events: tuple[MechanismEvent, ...]

    @property
    def run_epsilon(self) -> float:
        return self.epsilon_after - self.epsilon_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "run_id": self.run_id,
            "epsilon_before": self.epsilon_before,
            "epsilon_after": self.epsilon_after,
            "epsilon_budget": self.epsilon_budget,
            "epsilon_remaining": max(self.epsilon_budget - self.epsilon_after, 0.0),
            "delta": self.delta,
            "accountant": self.accountant,
            "events": [e.to_dict() for e in self.events],
        }


class PrivacyLedger:
    """The ledger of one workspace; every scope's budget and events are in its database."""

    def __init__(self, conn: sqlite3.Connection, audit: AuditLog, settings: Settings) -> None:
        self._conn = conn
        self._audit = audit
        self._settings = settings
        self.accountant = settings.privacy.accountant

    # -- policy ----------------------------------------------------------------------------

    def _defaults(self, scope: str) -> tuple[float, float, float]:
        if always_private(scope):
            s = self._settings.shared
            return s.epsilon_budget, s.delta, s.run_epsilon
        p = self._settings.privacy
        return p.epsilon_budget, p.delta, p.run_epsilon

    def policy(self, scope: str, conn: sqlite3.Connection | None = None) -> ScopePolicy:
        row = (
            (conn or self._conn)
            .execute(
                "SELECT epsilon_budget, delta, mode, run_epsilon FROM privacy_scopes "
                "WHERE scope = ?",
                (scope,),
            )
            .fetchone()
        )
        budget, delta, run_epsilon = self._defaults(scope)
        if row is None:
            return ScopePolicy(scope, budget, delta, "off", run_epsilon, False)
        return ScopePolicy(
            scope,
            float(row[0]),
            float(row[1]),
            str(row[2]),
            run_epsilon if row[3] is None else float(row[3]),
            True,
        )

    def set_policy(
        self,
        scope: str,
        *,
        tenant: str | None,
        epsilon_budget: float | None = None,
        delta: float | None = None,
        mode: str | None = None,
        run_epsilon: float | None = None,
    ) -> ScopePolicy:
        """Set a scope's budget, delta, DP mode or per-run epsilon (what is not given stays).

        Lowering a budget below what is already spent is allowed: every later run of the
        scope is then refused. Changing delta re-expresses the spent epsilon at the new delta.
        """
        for name, value in (("epsilon", epsilon_budget), ("run epsilon", run_epsilon)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise InvalidInput(f"{name} must be a positive number, not {value}")
        if delta is not None and not 0.0 < delta < 1.0:
            raise InvalidInput(f"delta must be in (0, 1), not {delta}")
        if mode is not None and mode not in MODES:
            raise InvalidInput(f"unknown privacy mode {mode!r}: one of {', '.join(MODES)}")
        if always_private(scope) and mode == "off":
            raise InvalidInput(
                f"{_subject(scope, tenant)} is always trained with differential privacy"
            )
        with self._audit.write() as conn:
            current = self.policy(scope, conn)
            new = ScopePolicy(
                scope,
                current.epsilon_budget if epsilon_budget is None else float(epsilon_budget),
                current.delta if delta is None else float(delta),
                current.mode if mode is None else mode,
                current.run_epsilon if run_epsilon is None else float(run_epsilon),
                True,
            )
            conn.execute(
                "INSERT INTO privacy_scopes (scope, epsilon_budget, delta, mode, run_epsilon, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                "epsilon_budget = excluded.epsilon_budget, delta = excluded.delta, "
                "mode = excluded.mode, run_epsilon = excluded.run_epsilon, "
                "updated_at = excluded.updated_at",
                (scope, new.epsilon_budget, new.delta, new.mode, new.run_epsilon, utcnow()),
            )
            self._audit.append_in(
                conn,
                "privacy.policy",
                tenant=tenant,
                obj=scope,
                details={
                    "new": new.to_dict(),
                    "previous": current.to_dict(),
                    ROW_DIGESTS: row_digests(conn, SCOPES_TABLE, [(scope,)]),
                },
            )
        return new

    # -- events ----------------------------------------------------------------------------

    def events(self, scope: str, conn: sqlite3.Connection | None = None) -> list[LedgerEvent]:
        rows = (
            (conn or self._conn)
            .execute(
                "SELECT id, run_id, purpose, sampling_rate, noise_multiplier, steps, delta, "
                "epsilon_after, created_at FROM privacy_events WHERE scope = ? ORDER BY id",
                (scope,),
            )
            .fetchall()
        )
        return [
            LedgerEvent(
                int(r[0]),
                str(r[1]),
                str(r[2]),
                MechanismEvent(float(r[3]), float(r[4]), int(r[5])),
                float(r[6]),
                float(r[7]),
                str(r[8]),
            )
            for r in rows
        ]

    def spent(self, scope: str, *, accountant: str | None = None) -> float:
        policy = self.policy(scope)
        return epsilon(
            [e.event for e in self.events(scope)], policy.delta, accountant or self.accountant
        )

    def summary(self, scope: str) -> dict[str, Any]:
        policy = self.policy(scope)
        events = self.events(scope)
        mechanisms = [e.event for e in events]
        spent = epsilon(mechanisms, policy.delta, self.accountant)
        upper = epsilon(mechanisms, policy.delta, "rdp") if mechanisms else 0.0
        return {
            **policy.to_dict(),
            "accountant": self.accountant,
            "epsilon_spent": spent,
            "epsilon_spent_rdp_bound": upper,
            "epsilon_remaining": max(policy.epsilon_budget - spent, 0.0),
            "runs": len({e.run_id for e in events}),
            "steps": sum(e.event.steps for e in events),
            "events": [e.to_dict() for e in events],
        }

    def precheck(
        self, scope: str, *, tenant: str | None, run_id: str, purpose: str, at_least: float
    ) -> None:
        """Refuse at once a run that costs ``at_least`` epsilon on its own: however the
        composition falls, the total is at least that (and at least what is spent), so a run
        the budget cannot pay is refused before any worker starts."""
        policy = self.policy(scope)
        spent = self.spent(scope)
        projected = max(spent, at_least)
        if projected <= policy.epsilon_budget + SLACK:
            return
        refused = {
            "run_id": run_id,
            "purpose": purpose,
            "asked": at_least,
            "spent": spent,
            "projected": projected,
            "budget": policy.epsilon_budget,
            "remaining": max(policy.epsilon_budget - spent, 0.0),
            "delta": policy.delta,
            "accountant": self.accountant,
            "planned": [],
        }
        self._refuse(scope, tenant, purpose, refused, policy, bound="at least ")

    def precheck_events(
        self,
        scope: str,
        *,
        tenant: str | None,
        run_id: str,
        purpose: str,
        planned: Sequence[MechanismEvent],
    ) -> float:
        """Refuse, before anything runs, events that would take the scope past its budget,
        composed exactly with every event already charged; nothing is written unless refused
        (``privacy.refused``). Returns the projected epsilon. For a run charged only after it
        ran (a federated round, whose achieved noise is known only then), with its worst
        accepted case as ``planned``."""
        if not planned:
            raise InvalidInput("a DP run charges at least one mechanism event")
        policy = self.policy(scope)
        before = [e.event for e in self.events(scope)]
        spent = epsilon(before, policy.delta, self.accountant)
        projected = epsilon([*before, *planned], policy.delta, self.accountant)
        if projected > policy.epsilon_budget + SLACK:
            refused = _refusal(run_id, purpose, spent, projected, policy, self.accountant, planned)
            self._refuse(scope, tenant, purpose, refused, policy)
        return projected

    def _refuse(
        self,
        scope: str,
        tenant: str | None,
        purpose: str,
        refused: dict[str, Any],
        policy: ScopePolicy,
        *,
        bound: str = "",
    ) -> None:
        self._audit.append("privacy.refused", tenant=tenant, obj=scope, details=refused)
        who = _subject(scope, tenant)
        raise PrivacyBudgetExceeded(
            f"refused before starting: this {purpose} run of {who} would cost "
            f"epsilon {refused['asked']:.3f} and take the total to {bound}"
            f"{refused['projected']:.3f}, past the budget of {policy.epsilon_budget:g} "
            f"(delta {policy.delta:g}); spent {refused['spent']:.3f}, remaining "
            f"{refused['remaining']:.3f}",
            **refused,
        )

    def charge(
        self,
        scope: str,
        *,
        tenant: str | None,
        run_id: str,
        purpose: str,
        planned: Sequence[MechanismEvent],
    ) -> Charge:
        """Charge a run's planned events, or refuse it before it starts.

        One write transaction: the cumulative epsilon of every event already in the scope plus
        the planned ones is computed; over the budget, the run is refused and audited and
        nothing is written; otherwise the events are appended and audited."""
        if not planned:
            raise InvalidInput("a DP run charges at least one mechanism event")
        refused: dict[str, Any] | None = None
        with self._audit.write() as conn:
            policy = self.policy(scope, conn)
            history = self.events(scope, conn)
            before = [e.event for e in history]
            if history and history[-1].delta == policy.delta:
                eps_before = history[-1].epsilon_after  # recorded by the last charge
            else:
                eps_before = epsilon(before, policy.delta, self.accountant)
            eps_after = epsilon([*before, *planned], policy.delta, self.accountant)
            if eps_after > policy.epsilon_budget + SLACK:
                refused = _refusal(
                    run_id, purpose, eps_before, eps_after, policy, self.accountant, planned
                )
            else:
                now = utcnow()
                ids: list[tuple[int]] = []
                # the events of one run are charged together: each records the total after it
                for event in planned:
                    cursor = conn.execute(
                        "INSERT INTO privacy_events (scope, run_id, purpose, sampling_rate, "
                        "noise_multiplier, steps, delta, epsilon_after, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            scope,
                            run_id,
                            purpose,
                            event.sampling_rate,
                            event.noise_multiplier,
                            event.steps,
                            policy.delta,
                            eps_after,
                            now,
                        ),
                    )
                    ids.append((int(cursor.lastrowid or 0),))
                self._audit.append_in(
                    conn,
                    "privacy.charge",
                    tenant=tenant,
                    obj=scope,
                    details={
                        "run_id": run_id,
                        "purpose": purpose,
                        "epsilon_before": eps_before,
                        "epsilon_after": eps_after,
                        "budget": policy.epsilon_budget,
                        "delta": policy.delta,
                        "accountant": self.accountant,
                        "planned": [e.to_dict() for e in planned],
                        ROW_DIGESTS: row_digests(conn, EVENTS_TABLE, ids),
                    },
                )
        if refused is not None:
            self._refuse(scope, tenant, purpose, refused, policy)
        return Charge(
            scope,
            run_id,
            eps_before,
            eps_after,
            policy.epsilon_budget,
            policy.delta,
            self.accountant,
            tuple(planned),
        )


def _refusal(
    run_id: str,
    purpose: str,
    spent: float,
    projected: float,
    policy: ScopePolicy,
    accountant: str,
    planned: Sequence[MechanismEvent],
) -> dict[str, Any]:
    """The details of a refused run, as audited and carried by ``PrivacyBudgetExceeded``."""
    return {
        "run_id": run_id,
        "purpose": purpose,
        "asked": projected - spent,
        "spent": spent,
        "projected": projected,
        "budget": policy.epsilon_budget,
        "remaining": max(policy.epsilon_budget - spent, 0.0),
        "delta": policy.delta,
        "accountant": accountant,
        "planned": [e.to_dict() for e in planned],
    }
