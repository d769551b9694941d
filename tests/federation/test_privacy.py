"""Client-level DP of federated rounds in the privacy ledger (I9, issue 18): the round that
would pass the budget is refused before any site trains, the noise achieved after dropouts
is what is charged (against an independent dp-accounting computation), and sites' tenants
keep their record-level budgets. Real workspaces (SQLite, audit chain), no mocks."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from silolearn import Workspace
from silolearn.errors import InvalidInput, PrivacyBudgetExceeded
from silolearn.federation.privacy import (
    ClientDp,
    calibrate,
    charge,
    preflight,
    privatise_update,
    site_charge,
    site_preflight,
)
from silolearn.privacy.accountant import MechanismEvent
from silolearn.privacy.ledger import federation_scope, tenant_scope

DELTA = 1e-5


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """One real workspace for the file; each test charges its own federation's scope."""
    workspace = Workspace.init(tmp_path_factory.mktemp("fed") / "ws", actor="test")
    yield workspace
    workspace.close()


@pytest.fixture
def net(request: pytest.FixtureRequest) -> str:
    """The federation of one test: its own ledger scope in the shared workspace."""
    return str(request.node.originalname).removeprefix("test_")[:40]


def _independent(multipliers: Sequence[float], q: float = 1.0) -> float:
    """Each round composed on its own by dp-accounting's PLD, its default discretisation."""
    from dp_accounting import dp_event, pld

    accountant = pld.PLDAccountant()
    for z in multipliers:
        gaussian = dp_event.GaussianDpEvent(z)
        accountant.compose(gaussian if q >= 1.0 else dp_event.PoissonSampledDpEvent(q, gaussian))
    return float(accountant.get_epsilon(DELTA))


def test_I9_the_noise_achieved_after_dropouts_is_charged(ws: Workspace, net: str) -> None:
    """Noise sized for n = 3 sites; rounds with 3, 2 and 3 survivors are charged
    z sqrt(k/3) each, and the ledger's epsilon is dp-accounting's for those multipliers."""
    dp = ClientDp(clip_norm=0.5, noise_multiplier=3.0, sized_for=3, min_sites=2)
    assert dp.site_noise_std == pytest.approx(3.0 * 0.5 / math.sqrt(3))
    survivors = [3, 2, 3]
    expected_z = [3.0 * math.sqrt(k / 3) for k in survivors]
    charged = [
        charge(ws, net, dp, run_id="run-1", round_no=i + 1, survivors=k)
        for i, k in enumerate(survivors)
    ]
    for got, z in zip(charged, expected_z, strict=True):
        assert got.achieved_noise_multiplier == pytest.approx(z)
        assert got.noise_std == pytest.approx(z * 0.5)
        assert got.noise_multiplier == 3.0
    # one site lost costs more than the round planned for n: z sqrt(2/3) < z
    assert charged[1].epsilon_after > _independent([3.0, 3.0])
    for i, got in enumerate(charged):
        independent = _independent(expected_z[: i + 1])
        print(f"round {i + 1}: ledger {got.epsilon_after:.4f}, independent {independent:.4f}")
        assert got.epsilon_after == pytest.approx(independent, rel=0.01)
        assert got.epsilon_unamplified == got.epsilon_after  # no sampling: the same figure
    ledger = ws.ledger()
    scope = federation_scope(net)
    events = ledger.events(scope)
    assert [e.event for e in events] == [MechanismEvent(1.0, z, 1) for z in expected_z]
    assert {e.purpose for e in events} == {"federation"} and {e.run_id for e in events} == {"run-1"}
    assert ledger.spent(scope) == pytest.approx(_independent(expected_z), rel=0.01)
    audited = [a for a in ws.audit.events(action="privacy.charge") if a.object == scope]
    assert [a.details["epsilon_after"] for a in audited] == [c.epsilon_after for c in charged]


def test_the_aggregate_of_k_privatised_updates_has_the_noise_charged() -> None:
    """What the sites really add: the sum of k sites' noises has std sigma_site sqrt(k) =
    z_eff C, and each site's update leaves it clipped to C. 200,000 coordinates estimate a
    std to 0.16% (1/sqrt(2n)); the 1% tolerance is six of those."""
    dp = ClientDp(clip_norm=2.0, noise_multiplier=1.5, sized_for=4, min_sites=2)
    rng = np.random.default_rng(20261207)
    shape = [(400, 250), (100_000,)]
    for k in (4, 3, 2):
        total = [np.zeros(s) for s in shape]
        for _ in range(k):
            zero = [np.zeros(s, dtype=np.float32) for s in shape]
            sent, noise = privatise_update(zero, dp, rng=rng)
            assert noise.norm_before == 0.0 and not noise.clipped
            assert noise.coordinates == 200_000 and [a.dtype for a in sent] == [np.float32] * 2
            total = [t + s for t, s in zip(total, sent, strict=True)]
        measured = float(np.concatenate([t.ravel() for t in total]).std())
        expected = dp.achieved_noise_multiplier(k) * dp.clip_norm
        print(f"k={k}: aggregate noise std {measured:.4f}, charged z_eff C = {expected:.4f}")
        assert measured == pytest.approx(expected, rel=0.01)

    big = [np.full((10,), 3.0), np.full((2, 3), -4.0)]
    quiet = ClientDp(clip_norm=2.0, noise_multiplier=1e-9, sized_for=1, min_sites=1)
    sent, noise = privatise_update(big, quiet, rng=rng)
    norm = math.sqrt(sum(float((a * a).sum()) for a in sent))
    assert noise.clipped and noise.norm_before == pytest.approx(math.sqrt(90 + 96))
    assert norm == pytest.approx(2.0, rel=1e-6)
    # the direction is kept: clipping scales, it does not reshape
    assert sent[0][0] / sent[1][0, 0] == pytest.approx(3.0 / -4.0)


def test_I9_federation_refuses_the_round_past_the_budget_before_any_site_trains(
    ws: Workspace, net: str
) -> None:
    """Acceptance 4: the preflight composes the worst accepted case (``min_sites``
    survivors) with what is spent and refuses before the sites are asked to train; nothing is
    charged, the refusal is audited. The round the sites never trained is never charged."""
    ledger = ws.ledger()
    scope = federation_scope(net)
    dp = ClientDp(clip_norm=1.0, noise_multiplier=2.0, sized_for=3, min_sites=2)
    worst, alive = dp.achieved_noise_multiplier(2), dp.achieved_noise_multiplier(3)
    # a budget that pays three rounds with every site alive, but not two of them and a
    # third that loses a site
    budget = (_independent([alive] * 3) + _independent([alive, alive, worst])) / 2
    ledger.set_policy(scope, tenant=None, epsilon_budget=budget)
    with pytest.raises(PrivacyBudgetExceeded) as whole_run:
        preflight(ws, net, dp, run_id="run-1", rounds=3)
    assert f"federation {net!r}" in whole_run.value.message
    trained: list[int] = []
    for round_no in (1, 2, 3):
        try:
            preflight(ws, net, dp, run_id="run-1")
        except PrivacyBudgetExceeded as refused:
            assert round_no == 3
            assert refused.details["projected"] > budget >= refused.details["spent"]
            assert refused.details["planned"] == [MechanismEvent(1.0, worst, 1).to_dict()]
            break
        trained.append(round_no)  # the sites train only after the preflight passed
        charge(ws, net, dp, run_id="run-1", round_no=round_no, survivors=3)
    assert trained == [1, 2]
    assert len(ledger.events(scope)) == 2
    assert ledger.spent(scope) <= budget
    refusals = [r for r in ws.audit.events(action="privacy.refused") if r.object == scope]
    assert len(refusals) == 2
    # the third round with every site alive would have fitted: the preflight takes the
    # worst case the round accepts, so no dropout can take the scope past its budget
    assert _independent([alive] * 3) < budget


def test_I9_a_failed_secure_round_is_not_charged_an_update_seen_in_clear_is(
    ws: Workspace, net: str
) -> None:
    dp = ClientDp(clip_norm=1.0, noise_multiplier=2.0, sized_for=3, min_sites=2)
    with pytest.raises(InvalidInput, match="failed round released nothing"):
        charge(ws, net, dp, run_id="run-1", round_no=1, survivors=1)
    assert ws.ledger().events(federation_scope(net)) == []
    # without SecAgg+ the coordinator saw the one update that arrived: it is charged
    clear = replace(dp, secure_aggregation=False)
    got = charge(ws, net, clear, run_id="run-1", round_no=1, survivors=1)
    assert got.achieved_noise_multiplier == pytest.approx(2.0 / math.sqrt(3))
    assert len(ws.ledger().events(federation_scope(net))) == 1


def test_site_sampling_is_amplified_for_the_released_model_not_for_the_coordinator(
    ws: Workspace, net: str
) -> None:
    """Poisson site sampling at q: the ledger charges the subsampled Gaussian; the
    coordinator, which knows whom it sampled, faces every round at q = 1."""
    dp = ClientDp(clip_norm=1.0, noise_multiplier=1.2, sized_for=2, min_sites=2, sampling_rate=0.3)
    charged = [
        charge(ws, net, dp, run_id="run-1", round_no=i, survivors=k) for i, k in ((1, 2), (2, 3))
    ]
    z = [1.2, 1.2 * math.sqrt(3 / 2)]
    assert charged[-1].epsilon_after == pytest.approx(_independent(z, q=0.3), rel=0.01)
    assert charged[-1].epsilon_unamplified == pytest.approx(_independent(z), rel=0.01)
    assert charged[-1].epsilon_unamplified > 1.5 * charged[-1].epsilon_after


def test_calibration_and_the_multiplier_without_secure_aggregation(ws: Workspace, net: str) -> None:
    """Calibrated rounds cost the target in the case they are sized for (by default the
    worst the round accepts; sized for more sites, losing one costs more than planned,
    which the preflight checks). Without SecAgg+ the coordinator sees each update with its
    own site's noise only: every site carries the whole multiplier, charged whatever the
    survivors."""
    target, rounds = 1.5, 3
    common: dict[str, Any] = {
        "target_epsilon": target,
        "delta": DELTA,
        "rounds": rounds,
        "clip_norm": 0.8,
    }
    masked = calibrate(**common, min_sites=3)
    planned = _independent([masked.achieved_noise_multiplier(3)] * rounds)
    assert 0.99 * target <= planned <= target
    assert masked.round_event() == MechanismEvent(1.0, masked.noise_multiplier, 1)
    assert masked.site_noise_std == pytest.approx(masked.noise_multiplier * 0.8 / math.sqrt(3))
    assert ClientDp.from_dict(masked.to_dict()) == masked

    wide = calibrate(**common, min_sites=3, sized_for=4)
    assert wide.noise_multiplier == masked.noise_multiplier  # calibrated for k = 4
    assert wide.round_event().noise_multiplier < wide.noise_multiplier

    clear = calibrate(**common, min_sites=3, secure_aggregation=False)
    assert clear.site_noise_std == pytest.approx(masked.noise_multiplier * 0.8, rel=1e-9)
    got = charge(ws, net, clear, run_id="run-1", round_no=1, survivors=3)
    assert got.achieved_noise_multiplier == pytest.approx(masked.noise_multiplier)
    assert got.epsilon_after == pytest.approx(_independent([masked.noise_multiplier]), rel=0.01)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clip_norm": 0.0}, "clip_norm must be a positive number"),
        ({"noise_multiplier": math.inf}, "noise_multiplier must be a positive number"),
        ({"sized_for": 0}, "at least one site"),
        ({"sampling_rate": 1.5}, "not in"),
    ],
)
def test_bad_client_dp_is_invalid_input(fields: dict[str, float], message: str) -> None:
    base = {"clip_norm": 1.0, "noise_multiplier": 1.0, "sized_for": 2, "min_sites": 2}
    with pytest.raises(InvalidInput, match=message):
        ClientDp(**{**base, **fields})


def test_the_federation_scope_is_always_private_and_defaults_to_the_shared_budget(
    ws: Workspace, net: str
) -> None:
    ledger = ws.ledger()
    scope = federation_scope(net)
    policy = ledger.policy(scope)
    assert policy.epsilon_budget == ws.settings.shared.epsilon_budget
    assert policy.delta == ws.settings.shared.delta
    with pytest.raises(InvalidInput, match=f"federation {net!r} is always trained with"):
        ledger.set_policy(scope, tenant=None, mode="off")
    for bad in ("", "a/b", "tab\there"):
        with pytest.raises(InvalidInput, match="federation name"):
            federation_scope(bad)


def test_I9_sites_tenants_keep_their_record_level_budgets(ws: Workspace, net: str) -> None:
    """A site whose tenants train their part with DP-SGD: each tenant's own scope is
    checked before any of them trains, and charged as any DP run of the tenant."""
    ws.create_tenant("north")
    ws.create_tenant("south")
    ledger = ws.ledger()
    south = tenant_scope(ws.tenants.get("south").id)
    ledger.set_policy(south, tenant="south", epsilon_budget=1.0, mode="dp")
    site_preflight(ws, ["north", "south"], run_id="run-1", epsilon=0.5)
    with pytest.raises(PrivacyBudgetExceeded, match="tenant 'south'"):
        site_preflight(ws, ["north", "south"], run_id="run-1", epsilon=2.0)
    event = MechanismEvent(0.05, 1.1, 200)
    got = site_charge(ws, "north", run_id="run-1", event=event)
    north = tenant_scope(ws.tenants.get("north").id)
    assert got.scope == north and got.events == (event,)
    assert [(e.purpose, e.run_id) for e in ledger.events(north)] == [("federation", "run-1")]
    assert ledger.events(south) == [] and ledger.events(federation_scope(net)) == []
