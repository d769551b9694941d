"""Privacy accounting for DP-SGD: what a sequence of mechanism events costs in epsilon.

A DP-SGD step on a dataset sampled by Poisson sampling at rate ``q`` with Gaussian noise of
multiplier ``sigma`` is a *Poisson-subsampled Gaussian mechanism*; a run is ``steps`` of
them. The cost of every run of a scope composes, so the ledger hands *all* of a scope's
events to one accountant at once:

- ``pld`` (the default, tight): privacy loss distributions from Google's ``dp-accounting``;
- ``prv`` (tight): Opacus' privacy random variable accountant (Gopi et al. 2021);
- ``rdp`` (an upper bound, looser): Rényi DP from ``dp-accounting``, reported beside the
  tight figure so the gap is visible.

``calibrate_noise`` finds the smallest noise multiplier that keeps a planned run within a
target epsilon by the same accountant that the ledger charges with, so a run calibrated
here never costs more than it was planned to.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from silolearn.errors import InvalidInput

ACCOUNTANTS = ("pld", "prv", "rdp")
PLD_DISCRETISATION = 1e-4
"""``dp-accounting``'s own default value discretisation interval for PLD."""


@dataclass(frozen=True, slots=True)
class MechanismEvent:
    """``steps`` Poisson-subsampled Gaussian steps at rate ``sampling_rate`` and noise
    multiplier ``noise_multiplier`` (noise std = multiplier x clipping norm)."""

    sampling_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 < self.sampling_rate <= 1.0:
            raise InvalidInput(f"sampling rate {self.sampling_rate} is not in (0, 1]")
        if not self.noise_multiplier > 0.0 or not math.isfinite(self.noise_multiplier):
            raise InvalidInput(f"noise multiplier {self.noise_multiplier} is not positive")
        if self.steps < 0:
            raise InvalidInput(f"steps {self.steps} is negative")

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampling_rate": self.sampling_rate,
            "noise_multiplier": self.noise_multiplier,
            "steps": self.steps,
        }


def _check(delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise InvalidInput(f"unknown accountant {accountant!r}: one of {', '.join(ACCOUNTANTS)}")
    if not 0.0 < delta < 1.0:
        raise InvalidInput(f"delta {delta} is not in (0, 1)")


def epsilon(events: Iterable[MechanismEvent], delta: float, accountant: str = "pld") -> float:
    """The epsilon at ``delta`` of all ``events`` composed (0 for no events)."""
    _check(delta, accountant)
    merged = _merge(events)
    if not merged:
        return 0.0
    if accountant == "prv":
        return _prv(merged, delta)
    import dp_accounting
    from dp_accounting import pld, rdp

    acc: dp_accounting.PrivacyAccountant
    if accountant == "pld":
        # the PLD's size grows with the largest privacy loss over the interval: a very weak
        # mechanism (epsilon in the hundreds) gets a coarser grid, bounded by what RDP says
        rough = epsilon(merged, delta, "rdp")
        interval = max(PLD_DISCRETISATION, rough * 1e-5) if math.isfinite(rough) else 1e-2
        acc = pld.PLDAccountant(value_discretization_interval=interval)
    else:
        acc = rdp.RdpAccountant()
    try:
        with _quiet_absl():
            for event in merged:
                acc.compose(_dp_event(event), event.steps)
            return float(acc.get_epsilon(delta))
    except (ValueError, OverflowError, MemoryError) as exc:
        raise InvalidInput(
            f"the {accountant} accountant cannot bound these events ({exc}); "
            "the noise is far too small for a meaningful guarantee"
        ) from None


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP logs a warning for every order whose series does not converge
    (those orders are skipped, which keeps the bound valid); keep them off the console."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dp_event(event: MechanismEvent) -> Any:
    from dp_accounting import dp_event

    gaussian = dp_event.GaussianDpEvent(event.noise_multiplier)
    if event.sampling_rate >= 1.0:
        return gaussian
    return dp_event.PoissonSampledDpEvent(event.sampling_rate, gaussian)


def _prv(events: Sequence[MechanismEvent], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(e.noise_multiplier, e.sampling_rate, e.steps) for e in events]
    with np.errstate(divide="ignore"):  # log(1 - q) at q = 1; the result is still right
        return float(acc.get_epsilon(delta))


def _merge(events: Iterable[MechanismEvent]) -> list[MechanismEvent]:
    """Events with equal (q, sigma) merged, in first-seen order: composition commutes, and
    one self-composition of n steps is far cheaper than n compositions."""
    totals: dict[tuple[float, float], int] = {}
    for event in events:
        if event.steps:
            key = (event.sampling_rate, event.noise_multiplier)
            totals[key] = totals.get(key, 0) + event.steps
    return [MechanismEvent(q, s, n) for (q, s), n in totals.items()]


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: str = "pld",
    prior: Sequence[MechanismEvent] = (),
) -> float:
    """The smallest noise multiplier (to 0.2%) with which ``steps`` more steps at
    ``sampling_rate`` keep the epsilon of ``prior`` + the run at or below ``target_epsilon``.

    ``InvalidInput`` when no noise multiplier up to 1000 does (the target is below what
    ``prior`` already costs, or absurdly small)."""
    _check(delta, accountant)
    if not target_epsilon > 0.0 or not math.isfinite(target_epsilon):
        raise InvalidInput(f"target epsilon {target_epsilon} is not positive")
    if steps < 1:
        raise InvalidInput("a DP run needs at least one step")

    def cost(sigma: float, how: str) -> float:
        return epsilon([*prior, MechanismEvent(sampling_rate, sigma, steps)], delta, how)

    def smallest(low: float, high: float, how: str, tolerance: float) -> float:
        """Bisect for the smallest sigma in [low, high] with cost <= target (high fits)."""
        while cost(low, how) <= target_epsilon and low > 1e-3:
            high, low = low, low / 2.0
        while (high - low) / high > tolerance:
            middle = (low + high) / 2.0
            if cost(middle, how) <= target_epsilon:
                high = middle
            else:
                low = middle
        return high

    # RDP bounds the tight accountants from above, so the (cheap) RDP answer is a noise
    # multiplier that certainly fits; the tight accountant then searches below it
    high = 1.0
    while cost(high, "rdp") > target_epsilon:
        high *= 2.0
        if high > 1000.0:
            raise InvalidInput(
                f"no noise multiplier up to 1000 keeps epsilon at or below {target_epsilon} "
                f"(delta {delta}, {steps} steps at sampling rate {sampling_rate:.4g})"
            )
    upper = smallest(high / 2.0, high, "rdp", 1e-3)
    if accountant == "rdp":
        return upper
    return smallest(upper / 2.0, upper, accountant, 2e-3)


def report(events: Sequence[MechanismEvent], delta: float) -> dict[str, float]:
    """The tight epsilon (PLD) and the RDP upper bound of ``events``."""
    return {"pld": epsilon(events, delta, "pld"), "rdp": epsilon(events, delta, "rdp")}
