"""A federation's plan: who aggregates how, fixed and checked before any site trains.

Flower runs some configurations wrongly without an error (docs/federation.md, "Guards"): an
even integer share count makes every site crash while the run exits 0; server-side clipping
on top of SecAgg+ clips the already aggregated vector, so the noise is about n times too
small; SecAgg+ silently clips every coordinate to its ``clipping_range`` before quantising.
``FederationPlan.check`` refuses each of them with a ``FederationConfigError``.

Sites send their new weights (the round's weights plus their clipped, noised update), so
the ranges follow from the model: a coordinate sent is at most ``weight_bound + C + 8
sigma_site`` in absolute value (the weights' largest magnitude, the clipping bound, eight
standard deviations of the site's noise: saturation has probability below 1e-14 per
coordinate), and one quantisation step must stay below 1% of ``sigma_site``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from silolearn.errors import FederationConfigError
from silolearn.federation.privacy import ClientDp

QUANTIZATION_RANGE = 1 << 22
"""Flower's default: 2**22 levels; with the modulus 2**32 it leaves room for 1,024 sites."""
MODULUS_RANGE = 1 << 32
NOISE_TAILS = 8.0
"""How many of the site noise's standard deviations the clipping range leaves room for."""
QUANTIZATION_SHARE = 0.01
"""A quantisation step must stay below this share of the site noise's standard deviation."""


@dataclass(frozen=True, slots=True)
class FederationPlan:
    """What a federated run does. ``noise_multiplier`` 0 means no differential privacy."""

    sites: int
    """Sites sampled per round (all connected ones are expected)."""
    rounds: int
    min_sites: int
    """The fewest replies a round accepts (and SecAgg+'s reconstruction threshold)."""
    secagg: bool
    num_shares: int
    max_update_norm: float
    """C: the L2 bound of one site's update, clipped on the site before masking."""
    noise_multiplier: float
    """z: the aggregate of ``min_sites`` survivors carries noise of std z x C."""
    weight_bound: float
    """The largest magnitude of a weight of the model when the run starts."""
    clipping_range: float
    quantization_range: int = QUANTIZATION_RANGE
    server_side_clipping: bool = False
    round_timeout: float = 600.0
    epsilon: float | None = None
    delta: float | None = None
    federation: str = "federation"
    """The federation's name: its ledger scope is ``federation:<name>``."""

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def site_noise_std(self) -> float:
        """sigma_site = z C / sqrt(m): ``m`` survivors together add noise of std z C."""
        return self.noise_multiplier * self.max_update_norm / math.sqrt(self.min_sites)

    @property
    def needed_clipping_range(self) -> float:
        """The smallest SecAgg+ clipping range that cannot clip a coordinate a site sends."""
        return self.weight_bound + self.max_update_norm + NOISE_TAILS * self.site_noise_std

    @property
    def quantization_step(self) -> float:
        return 2 * self.clipping_range / self.quantization_range

    def client_dp(self) -> ClientDp | None:
        """The client-level DP every site applies (``None``: not private)."""
        if not self.private:
            return None
        return ClientDp(
            clip_norm=self.max_update_norm,
            noise_multiplier=self.noise_multiplier,
            sized_for=self.min_sites,
            min_sites=self.min_sites,
            secure_aggregation=self.secagg,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FederationPlan:
        return cls(**data)

    def check(self) -> FederationPlan:
        """This plan, or a ``FederationConfigError`` naming what Flower would run wrongly."""
        self.check_counts()
        if self.secagg:
            self._check_secagg()
        elif self.server_side_clipping:
            raise FederationConfigError(
                "silolearn clips each site's update on the site, never on the server",
                guard="server-side-clipping",
            )
        return self

    def check_counts(self) -> None:
        """The sites, rounds, minimum of replies, update bound and round timeout, which
        everything derived from the plan (the noise per site, the ranges) divides by or
        waits on."""
        if self.sites < 1 or self.rounds < 1:
            raise FederationConfigError(
                f"a federation needs at least one site and one round, not {self.sites} "
                f"site(s) and {self.rounds} round(s)"
            )
        if not 1 <= self.min_sites <= self.sites:
            raise FederationConfigError(
                f"the minimum of sites per round ({self.min_sites}) must be between 1 and "
                f"the {self.sites} site(s) sampled",
                min_sites=self.min_sites,
                sites=self.sites,
            )
        if not self.max_update_norm > 0 or not math.isfinite(self.max_update_norm):
            raise FederationConfigError(
                f"the update bound must be positive, not {self.max_update_norm}"
            )
        if not self.round_timeout > 0 or not math.isfinite(self.round_timeout):
            raise FederationConfigError(
                f"a round's timeout must be a positive number of seconds, not {self.round_timeout}"
            )

    def _check_secagg(self) -> None:
        if self.server_side_clipping:
            raise FederationConfigError(
                "server-side clipping with secure aggregation clips the already aggregated "
                "vector, leaving its noise about n times too small: sites clip their own "
                "updates before masking",
                guard="server-side-clipping",
            )
        if self.num_shares % 2 == 0:
            raise FederationConfigError(
                f"an even share count ({self.num_shares}) makes every site's SecAgg+ "
                "exchange crash while Flower reports the run as finished: use an odd one",
                guard="even-num-shares",
                num_shares=self.num_shares,
            )
        # Flower's SecAggPlusWorkflow raises ValueError in the ServerApp for a threshold
        # equal to the share count: refused here, before anything starts
        if not 2 <= self.min_sites < self.num_shares <= self.sites:
            raise FederationConfigError(
                f"SecAgg+ needs 2 <= reconstruction threshold ({self.min_sites}) < shares "
                f"({self.num_shares}) <= sites ({self.sites})",
                guard="shares",
            )
        if self.clipping_range < self.needed_clipping_range:
            raise FederationConfigError(
                f"a clipping range of {self.clipping_range:g} would clip the weights sent "
                f"(they reach {self.needed_clipping_range:g}: weights up to "
                f"{self.weight_bound:g}, updates up to {self.max_update_norm:g}, noise std "
                f"{self.site_noise_std:g})",
                guard="clipping-range",
            )
        if self.private and self.quantization_step > QUANTIZATION_SHARE * self.site_noise_std:
            raise FederationConfigError(
                f"a quantisation step of {self.quantization_step:g} is coarser than "
                f"{QUANTIZATION_SHARE:.0%} of the sites' noise std ({self.site_noise_std:g})",
                guard="quantization-range",
            )
        if self.sites * self.quantization_range >= MODULUS_RANGE:
            raise FederationConfigError(
                f"{self.sites} sites' quantised sums overflow SecAgg+'s modulus",
                guard="quantization-range",
            )


def odd_share_count(sites: int, min_sites: int) -> int:
    """The largest odd share count above the threshold and at most the number of sites
    (or, when there is none, the smallest odd one above the threshold, which ``check``
    refuses with the reason)."""
    shares = sites if sites % 2 else sites - 1
    return max(shares, min_sites + 1 if min_sites % 2 == 0 else min_sites + 2)


def largest_threshold(sites: int) -> int:
    """The largest SecAgg+ reconstruction threshold ``sites`` sites allow: one below the
    largest odd share count."""
    return (sites if sites % 2 else sites - 1) - 1


def plan_for(
    *,
    sites: int,
    rounds: int,
    min_sites: int,
    secagg: bool,
    max_update_norm: float,
    noise_multiplier: float,
    weight_bound: float,
    num_shares: int | None = None,
    round_timeout: float = 600.0,
    epsilon: float | None = None,
    delta: float | None = None,
    federation: str = "federation",
) -> FederationPlan:
    """A checked plan whose SecAgg+ ranges are derived from the model and the noise."""
    plan = FederationPlan(
        sites=sites,
        rounds=rounds,
        min_sites=min_sites,
        secagg=secagg,
        num_shares=odd_share_count(sites, min_sites) if num_shares is None else num_shares,
        max_update_norm=max_update_norm,
        noise_multiplier=noise_multiplier,
        weight_bound=weight_bound,
        clipping_range=0.0,
        round_timeout=round_timeout,
        epsilon=epsilon,
        delta=delta,
        federation=federation,
    )
    return with_ranges(plan)


def with_ranges(plan: FederationPlan) -> FederationPlan:
    """``plan`` with the smallest clipping range that clips nothing it sends, checked."""
    plan.check_counts()  # before the range divides by its minimum of sites
    return replace(plan, clipping_range=plan.needed_clipping_range).check()
