"""Drift tests: is what a tenant serves still drawn from what its version was trained on?

Three tests, each calibrated to a false-alarm rate instead of a hand-set threshold:

- ``mmd_test``: a window of served sentence embeddings against the reference embeddings of
  the version's training window, by the maximum mean discrepancy with an RBF kernel (its
  bandwidth the median distance of the pooled points) and a permutation p-value: exact
  under the null whatever the data, and the test is run at level ``window / ert``.
- ``OnlineMMD``: the sequential form, one embedding at a time over a sliding window (after
  alibi-detect's online MMD detector). Its threshold is calibrated so that the expected
  number of served items between false alarms is ``ert``: streams are drawn from a held-out
  half of the reference, and the threshold is the quantile of their maxima over ``L`` steps
  at ``exp(-L / ert)`` (the first passage of a rare threshold by a mixing sequence is close
  to exponential).
- ``label_test``: predicted labels (prediction drift) or feedback labels (label drift) of a
  window against the reference's, by the chi-square statistic with a permutation p-value
  (valid at the small counts where the chi-square distribution is not).

docs/monitoring.md says why these were written here rather than taken from a library.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from silolearn.errors import InvalidInput

FloatArray = npt.NDArray[np.float64]

_BANDWIDTH_POINTS = 1000
"""Points whose pairwise distances give the median heuristic (more change it little)."""


def median_bandwidth(points: npt.ArrayLike) -> float:
    """The median heuristic: the median pairwise Euclidean distance of ``points`` (the
    first ``_BANDWIDTH_POINTS`` of them), the RBF kernel's length scale."""
    x = np.asarray(points, dtype=np.float64)[:_BANDWIDTH_POINTS]
    d2 = _squared_distances(x, x)[np.triu_indices(len(x), k=1)]
    median = float(np.sqrt(np.median(d2))) if d2.size else 1.0
    return median if median > 0 else 1.0


def rbf_kernel(x: npt.ArrayLike, y: npt.ArrayLike, sigma: float) -> FloatArray:
    """``exp(-|x - y|^2 / (2 sigma^2))`` for every pair of rows."""
    d2 = _squared_distances(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.asarray(np.exp(-d2 / (2.0 * sigma * sigma)))


def _squared_distances(x: FloatArray, y: FloatArray) -> FloatArray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.asarray(np.maximum(d2, 0.0))


@dataclass(frozen=True, slots=True)
class WindowTest:
    """One window's test: its statistic, permutation p-value and the level it is run at."""

    statistic: float
    p_value: float
    alpha: float
    size: int

    @property
    def drift(self) -> bool:
        return self.p_value <= self.alpha

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "size": self.size,
            "drift": self.drift,
        }


def level(window: int, ert: float) -> float:
    """The level a test of each ``window`` items runs at for ``ert`` items between false
    alarms (one test per window)."""
    if ert < window:
        raise InvalidInput(f"ert {ert} is shorter than one window of {window}")
    return window / ert


MAX_PERMUTATIONS = 100_000
CALIBRATION_METHOD = 1
"""The online threshold's calibration method (``OnlineMMD._calibrate``): raised when it
changes, so that thresholds cached by an older one are calibrated again."""


def permutations_for(alpha: float, at_least: int) -> int:
    """Permutations enough for a p-value to reach ``alpha``: the smallest p-value of ``P``
    permutations is ``1 / (P + 1)``, so at a level below it a test could never alarm
    (``window / ert`` is 1e-4 for a window of 100 and one false alarm per million items).
    At least ``at_least``, at most ``MAX_PERMUTATIONS``."""
    return min(max(at_least, math.ceil(2.0 / alpha) - 1), MAX_PERMUTATIONS)


def mmd_test(
    reference: npt.ArrayLike,
    window: npt.ArrayLike,
    *,
    alpha: float,
    permutations: int = 1000,
    seed: int = 0,
    decide_only: bool = False,
) -> WindowTest:
    """The unbiased MMD^2 of ``window`` against ``reference`` and its permutation p-value
    (the bandwidth, a function of the pooled points, is the same under every permutation,
    so the p-value stays exact; past ``_BANDWIDTH_POINTS`` pooled points, those it is taken
    from are drawn at random from both sides, not the reference's first ones).
    ``decide_only``: stop permuting once the window cannot be rejected at ``alpha`` (see
    ``_decided``)."""
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    m, n = len(ref), len(win)
    if m < 2 or n < 2:
        raise InvalidInput("an MMD test needs at least two points on each side")
    pooled = np.vstack([ref, win])
    spread = pooled
    if m + n > _BANDWIDTH_POINTS:
        spread = pooled[np.random.default_rng([seed, 1]).permutation(m + n)]
    kernel = rbf_kernel(pooled, pooled, median_bandwidth(spread))
    np.fill_diagonal(kernel, 0.0)
    rng = np.random.default_rng(seed)
    observed_side = np.zeros((1, m + n))
    observed_side[0, :m] = 1.0
    observed = float(_mmd2_of_splits(kernel, observed_side, m, n)[0])
    exceed, done = 0, 0
    while done < permutations:
        # in chunks: the same permutations in the same order, a bounded matrix at a time
        chunk = min(_CHUNK, permutations - done)
        sides = np.zeros((chunk, m + n))
        for p in range(chunk):
            sides[p, rng.permutation(m + n)[:m]] = 1.0
        exceed += int(np.sum(_mmd2_of_splits(kernel, sides, m, n) >= observed))
        done += chunk
        if decide_only and _decided(exceed, done, permutations, alpha):
            break
    p_value = _p_value(exceed, done, permutations)
    return WindowTest(statistic=observed, p_value=p_value, alpha=alpha, size=n)


_CHUNK = 256


def _decided(exceed: int, done: int, permutations: int, alpha: float) -> bool:
    """Whether the full test's p-value ``(1 + exceed) / (permutations + 1)`` is above
    ``alpha`` whatever the permutations not yet drawn: the window is not rejected, and the
    rest would change no decision (only the p-value's precision)."""
    return done < permutations and (1 + exceed) / (permutations + 1) > alpha


def _p_value(exceed: int, done: int, permutations: int) -> float:
    """The permutation p-value; after a stop by ``_decided``, Besag and Clifford's (1991)
    sequential p-value ``exceed / done`` (valid, and above the level like the full one)."""
    if done < permutations:
        return exceed / done
    return (1 + exceed) / (permutations + 1)


def _mmd2_of_splits(kernel: FloatArray, sides: FloatArray, m: int, n: int) -> FloatArray:
    """Unbiased MMD^2 of each split (a row of ``sides``: 1 for the reference side), the
    kernel's diagonal zeroed. One product per split: with ``s`` the split and ``c`` the
    kernel's column sums (it is symmetric), ``s'K(1 - s) = s'c - s'Ks`` and
    ``(1 - s)'K(1 - s) = 1'K1 - 2 s'c + s'Ks``."""
    within_ref = np.einsum("pi,pi->p", sides @ kernel, sides)
    to_all = sides @ kernel.sum(0)
    cross = to_all - within_ref
    within_win = kernel.sum() - 2.0 * to_all + within_ref
    return np.asarray(
        within_ref / (m * (m - 1)) + within_win / (n * (n - 1)) - 2.0 * cross / (m * n)
    )


def label_test(
    reference: Sequence[str],
    window: Sequence[str],
    *,
    alpha: float,
    permutations: int = 1000,
    seed: int = 0,
    decide_only: bool = False,
) -> WindowTest:
    """Chi-square statistic of the two label samples' contingency table and its
    permutation p-value; the statistic is also the PSI's large-sample equivalent.
    ``decide_only``: stop permuting once the window cannot be rejected at ``alpha``."""
    if not reference or not window:
        raise InvalidInput("a label test needs labels on both sides")
    labels = sorted(set(reference) | set(window))
    codes = {label: i for i, label in enumerate(labels)}
    pooled = np.array([codes[x] for x in (*reference, *window)])
    m = len(reference)
    rng = np.random.default_rng(seed)
    observed = float(_chi2(pooled[None], m, len(labels))[0])
    exceed, done = 0, 0
    while done < permutations:
        chunk = min(_CHUNK, permutations - done)
        rows = np.stack([rng.permutation(pooled) for _ in range(chunk)])
        exceed += int(np.sum(_chi2(rows, m, len(labels)) >= observed))
        done += chunk
        if decide_only and _decided(exceed, done, permutations, alpha):
            break
    p_value = _p_value(exceed, done, permutations)
    return WindowTest(statistic=observed, p_value=p_value, alpha=alpha, size=len(window))


def _chi2(rows: npt.NDArray[np.int64], m: int, k: int) -> FloatArray:
    """The chi-square statistic of each row's 2 x k table (its first ``m`` codes against
    the rest), every row counted at once."""
    count = len(rows)
    offsets = (np.arange(count) * k)[:, None]
    first = np.bincount((rows[:, :m] + offsets).ravel(), minlength=count * k).reshape(count, k)
    total = np.bincount((rows + offsets).ravel(), minlength=count * k).reshape(count, k)
    table = np.stack([first, total - first], axis=1).astype(np.float64)
    expected = (
        table.sum(2, keepdims=True) * table.sum(1, keepdims=True) / table.sum((1, 2))[:, None, None]
    )
    safe = np.where(expected > 0, expected, 1.0)
    return np.asarray(np.where(expected > 0, (table - expected) ** 2 / safe, 0.0).sum((1, 2)))


def label_shares(labels: Sequence[str]) -> dict[str, float]:
    """Each label's share, for reports."""
    counts = Counter(labels)
    return {label: counts[label] / len(labels) for label in sorted(counts)} if labels else {}


class OnlineMMD:
    """Sequential MMD drift detector on a sliding window of ``window`` embeddings, its
    threshold calibrated to ``ert`` updates between false alarms. ``fit`` once on the
    reference; ``update`` one embedding at a time, then read ``statistic`` and
    ``drift_detected``; after a detection the window starts afresh.

    >>> rng = np.random.default_rng(0)
    >>> detector = OnlineMMD(window=20, ert=200, bootstraps=100).fit(rng.normal(size=(200, 4)))
    >>> same = [detector.update(x) for x in rng.normal(size=(60, 4))]
    >>> moved = [detector.update(x) for x in rng.normal(1.5, size=(40, 4))]
    >>> any(same), any(moved)
    (False, True)
    """

    def __init__(self, *, window: int, ert: float, bootstraps: int = 400, seed: int = 0) -> None:
        if window < 2:
            raise InvalidInput("an online MMD window holds at least two points")
        level(window, ert)
        self.window = window
        self.ert = ert
        self.bootstraps = bootstraps
        self.seed = seed
        self.statistic = 0.0
        self.drift_detected = False

    # -- calibration ------------------------------------------------------------------------

    def calibration_key(self, reference: npt.ArrayLike) -> dict[str, Any]:
        """Everything the calibrated threshold depends on: the settings, the reference's
        bytes (by digest) and the method's version. A threshold cached under another key is
        stale."""
        points = np.ascontiguousarray(np.asarray(reference, dtype="<f4"))
        return {
            "method": CALIBRATION_METHOD,
            "window": self.window,
            "ert": self.ert,
            "bootstraps": self.bootstraps,
            "seed": self.seed,
            "reference": hashlib.sha256(
                np.asarray(points.shape, dtype="<i8").tobytes() + points.tobytes()
            ).hexdigest(),
        }

    def fit(self, reference: npt.ArrayLike, *, threshold: float | None = None) -> OnlineMMD:
        """Half of ``reference`` (shuffled, seeded) is what windows are compared with, the
        other half draws the null streams the threshold is calibrated on. ``threshold``: one
        calibrated before under the same ``calibration_key``, taken instead of calibrating
        again (``calibrated_`` says which happened)."""
        points = np.asarray(reference, dtype=np.float64)
        half = len(points) // 2
        if half < self.window or half < 2:
            raise InvalidInput(
                f"an online MMD test of window {self.window} needs a reference of at least "
                f"{2 * self.window} points, got {len(points)}"
            )
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(points))
        self.reference_ = points[order[:half]]
        held_out = points[order[half:]]
        self.sigma_ = median_bandwidth(points)
        k_ref = rbf_kernel(self.reference_, self.reference_, self.sigma_)
        self.within_ref_ = float((k_ref.sum() - np.trace(k_ref)) / (half * (half - 1)))
        self.steps_ = int(min(max(self.ert / 2, 10 * self.window), 4000))
        self.calibrated_ = threshold is None
        self.threshold_ = self._calibrate(held_out, rng) if threshold is None else threshold
        self._restart()
        return self

    def _calibrate(self, held_out: FloatArray, rng: np.random.Generator) -> float:
        """The quantile, at ``exp(-steps / ert)``, of the largest statistic of each null
        stream over ``steps`` updates once its window is full."""
        k_held = rbf_kernel(held_out, held_out, self.sigma_)
        cross = rbf_kernel(held_out, self.reference_, self.sigma_).mean(1)
        length = self.window + self.steps_
        per_stream = math.ceil(length / len(held_out))
        streams = np.stack(
            [
                np.concatenate([rng.permutation(len(held_out)) for _ in range(per_stream)])[:length]
                for _ in range(self.bootstraps)
            ]
        )
        w = self.window
        first = streams[:, :w]
        pair_sum = k_held[first[:, :, None], first[:, None, :]].sum((1, 2)) - w  # k(x, x) = 1
        cross_sum = cross[first].sum(1)
        best = self._statistic(pair_sum, cross_sum)
        for t in range(w, length):
            leaving, entering = streams[:, t - w], streams[:, t]
            kept = streams[:, t - w + 1 : t]
            pair_sum += 2.0 * (
                k_held[entering[:, None], kept].sum(1) - k_held[leaving[:, None], kept].sum(1)
            )
            cross_sum += cross[entering] - cross[leaving]
            best = np.maximum(best, self._statistic(pair_sum, cross_sum))
        return float(np.quantile(best, math.exp(-self.steps_ / self.ert)))

    def _statistic(self, pair_sum: FloatArray | float, cross_sum: FloatArray | float) -> FloatArray:
        w = self.window
        return np.asarray(
            self.within_ref_ + pair_sum / (w * (w - 1)) - 2.0 * np.asarray(cross_sum) / w
        )

    # -- monitoring -------------------------------------------------------------------------

    def _restart(self) -> None:
        self._points: deque[FloatArray] = deque(maxlen=self.window)
        self._cross: deque[float] = deque(maxlen=self.window)
        self._pair_sum = 0.0
        self.statistic = 0.0
        self.drift_detected = False

    @property
    def ready(self) -> bool:
        """Whether the window is full (the statistic is watched)."""
        return len(self._points) == self.window

    def update(self, x: npt.ArrayLike) -> bool:
        """Add one embedding; whether drift is detected now (the window then restarts)."""
        if not hasattr(self, "threshold_"):
            raise InvalidInput("fit the online MMD detector on a reference first")
        if self.drift_detected:
            self._restart()
        point = np.asarray(x, dtype=np.float64).reshape(-1)
        if len(self._points) == self.window:
            leaving = self._points[0]
            rest = np.stack(list(self._points)[1:])
            self._pair_sum -= 2.0 * float(rbf_kernel(leaving[None], rest, self.sigma_).sum())
        if self._points:
            kept = np.stack(list(self._points)[-(self.window - 1) :])
            self._pair_sum += 2.0 * float(rbf_kernel(point[None], kept, self.sigma_).sum())
        self._points.append(point)
        self._cross.append(float(rbf_kernel(point[None], self.reference_, self.sigma_).mean()))
        if len(self._points) < self.window:
            return False
        self.statistic = float(self._statistic(self._pair_sum, sum(self._cross)))
        self.drift_detected = self.statistic > self.threshold_
        return self.drift_detected
