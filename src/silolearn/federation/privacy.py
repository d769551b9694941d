"""Client-level differential privacy of federated rounds, accounted by the privacy ledger (I9).

The API, all the federation's runtime calls::

    dp = calibrate(target_epsilon=E, delta=d, rounds=R, clip_norm=C, min_sites=m)
    dp.to_dict() / ClientDp.from_dict(...)         # what the sites receive (JSON)
    preflight(ws, name, dp, run_id=r, rounds=R)    # coordinator, before the run: R rounds
    preflight(ws, name, dp, run_id=r)              # coordinator, before each round
    sent, noise = privatise_update(update, dp)     # each site, before masking
    charged = charge(ws, name, dp, run_id=r, round_no=i, survivors=k)   # after the round
    site_preflight(site_ws, tenants, run_id=r, epsilon=e)    # a site whose tenants' part
    site_charge(site_ws, tenant, run_id=r, event=ev)         # is trained by DP-SGD

**What is protected.** One site's whole contribution to a round (client-level DP), in the
ledger scope ``federation:<name>`` (``privacy.ledger.federation_scope``; its budget and
delta default to the ``[shared]`` settings). Who takes part is not hidden: the coordinator
sees which sites replied. Neighbouring federations differ by one site's update replaced by
zero (the *zero-out* relation of distributed DP, Kairouz et al. 2021), so the number of
survivors ``k`` is the same in both and the clipped sum has L2 sensitivity ``C``.

**The noise.** Each site clips its update (new weights minus the round's weights) to L2
norm ``C`` and adds ``N(0, sigma_site^2)`` to every coordinate, ``sigma_site = z C /
sqrt(m)``, where ``m = sized_for`` is the number of sites the noise is sized for, then
masks it (SecAgg+). The aggregate of ``k`` survivors carries the sum of their noises, of
std ``sigma_site sqrt(k) = z C sqrt(k/m)``, around a sum of sensitivity ``C``, so the
achieved noise multiplier is

    z_eff(k) = z sqrt(k / m)

Averaging (over ``k`` survivors, or over the ``n`` expected) divides the sum and its noise
alike: post-processing, ``z_eff`` is unchanged. Sized for ``m = n`` sites and averaged over
``k = n - 1`` survivors, ``z_eff = z sqrt((n-1)/n) < z``: the ledger charges that, not
``z``. Without secure aggregation the coordinator sees each site's update with its own
noise only, so the multiplier charged is ``sigma_site / C = z / sqrt(m)`` whatever ``k``.

**The ledger.** Each round is one ``MechanismEvent(q, z_eff, 1)`` composed by the PLD
accountant with every earlier event of the scope. ``preflight`` composes the worst case the
round accepts (``k = min_sites``) and raises ``PrivacyBudgetExceeded`` before any site
trains if that could pass the budget; ``charge`` records the achieved ``z_eff`` after the
round, which is never below the worst case, so a round that passed its preflight is charged
within the budget (unless another run charged the scope meanwhile: one run per federation at
a time). A SecAgg+ round with fewer survivors than ``min_sites`` unmasked nothing and is
not charged; without SecAgg+ every update that reached the coordinator is charged, whether
its round then failed or not.

**Sampling.** ``sampling_rate < 1`` is Poisson site sampling only (each site takes part
independently with probability ``q``); Flower's ``fraction`` samples a fixed number of
sites: charge ``q = 1`` for it. Amplification holds only against an observer who does not
know whom the round sampled: the users of the released versions, not the coordinator, which
samples and records the sites. ``RoundCharge.epsilon_unamplified`` (every event at
``q = 1``) is the coordinator's figure.

**Record level.** Sites whose tenants train their part of a round with DP-SGD charge those
runs to the tenants' own ``tenant:<id>`` scopes (purpose ``federation``) as any DP run does;
``site_preflight`` refuses before any of them trains. A record is part of its site's
contribution, so the federation's client-level guarantee covers it too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import InvalidInput
from silolearn.privacy.accountant import MechanismEvent, calibrate_noise, epsilon
from silolearn.privacy.ledger import Charge, federation_scope, tenant_scope

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

PURPOSE = "federation"
"""The purpose of the federation's ledger events, and of its sites' record-level runs."""


@dataclass(frozen=True, slots=True)
class ClientDp:
    """The client-level DP of a federated run: what every site applies to its update."""

    clip_norm: float
    """C: the L2 bound of one site's update, clipped on the site before masking."""
    noise_multiplier: float
    """z: an aggregate of ``sized_for`` sites carries noise of std z x C."""
    sized_for: int
    """m: the number of sites each site's noise is sized for."""
    min_sites: int
    """The fewest survivors a round accepts (below it the round fails, uncharged)."""
    sampling_rate: float = 1.0
    """q: the Poisson probability that a site takes part in a round (1: every site)."""
    secure_aggregation: bool = True
    """Whether the coordinator sees only the aggregate (SecAgg+) or each update."""

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):
                raise InvalidInput(f"{name} must be a positive number, not {value}")
        if self.sized_for < 1 or self.min_sites < 1:
            raise InvalidInput("a federated round is sized for, and accepts, at least one site")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise InvalidInput(f"sampling rate {self.sampling_rate} is not in (0, 1]")

    @property
    def site_noise_std(self) -> float:
        """sigma_site = z C / sqrt(m): the std each site adds to each coordinate."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.sized_for)

    def achieved_noise_multiplier(self, survivors: int) -> float:
        """z_eff: ``z sqrt(k/m)`` for the aggregate of ``k`` survivors under SecAgg+,
        ``z / sqrt(m)`` (one site's own noise) without it."""
        if survivors < 1:
            raise InvalidInput("a round with no survivor released nothing to charge")
        if not self.secure_aggregation:
            return self.noise_multiplier / math.sqrt(self.sized_for)
        return self.noise_multiplier * math.sqrt(survivors / self.sized_for)

    def round_event(self, survivors: int | None = None) -> MechanismEvent:
        """One round as the ledger composes it; ``None``: the worst accepted case."""
        k = self.min_sites if survivors is None else survivors
        return MechanismEvent(self.sampling_rate, self.achieved_noise_multiplier(k), 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "site_noise_std": self.site_noise_std}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientDp:
        return cls(
            clip_norm=float(data["clip_norm"]),
            noise_multiplier=float(data["noise_multiplier"]),
            sized_for=int(data["sized_for"]),
            min_sites=int(data["min_sites"]),
            sampling_rate=float(data.get("sampling_rate", 1.0)),
            secure_aggregation=bool(data.get("secure_aggregation", True)),
        )


def calibrate(
    *,
    target_epsilon: float,
    delta: float,
    rounds: int,
    clip_norm: float,
    min_sites: int,
    sized_for: int | None = None,
    sampling_rate: float = 1.0,
    secure_aggregation: bool = True,
    accountant: str = "pld",
) -> ClientDp:
    """The smallest noise with which ``rounds`` rounds, each with ``sized_for`` survivors
    (default ``min_sites``: the worst accepted case), cost at most ``target_epsilon``.

    Sized for more sites than the minimum, a round with fewer survivors costs more than
    planned; ``preflight`` checks that worst case against the budget."""
    m = min_sites if sized_for is None else sized_for
    z = calibrate_noise(
        target_epsilon=target_epsilon,
        delta=delta,
        sampling_rate=sampling_rate,
        steps=rounds,
        accountant=accountant,
    )
    if not secure_aggregation:
        z *= math.sqrt(m)  # each site's own noise must carry the whole multiplier
    return ClientDp(clip_norm, z, m, min_sites, sampling_rate, secure_aggregation)


@dataclass(frozen=True, slots=True)
class SiteNoise:
    """What a site did to its update before masking (its ``federation.contribute`` audit)."""

    norm_before: float
    clipped: bool
    noise_std: float
    coordinates: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def privatise_update(
    update: Sequence[np.ndarray], dp: ClientDp, *, rng: np.random.Generator | None = None
) -> tuple[list[np.ndarray], SiteNoise]:
    """The update clipped to L2 norm ``C`` over all its arrays, plus the site's Gaussian
    noise of std ``sigma_site`` per coordinate (drawn from the operating system's
    randomness unless ``rng`` is given): what the site masks and sends."""
    arrays = [np.asarray(a, dtype=np.float64) for a in update]
    norm = math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))
    factor = min(1.0, dp.clip_norm / norm) if norm > 0 else 1.0
    rng = rng or np.random.default_rng(secrets.randbits(128))
    std = dp.site_noise_std
    sent = [
        (a * factor + rng.normal(0.0, std, size=a.shape)).astype(np.asarray(u).dtype, copy=False)
        for a, u in zip(arrays, update, strict=True)
    ]
    coordinates = sum(a.size for a in arrays)
    return sent, SiteNoise(norm, factor < 1.0, std, coordinates)


@dataclass(frozen=True, slots=True)
class RoundCharge:
    """What one round cost the federation's scope."""

    federation: str
    run_id: str
    round_no: int
    survivors: int
    noise_multiplier: float
    """z, as planned."""
    achieved_noise_multiplier: float
    """z_eff, as charged."""
    noise_std: float
    """The std of the aggregate's (sum's) noise: z_eff x C."""
    sampling_rate: float
    charge: Charge
    epsilon_unamplified: float
    """The scope's epsilon with every event at q = 1: what the coordinator, which knows
    whom it sampled, faces (equal to ``epsilon_after`` without sampling)."""

    @property
    def epsilon_after(self) -> float:
        return self.charge.epsilon_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "federation": self.federation,
            "run_id": self.run_id,
            "round": self.round_no,
            "survivors": self.survivors,
            "noise_multiplier": self.noise_multiplier,
            "achieved_noise_multiplier": self.achieved_noise_multiplier,
            "noise_std": self.noise_std,
            "sampling_rate": self.sampling_rate,
            "epsilon_before": self.charge.epsilon_before,
            "epsilon_after": self.charge.epsilon_after,
            "epsilon_unamplified": self.epsilon_unamplified,
            "epsilon_budget": self.charge.epsilon_budget,
            "delta": self.charge.delta,
            "accountant": self.charge.accountant,
        }


def preflight(
    ws: Workspace, federation: str, dp: ClientDp, *, run_id: str, rounds: int = 1
) -> float:
    """Refuse (``PrivacyBudgetExceeded``, audited ``privacy.refused``) before any site
    trains when the next ``rounds`` rounds, each in its worst accepted case, could take the
    federation's scope past its budget; returns the projected epsilon. Writes nothing else."""
    if rounds < 1:
        raise InvalidInput(f"a preflight covers at least one round, not {rounds}")
    worst = dp.round_event()
    return ws.ledger().precheck_events(
        federation_scope(federation),
        tenant=None,
        run_id=run_id,
        purpose=PURPOSE,
        planned=[MechanismEvent(worst.sampling_rate, worst.noise_multiplier, rounds)],
    )


def charge(
    ws: Workspace, federation: str, dp: ClientDp, *, run_id: str, round_no: int, survivors: int
) -> RoundCharge:
    """Charge a round that released an aggregate of ``survivors`` sites with the noise it
    achieved (``privacy.charge`` audit event). Under SecAgg+, ``InvalidInput`` for fewer
    survivors than the round accepts: such a round unmasked nothing and is not charged;
    without it, ``survivors`` is the number of updates that reached the coordinator."""
    if dp.secure_aggregation and survivors < dp.min_sites:
        raise InvalidInput(
            f"round {round_no} had {survivors} survivor(s), fewer than the {dp.min_sites} it "
            "accepts: a failed round released nothing and is not charged"
        )
    scope = federation_scope(federation)
    ledger = ws.ledger()
    event = dp.round_event(survivors)
    charged = ledger.charge(scope, tenant=None, run_id=run_id, purpose=PURPOSE, planned=[event])
    events = [e.event for e in ledger.events(scope)]
    unamplified = charged.epsilon_after
    if any(e.sampling_rate < 1.0 for e in events):
        unamplified = epsilon(
            [MechanismEvent(1.0, e.noise_multiplier, e.steps) for e in events],
            charged.delta,
            ledger.accountant,
        )
    return RoundCharge(
        federation=federation,
        run_id=run_id,
        round_no=round_no,
        survivors=survivors,
        noise_multiplier=dp.noise_multiplier,
        achieved_noise_multiplier=event.noise_multiplier,
        noise_std=event.noise_multiplier * dp.clip_norm,
        sampling_rate=dp.sampling_rate,
        charge=charged,
        epsilon_unamplified=unamplified,
    )


def site_preflight(ws: Workspace, tenants: Sequence[str], *, run_id: str, epsilon: float) -> None:
    """On a site: refuse (``PrivacyBudgetExceeded``) before any of ``tenants`` trains its
    part of a round with DP-SGD at ``epsilon`` when one of their record-level budgets
    (``tenant:<id>`` scopes) cannot pay it."""
    ledger = ws.ledger()
    for name in tenants:
        info = ws.tenants.get(name)
        ledger.precheck(
            tenant_scope(info.id), tenant=name, run_id=run_id, purpose=PURPOSE, at_least=epsilon
        )


def site_charge(ws: Workspace, tenant: str, *, run_id: str, event: MechanismEvent) -> Charge:
    """On a site: charge a tenant's DP-SGD part of a round to its own record-level scope
    (or refuse it before it trains), as any DP run of the tenant is charged."""
    info = ws.tenants.get(tenant)
    return ws.ledger().charge(
        tenant_scope(info.id), tenant=tenant, run_id=run_id, purpose=PURPOSE, planned=[event]
    )
