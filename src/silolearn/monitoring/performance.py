"""Performance from feedback: statistical process control of a version's accuracy.

Each piece of feedback on a served prediction is one Bernoulli observation (the served label
was right or wrong). A version's chart is a Bernoulli CUSUM (Reynolds & Stoumbos 1999) on
the log-likelihood ratio of a drop from the accuracy ``p0`` the version showed on its own
early feedback (the burn-in) to ``p1 = p0 - shift``: each wrong answer adds ``up``, each
right one takes ``down`` away, the statistic never goes below zero and an alarm is raised
when it reaches ``limit``. The two steps are the log-likelihood ratios rounded to integers
on a fine grid, so the chart is a Markov chain on ``0 .. limit - 1`` whose average run
length (ARL: feedback items until an alarm) is computed exactly by one sparse linear solve.

The limit is not set by hand: it is the smallest whose in-control ARL reaches the configured
``arl0`` (the feedback items between false alarms). ``p0`` is only an estimate from the
burn-in, and a chart calibrated at an over-estimate raises false alarms more often; so the
ARL is guaranteed at the lower confidence bound of ``p0`` at level ``guarantee`` (the
guaranteed-performance idea of Gandy & Kvaløy 2013): with that probability over the
burn-in, the chart's false-alarm rate is at most the configured one. A chart arms only once
its burn-in has at least ``burn_in`` items and that bound lies above the accuracy where the
chart's expected step is zero (otherwise no finite limit keeps the promise); until then it
keeps learning ``p0``. docs/monitoring.md says why a CUSUM rather than an EWMA.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.sparse import csc_matrix  # type: ignore[import-untyped]  # scipy ships no stubs
from scipy.sparse.linalg import spsolve  # type: ignore[import-untyped]

RESOLUTION = 100
"""Grid steps in the larger of the two log-likelihood ratios."""
MAX_STATES = 200_000
"""The largest limit searched; a design that would need more is not armed."""


@dataclass(frozen=True, slots=True)
class ChartDesign:
    """A calibrated chart: its reference accuracies, integer steps, limit and promises."""

    p0: float
    """In-control accuracy estimated from the burn-in."""
    p1: float
    """The degraded accuracy the chart is tuned to detect fastest."""
    burn_in: int
    up: int
    """Added for a wrong answer."""
    down: int
    """Taken away for a right one."""
    limit: int
    """An alarm when the statistic reaches this."""
    guarded: float
    """The accuracy at which the in-control ARL is guaranteed (lower bound of ``p0``)."""
    arl0: float
    """The ARL at ``guarded``: at least the configured one."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def expected_delay(self, accuracy: float) -> float:
        """Zero-state ARL at ``accuracy``: the expected feedback items from a change to that
        accuracy to the alarm (an upper bound: after a stretch of right answers the
        statistic starts at zero, its farthest from the limit)."""
        return run_length(self.up, self.down, self.limit, accuracy)


def run_length(up: int, down: int, limit: int, accuracy: float) -> float:
    """Zero-state average run length of the integer CUSUM ``S <- max(0, S + step)`` with
    step ``+up`` (probability ``1 - accuracy``) or ``-down``, alarm at ``S >= limit``.

    ``L_i = 1 + (1 - a) L_{i+up} + a L_{max(0, i-down)}`` on the states below the limit: a
    sparse system with three entries a row, solved by SuperLU (a banded LAPACK solve is as
    exact but spins every BLAS thread of the process: 50x slower on a busy machine)."""
    if limit <= 0:
        return 1.0
    states = np.arange(limit)
    ups = states[states + up < limit]
    rows = np.concatenate([states, ups, states])
    cols = np.concatenate([states, ups + up, np.maximum(0, states - down)])
    values = np.concatenate(
        [np.ones(limit), np.full(len(ups), accuracy - 1.0), np.full(limit, -accuracy)]
    )
    system = csc_matrix((values, (rows, cols)), shape=(limit, limit))  # duplicates add up
    return float(spsolve(system, np.ones(limit))[0])


def _steps(p0: float, p1: float) -> tuple[int, int]:
    """The log-likelihood ratios of a wrong and a right answer on the integer grid."""
    wrong = math.log((1.0 - p1) / (1.0 - p0))
    right = -math.log(p1 / p0)
    unit = max(wrong, right) / RESOLUTION
    return max(1, round(wrong / unit)), max(1, round(right / unit))


def design_chart(
    correct: int, items: int, *, shift: float, arl0: float, guarantee: float
) -> ChartDesign | None:
    """The chart calibrated on a burn-in of ``items`` feedback, ``correct`` of them right;
    None when the burn-in cannot yet guarantee ``arl0`` at level ``guarantee``."""
    from scipy.stats import norm  # type: ignore[import-untyped]  # here: ~0.5 s a process to import

    if items <= 0:
        return None
    p0 = (correct + 0.5) / (items + 1.0)  # never 0 or 1: both steps stay finite
    p1 = max(p0 - shift, p0 / 4.0)
    up, down = _steps(p0, p1)
    neutral = up / (up + down)  # the accuracy where the expected step is zero
    spread = math.sqrt(p0 * (1.0 - p0) / items)
    guarded = p0 - float(norm.ppf(guarantee)) * spread
    if guarded <= neutral:
        return None
    limit = _smallest_limit(up, down, guarded, arl0)
    if limit is None:
        return None
    return ChartDesign(
        p0=p0,
        p1=p1,
        burn_in=items,
        up=up,
        down=down,
        limit=limit,
        guarded=guarded,
        arl0=run_length(up, down, limit, guarded),
    )


def _smallest_limit(up: int, down: int, accuracy: float, arl0: float) -> int | None:
    """The smallest limit whose ARL at ``accuracy`` reaches ``arl0`` (the ARL grows with
    the limit): doubling, then bisection."""
    high = up
    while run_length(up, down, high, accuracy) < arl0:
        high *= 2
        if high > MAX_STATES:
            return None
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if run_length(up, down, middle, accuracy) >= arl0:
            high = middle
        else:
            low = middle
    return high


class AccuracyChart:
    """One stream of right/wrong answers (a version's, or one slice's): a burn-in, then a
    calibrated CUSUM. ``update`` returns True when it raises an alarm; the statistic then
    starts again from zero with the same design (the version's reference does not move to
    the degraded level).

    >>> chart = AccuracyChart(burn_in=50, shift=0.1, arl0=500, guarantee=0.9)
    >>> [chart.update(True) for _ in range(45)].count(True), chart.design is None
    (0, True)
    >>> for i in range(200):
    ...     _ = chart.update(i % 10 != 0)
    >>> chart.design is not None and chart.design.limit > 0
    True
    >>> fired = [chart.update(i % 2 == 0) for i in range(400)]
    >>> 0 < fired.index(True) < 200
    True
    """

    def __init__(
        self,
        *,
        burn_in: int,
        shift: float,
        arl0: float,
        guarantee: float,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.burn_in = burn_in
        self.shift = shift
        self.arl0 = arl0
        self.guarantee = guarantee
        state = state or {}
        self.seen = int(state.get("seen", 0))
        self.baseline = list(state.get("baseline", [0, 0]))
        """[right, items] of the burn-in."""
        design = state.get("design")
        self.design = None if design is None else ChartDesign(**design)
        self.statistic = int(state.get("statistic", 0))
        self.alarms = int(state.get("alarms", 0))
        self.last_alarm = state.get("last_alarm")
        """The item number (of ``seen``) of the latest alarm."""
        self.alarm_statistic = int(state.get("alarm_statistic", 0))
        """The statistic when the latest alarm was raised (at or above the limit)."""

    def update(self, correct: bool) -> bool:
        self.seen += 1
        if self.design is None:
            self.baseline[0] += int(correct)
            self.baseline[1] += 1
            if self.baseline[1] >= self.burn_in:
                self.design = design_chart(
                    self.baseline[0],
                    self.baseline[1],
                    shift=self.shift,
                    arl0=self.arl0,
                    guarantee=self.guarantee,
                )
            return False
        step = -self.design.down if correct else self.design.up
        self.statistic = max(0, self.statistic + step)
        if self.statistic < self.design.limit:
            return False
        self.alarms += 1
        self.last_alarm = self.seen
        self.alarm_statistic = self.statistic
        self.statistic = 0
        return True

    @property
    def armed(self) -> bool:
        return self.design is not None

    def level(self) -> float:
        """The statistic as a share of the limit (0 while burning in)."""
        return 0.0 if self.design is None else self.statistic / self.design.limit

    def state(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "baseline": self.baseline,
            "design": None if self.design is None else self.design.to_dict(),
            "statistic": self.statistic,
            "alarms": self.alarms,
            "last_alarm": self.last_alarm,
            "alarm_statistic": self.alarm_statistic,
        }

    def summary(self) -> dict[str, Any]:
        """What the API and CLI show of the chart."""
        right, items = self.baseline
        out: dict[str, Any] = {
            "armed": self.armed,
            "burn_in": {"items": items, "accuracy": right / items if items else None},
            "statistic": self.statistic,
            "alarms": self.alarms,
            "last_alarm": self.last_alarm,
            "alarm_statistic": self.alarm_statistic,
        }
        if self.design is not None:
            out.update(
                limit=self.design.limit,
                level=round(self.level(), 4),
                reference_accuracy=round(self.design.p0, 4),
                detects_accuracy=round(self.design.p1, 4),
                guaranteed_at=round(self.design.guarded, 4),
                arl0=round(self.design.arl0, 1),
                expected_delay=round(self.design.expected_delay(self.design.p1), 1),
            )
        return out
