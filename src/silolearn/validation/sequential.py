"""Comparisons of a canary with the stable version that stay valid however often they look.

Accuracy: each version's feedback (right or wrong) gets a confidence sequence, the set of
accuracies ``p`` whose beta-binomial mixture martingale (a uniform prior on the accuracy,
against the likelihood of ``p``) stays below ``1 / alpha``. By Ville's inequality a
martingale under ``p`` ever reaches ``1 / alpha`` with probability at most ``alpha``, so the
sequence covers the true accuracy at every number of feedback items at once with
probability at least ``1 - alpha``: looking after every item costs nothing. Two sequences
at ``alpha / 2`` bound the difference canary minus stable at ``1 - alpha`` (a union bound).

Predicted labels: a chi-square test of homogeneity of the labels each version predicted.
It is not valid under continuous peeking, so it looks only at canary counts
``first, 2 first, 4 first, ...`` and spends ``alpha / 2^(j+1)`` at look ``j``: the false
alarms of all looks together stay below ``alpha``.

    >>> lower, upper = accuracy_bounds(80, 100, 0.05)
    >>> round(float(lower), 3), round(float(upper), 3)
    (0.652, 0.907)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special  # type: ignore[import-untyped]

FloatArray = NDArray[np.float64]
_BISECTIONS = 60


def _log_mixture(successes: FloatArray, failures: FloatArray, p: FloatArray) -> FloatArray:
    """log of the beta-binomial mixture (uniform prior) over the likelihood at ``p``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_likelihood = np.where(successes > 0, successes * np.log(p), 0.0) + np.where(
            failures > 0, failures * np.log1p(-p), 0.0
        )
    result: FloatArray = special.betaln(successes + 1.0, failures + 1.0) - log_likelihood
    return result


def accuracy_bounds(
    successes: ArrayLike, trials: ArrayLike, alpha: float
) -> tuple[FloatArray, FloatArray]:
    """The ``1 - alpha`` confidence sequence of an accuracy after ``successes`` right of
    ``trials`` (arrays give one interval per element, for simulations)."""
    s = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    s, n = np.broadcast_arrays(s, n)
    f = n - s
    threshold = np.log(1.0 / alpha)
    centre = np.where(n > 0, s / np.maximum(n, 1.0), 0.5)
    # the log-mixture is convex in p with its minimum (<= 0) at the observed accuracy: each
    # bound is the one crossing of the threshold on its side, found by bisection
    lower = _crossing(s, f, np.zeros_like(centre), centre, threshold, rising_left=True)
    upper = _crossing(s, f, centre, np.ones_like(centre), threshold, rising_left=False)
    lower = np.where(s > 0, lower, 0.0)
    upper = np.where(f > 0, upper, 1.0)
    return lower, upper


def _crossing(
    s: FloatArray,
    f: FloatArray,
    lo: FloatArray,
    hi: FloatArray,
    threshold: float,
    *,
    rising_left: bool,
) -> FloatArray:
    lo, hi = lo.copy(), hi.copy()
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2.0
        inside = _log_mixture(s, f, np.clip(mid, 1e-12, 1 - 1e-12)) < threshold
        if rising_left:  # outside on the left of the crossing
            lo, hi = np.where(inside, lo, mid), np.where(inside, mid, hi)
        else:
            lo, hi = np.where(inside, mid, lo), np.where(inside, hi, mid)
    return (lo + hi) / 2.0


def difference_bounds(
    canary: tuple[ArrayLike, ArrayLike], stable: tuple[ArrayLike, ArrayLike], alpha: float
) -> tuple[FloatArray, FloatArray]:
    """The ``1 - alpha`` confidence sequence of accuracy canary minus stable, each given
    as ``(right, feedback)``."""
    canary_low, canary_high = accuracy_bounds(*canary, alpha / 2.0)
    stable_low, stable_high = accuracy_bounds(*stable, alpha / 2.0)
    return canary_low - stable_high, canary_high - stable_low


@dataclass(frozen=True, slots=True)
class DriftLook:
    """One look of the predicted-label test: its statistic, p-value, the alpha it spent,
    the total variation distance between the two label distributions, and the verdict."""

    look: int
    canary_predictions: int
    statistic: float
    p_value: float
    alpha: float
    distance: float
    abnormal: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "look": self.look,
            "canary_predictions": self.canary_predictions,
            "chi2": round(self.statistic, 4),
            "p_value": self.p_value,
            "alpha": self.alpha,
            "distance": round(self.distance, 4),
            "abnormal": self.abnormal,
        }


def look_due(canary_predictions: int, looks: int, first: int) -> bool:
    """Whether the predicted-label test's next look (at ``first * 2**looks``) is due."""
    return canary_predictions >= first * (1 << looks)


def label_drift(
    canary: dict[str, int],
    stable: dict[str, int],
    *,
    look: int,
    alpha: float,
    min_distance: float,
) -> DriftLook:
    """Look ``look`` of the test of the canary's predicted labels against stable's: abnormal
    when the chi-square test rejects at ``alpha / 2^(look+1)`` and the distributions are at
    least ``min_distance`` apart in total variation (a large, not merely detectable,
    change)."""
    from scipy import stats  # here: ~0.5 s a process to import

    labels = sorted(set(canary) | set(stable))
    table = np.array([[canary.get(x, 0) for x in labels], [stable.get(x, 0) for x in labels]])
    table = table[:, table.sum(axis=0) > 0]
    spent = alpha / 2.0 ** (look + 1)
    n_canary = int(table[0].sum())
    if table.shape[1] < 2 or n_canary == 0 or table[1].sum() == 0:
        return DriftLook(look, n_canary, 0.0, 1.0, spent, 0.0, False)
    result = stats.chi2_contingency(table, correction=False)
    shares = table / table.sum(axis=1, keepdims=True)
    distance = float(np.abs(shares[0] - shares[1]).sum() / 2.0)
    p_value = float(result.pvalue)
    return DriftLook(
        look,
        n_canary,
        float(result.statistic),
        p_value,
        spent,
        distance,
        bool(p_value < spent and distance >= min_distance),
    )
