"""The privacy accountant and ledger (invariant I9) on a real workspace: the ledger's epsilon
is the one an independent ``dp-accounting`` computation gives, a run over the budget is
refused before anything is written, noise calibration is tight, and the ledger's events
cannot be rewritten."""

from __future__ import annotations

import math
import sqlite3
import warnings
from collections.abc import Sequence
from typing import Any

import pytest

from silolearn import Workspace
from silolearn.errors import InvalidInput, PrivacyBudgetExceeded
from silolearn.privacy.accountant import MechanismEvent, calibrate_noise, epsilon
from silolearn.privacy.ledger import PrivacyLedger, tenant_scope

DELTA = 1e-5


def _independent_pld(events: Sequence[MechanismEvent], delta: float) -> float:
    """Each event composed on its own, as dp-accounting's documentation does it: no merging
    of equal events, the library's default discretisation."""
    from dp_accounting import dp_event, pld

    accountant = pld.PLDAccountant()
    for e in events:
        sampled = dp_event.PoissonSampledDpEvent(
            e.sampling_rate, dp_event.GaussianDpEvent(e.noise_multiplier)
        )
        accountant.compose(sampled, e.steps)
    return float(accountant.get_epsilon(delta))


def _prv_epsilon(events: Sequence[MechanismEvent], delta: float) -> float:
    """Opacus' PRV accountant divides by zero (harmlessly) in ``log(1 - q)`` when q is 1."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="divide by zero encountered in log", category=RuntimeWarning
        )
        return epsilon(events, delta, "prv")


@pytest.fixture
def acme(ws: Workspace) -> tuple[PrivacyLedger, str]:
    info = ws.create_tenant("acme")
    return ws.ledger(), tenant_scope(info.id)


def test_I9_ledger_epsilon_matches_independent_pld(
    ws: Workspace, acme: tuple[PrivacyLedger, str]
) -> None:
    ledger, scope = acme
    ledger.set_policy(scope, tenant="acme", epsilon_budget=50.0, mode="dp")
    assert ledger.policy(scope).delta == DELTA
    runs: list[list[MechanismEvent]] = [
        [MechanismEvent(0.05, 2.0, 100)],
        # one run of two events, the second on a small tenant: every record in every step
        [MechanismEvent(0.2, 4.0, 20), MechanismEvent(1.0, 8.0, 2)],
        [MechanismEvent(0.05, 2.0, 100)],  # the first run's plan again
    ]
    charged = [e for planned in runs for e in planned]
    # the cumulative epsilon after each event, each prefix composed from scratch
    prefix = [_independent_pld(charged[: i + 1], DELTA) for i in range(len(charged))]
    done = 0
    for i, planned in enumerate(runs):
        charge = ledger.charge(
            scope, tenant="acme", run_id=f"run-{i}", purpose="adapter", planned=planned
        )
        before = prefix[done - 1] if done else 0.0
        done += len(planned)
        expected = prefix[done - 1]
        print(f"\nrun {i}: ledger epsilon {charge.epsilon_after:.4f}, independent {expected:.4f}")
        assert charge.epsilon_after == pytest.approx(expected, rel=0.01)
        assert charge.epsilon_before == pytest.approx(before, rel=0.01)
        assert charge.events == tuple(planned)

    events = ledger.events(scope)
    assert [e.event for e in events] == charged
    assert [e.run_id for e in events] == ["run-0", "run-1", "run-1", "run-2"]
    # each event records the cumulative epsilon after its run (a run is charged whole)
    after_run = [prefix[0], prefix[2], prefix[2], prefix[3]]
    for e, expected in zip(events, after_run, strict=True):
        assert e.delta == DELTA
        assert e.epsilon_after == pytest.approx(expected, rel=0.01)
    total = prefix[-1]
    assert ledger.spent(scope) == pytest.approx(total, rel=0.01)
    summary = ledger.summary(scope)
    assert summary["accountant"] == "pld"
    assert summary["epsilon_spent"] == pytest.approx(total, rel=0.01)
    assert summary["epsilon_remaining"] == pytest.approx(50.0 - summary["epsilon_spent"])
    assert summary["runs"] == 3 and summary["steps"] == 100 + 20 + 2 + 100
    # the RDP figure beside it is an upper bound, and not a wildly loose one here
    assert total <= summary["epsilon_spent_rdp_bound"] <= 1.5 * total
    charges = ws.audit.events(action="privacy.charge")
    assert [c.details["run_id"] for c in charges] == ["run-0", "run-1", "run-2"]
    print(f"total over 3 runs: {total:.4f} (RDP bound {summary['epsilon_spent_rdp_bound']:.4f})")


def test_I9_budget_refuses_before_charging(ws: Workspace, acme: tuple[PrivacyLedger, str]) -> None:
    ledger, scope = acme
    ledger.set_policy(scope, tenant="acme", epsilon_budget=2.0, mode="dp")
    plan = MechanismEvent(0.05, 2.0, 60)
    accepted = 0
    refused: PrivacyBudgetExceeded | None = None
    for i in range(50):
        try:
            charge = ledger.charge(
                scope, tenant="acme", run_id=f"run-{i}", purpose="adapter", planned=[plan]
            )
        except PrivacyBudgetExceeded as exc:
            refused = exc
            break
        accepted += 1
        assert charge.epsilon_after <= 2.0
        assert ledger.spent(scope) <= 2.0
    assert refused is not None and accepted >= 3, accepted
    print(f"\n{accepted} runs accepted under a budget of 2; refused: {refused.message}")

    spent = ledger.spent(scope)
    details = refused.details
    assert details["budget"] == 2.0
    assert details["spent"] == pytest.approx(spent)
    assert details["remaining"] == pytest.approx(2.0 - spent)
    assert details["asked"] > details["remaining"] > 0
    assert details["projected"] == pytest.approx(details["spent"] + details["asked"])
    assert details["projected"] > 2.0
    assert details["run_id"] == f"run-{accepted}"
    assert details["planned"] == [plan.to_dict()]
    assert f"cost epsilon {details['asked']:.3f}" in refused.message
    assert f"remaining {details['remaining']:.3f}" in refused.message
    assert "budget of 2" in refused.message
    assert PrivacyBudgetExceeded.exit_code == 11 and PrivacyBudgetExceeded.http_status == 409

    # nothing of the refused run was written
    events = ledger.events(scope)
    snapshot = [(e.id, e.run_id, e.epsilon_after) for e in events]
    assert len(events) == accepted
    assert all(e.run_id != details["run_id"] for e in events)
    assert max(e.epsilon_after for e in events) == pytest.approx(spent)
    assert spent <= 2.0

    # the refusal is audited, and the next attempt is refused the same way, writing nothing
    audited = ws.audit.events(action="privacy.refused")
    assert len(audited) == 1
    assert audited[0].object == scope and audited[0].tenant == "acme"
    assert audited[0].details["asked"] == pytest.approx(details["asked"])
    assert audited[0].details["remaining"] == pytest.approx(details["remaining"])
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge(scope, tenant="acme", run_id="again", purpose="adapter", planned=[plan])
    assert [(e.id, e.run_id, e.epsilon_after) for e in ledger.events(scope)] == snapshot
    assert len(ws.audit.events(action="privacy.charge")) == accepted
    assert len(ws.audit.events(action="privacy.refused")) == 2
    assert ledger.spent(scope) == pytest.approx(spent)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrated_noise_is_the_smallest_that_fits(accountant: str) -> None:
    target, q, steps = 2.0, 0.1, 150
    sigma = calibrate_noise(
        target_epsilon=target, delta=DELTA, sampling_rate=q, steps=steps, accountant=accountant
    )
    spent = epsilon([MechanismEvent(q, sigma, steps)], DELTA, accountant)
    less_noise = epsilon([MechanismEvent(q, 0.99 * sigma, steps)], DELTA, accountant)
    print(f"\n{accountant}: sigma {sigma:.4f} costs {spent:.4f}; 0.99 sigma costs {less_noise:.4f}")
    assert 0.99 * target <= spent <= target
    assert less_noise > target


def test_calibration_counts_what_the_scope_already_spent() -> None:
    prior = [MechanismEvent(1.0, 8.0, 3)]
    already = epsilon(prior, DELTA)
    target = already + 1.0
    sigma = calibrate_noise(
        target_epsilon=target, delta=DELTA, sampling_rate=0.2, steps=20, prior=prior
    )
    total = epsilon([*prior, MechanismEvent(0.2, sigma, 20)], DELTA)
    print(f"\nprior {already:.4f} + run at sigma {sigma:.4f} = {total:.4f} (target {target:.4f})")
    assert 0.99 * target <= total <= target
    assert epsilon([*prior, MechanismEvent(0.2, 0.99 * sigma, 20)], DELTA) > target
    # a target below what the scope already spent: no noise is enough
    with pytest.raises(InvalidInput, match="no noise multiplier"):
        calibrate_noise(
            target_epsilon=0.5 * already, delta=DELTA, sampling_rate=0.2, steps=20, prior=prior
        )


def test_tight_accountants_agree_and_rdp_bounds_them() -> None:
    cases: list[list[MechanismEvent]] = [
        [MechanismEvent(0.05, 2.0, 300)],
        [MechanismEvent(0.2, 4.0, 40), MechanismEvent(0.02, 1.5, 200)],
        [MechanismEvent(1.0, 8.0, 3), MechanismEvent(0.1, 1.2, 100)],
    ]
    for events in cases:
        pld, prv, rdp = (
            epsilon(events, DELTA, "pld"),
            _prv_epsilon(events, DELTA),
            epsilon(events, DELTA, "rdp"),
        )
        print(f"\n{events}: pld {pld:.4f}, prv {prv:.4f}, rdp {rdp:.4f}")
        assert pld <= rdp
        assert prv == pytest.approx(pld, rel=0.02)
    assert epsilon([], DELTA) == 0.0
    assert epsilon([MechanismEvent(0.1, 1.0, 0)], DELTA) == 0.0


def test_I9_ledger_events_are_append_only(ws: Workspace, acme: tuple[PrivacyLedger, str]) -> None:
    ledger, scope = acme
    ledger.charge(
        scope,
        tenant="acme",
        run_id="run-0",
        purpose="adapter",
        planned=[MechanismEvent(0.05, 2.0, 100)],
    )
    before = ledger.events(scope)
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE refused"):
        ws.conn.execute("UPDATE privacy_events SET epsilon_after = 0, steps = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE refused"):
        ws.conn.execute("DELETE FROM privacy_events WHERE scope = ?", (scope,))
    assert ledger.events(scope) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epsilon_budget": -1.0}, "epsilon must be a positive number"),
        ({"epsilon_budget": 0.0}, "epsilon must be a positive number"),
        ({"epsilon_budget": math.nan}, "epsilon must be a positive number"),
        ({"epsilon_budget": math.inf}, "epsilon must be a positive number"),
        ({"delta": 0.0}, "delta must be in"),
        ({"delta": 1.0}, "delta must be in"),
        ({"delta": -1e-5}, "delta must be in"),
        ({"mode": "sometimes"}, "unknown privacy mode"),
    ],
)
def test_bad_policy_is_invalid_input_and_changes_nothing(
    ws: Workspace, acme: tuple[PrivacyLedger, str], options: dict[str, Any], message: str
) -> None:
    ledger, scope = acme
    with pytest.raises(InvalidInput, match=message):
        ledger.set_policy(scope, tenant="acme", **options)
    assert not ledger.policy(scope).explicit
    assert ws.audit.events(action="privacy.policy") == []


@pytest.mark.parametrize("q", [0.0, -0.1, 1.0001, math.nan])
def test_sampling_rate_outside_the_unit_interval_is_invalid_input(q: float) -> None:
    with pytest.raises(InvalidInput, match="sampling rate"):
        MechanismEvent(q, 1.0, 10)


def test_other_bad_mechanism_inputs_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="noise multiplier"):
        MechanismEvent(0.1, 0.0, 10)
    with pytest.raises(InvalidInput, match="steps"):
        MechanismEvent(0.1, 1.0, -1)
    with pytest.raises(InvalidInput, match="unknown accountant"):
        epsilon([MechanismEvent(0.1, 1.0, 10)], DELTA, "gdp")
    with pytest.raises(InvalidInput, match="delta"):
        epsilon([MechanismEvent(0.1, 1.0, 10)], 1.0)
