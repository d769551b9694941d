"""Privacy-attack statistics behind the release gates: pure, vectorised numpy/scipy.

- Membership inference: ROC AUC and TPR at a fixed low FPR with stratified percentile
  bootstrap intervals; the loss-threshold score of Yeom et al. 2018 ("Privacy Risk in Machine
  Learning: Analyzing the Connection to Overfitting"); the logit-scaled confidence and the
  offline LiRA score of Carlini et al. 2022 ("Membership Inference Attacks From First
  Principles").
- Memorisation: exposure of inserted canaries, Carlini et al. 2019 ("The Secret Sharer:
  Evaluating and Testing Unintended Memorization in Neural Networks"), both from the sampled
  rank and by the paper's distribution-modelling extrapolation; a one-sided Mann-Whitney
  test of inserted canaries' exposures against never-inserted controls'.
- Auditing: the one-run (epsilon, delta)-DP lower bound of Steinke, Nasr, Jagielski 2023
  ("Privacy Auditing with One (1) Training Run", arXiv 2305.08846, main theorem, Sec. 3).

Scores are "higher means member" throughout. Invalid input raises ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special  # type: ignore[import-untyped]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_SIGMA_FLOOR = 1e-6  # smallest standard deviation LiRA and the exposure fit divide by
_LIRA_GLOBAL_BELOW = 16  # fewer reference models than this: one pooled variance
_MIN_SKEWNORM_SAMPLES = 20
_BOOTSTRAP_CELLS = 4_000_000  # bootstrap replicates are processed in chunks of this many cells
_GRID = 64  # eps grid points per refinement round of the one-run bound search
_EXACT_PARTITIONS = 20_000  # up to this many splits (8 + 8 is 12,870) the U test is exact


def _scores(x: npt.ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def _unit_open(x: float, name: str) -> float:
    x = float(x)
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {x}")
    return x


def _count(x: int, name: str, minimum: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {x!r}")
    return int(x)


def _r6(x: float) -> float:
    return round(float(x), 6)


# --------------------------------------------------------------------------- membership


def roc_auc(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike) -> float:
    """AUC of "higher score means member": U / (n_m n_n), a tie counting 1/2."""
    m = _scores(member_scores, "member_scores")
    n = np.sort(_scores(nonmember_scores, "nonmember_scores"))
    below = np.searchsorted(n, m, side="left").sum(dtype=np.float64)
    at_or_below = np.searchsorted(n, m, side="right").sum(dtype=np.float64)
    return float((below + at_or_below) / (2.0 * m.size * n.size))


def _false_positives_allowed(fpr: float, n_nonmembers: int) -> int:
    # the tiny slack keeps e.g. 0.07 * 100 = 7.000000000000001 from rounding the wrong way
    return math.floor(fpr * n_nonmembers + 1e-9)


def _check_fpr(fpr: float) -> float:
    fpr = float(fpr)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    return fpr


def tpr_at_fpr(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, fpr: float) -> float:
    """Largest TPR of "member iff score >= t" over thresholds t with FPR <= ``fpr``.

    With k = floor(fpr * n_nonmembers) false positives allowed, the best threshold lies just
    above the (k+1)-th largest non-member score, so TPR = #{members > that score} / n_members;
    k = 0 means t strictly above the largest non-member score.
    """
    m = _scores(member_scores, "member_scores")
    n = _scores(nonmember_scores, "nonmember_scores")
    k = _false_positives_allowed(_check_fpr(fpr), n.size)
    if k >= n.size:
        return 1.0
    cutoff = np.partition(n, n.size - k - 1)[n.size - k - 1]
    return float(np.count_nonzero(m > cutoff) / m.size)


def _fpr_key(fpr: float) -> str:
    return format(float(fpr), "g")


@dataclass(frozen=True)
class AttackMetrics:
    """Point estimates on the full data and two-sided percentile bootstrap intervals."""

    auc: float
    auc_ci: tuple[float, float]
    tpr: dict[str, float]
    tpr_ci: dict[str, tuple[float, float]]
    n_members: int
    n_nonmembers: int
    confidence: float
    n_bootstrap: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "auc": _r6(self.auc),
            "auc_ci": [_r6(v) for v in self.auc_ci],
            "tpr": {k: _r6(v) for k, v in self.tpr.items()},
            "tpr_ci": {k: [_r6(v) for v in ci] for k, ci in self.tpr_ci.items()},
            "n_members": int(self.n_members),
            "n_nonmembers": int(self.n_nonmembers),
            "confidence": _r6(self.confidence),
            "n_bootstrap": int(self.n_bootstrap),
        }


def _resample_counts(rng: np.random.Generator, b: int, n: int) -> IntArray:
    """(b, n) multiplicities of n draws with replacement from n items, per replicate."""
    idx = rng.integers(0, n, size=(b, n))
    idx += np.arange(b, dtype=idx.dtype)[:, None] * n
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)


def _cumulative(counts: IntArray) -> IntArray:
    """(b, n + 1): column j is how many resampled items sit at sorted positions < j."""
    out = np.zeros((counts.shape[0], counts.shape[1] + 1), dtype=np.int64)
    np.cumsum(counts, axis=1, out=out[:, 1:])
    return out


def attack_metrics(
    member_scores: npt.ArrayLike,
    nonmember_scores: npt.ArrayLike,
    *,
    fprs: Sequence[float] = (0.01, 0.001),
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator,
) -> AttackMetrics:
    """AUC and TPR at each of ``fprs``, with stratified percentile bootstrap intervals.

    Each replicate resamples members and non-members separately with replacement. Replicates
    are evaluated on multiplicity vectors over the once-sorted data (no per-replicate sort):
    cumulative non-member counts give each member's below/tied counts for the AUC and the
    (k+1)-th largest resampled non-member for the TPR.
    """
    m = np.sort(_scores(member_scores, "member_scores"))
    n = np.sort(_scores(nonmember_scores, "nonmember_scores"))
    n_boot = _count(n_bootstrap, "n_bootstrap", 1)
    confidence = _unit_open(confidence, "confidence")
    fpr_list = [_check_fpr(f) for f in fprs]
    n_m, n_n = m.size, n.size

    below = np.searchsorted(n, m, side="left")  # non-members strictly below each member
    at_or_below = np.searchsorted(n, m, side="right")
    auc = float((below.sum(dtype=np.float64) + at_or_below.sum(dtype=np.float64)) / (2 * n_m * n_n))
    tpr = {_fpr_key(f): tpr_at_fpr(m, n, f) for f in fpr_list}

    allowed = [_false_positives_allowed(f, n_n) for f in fpr_list]
    boot_auc = np.empty(n_boot)
    boot_tpr = np.empty((len(fpr_list), n_boot))
    chunk = max(1, _BOOTSTRAP_CELLS // (n_m + n_n))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rows = np.arange(b)
        w_m = _resample_counts(rng, b, n_m)
        c_n = _cumulative(_resample_counts(rng, b, n_n))
        pairs = np.einsum("bi,bi->b", w_m, c_n[:, below] + c_n[:, at_or_below])
        boot_auc[start : start + b] = pairs / (2.0 * n_m * n_n)
        c_m = _cumulative(w_m)
        for row, k in enumerate(allowed):
            if k >= n_n:
                boot_tpr[row, start : start + b] = 1.0
                continue
            # sorted position of the (k+1)-th largest resampled non-member
            pos = np.count_nonzero(c_n[:, :n_n] <= n_n - k - 1, axis=1) - 1
            above = np.searchsorted(m, n[pos], side="right")
            boot_tpr[row, start : start + b] = (n_m - c_m[rows, above]) / n_m

    q = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    lo, hi = np.quantile(boot_auc, q)
    tpr_ci: dict[str, tuple[float, float]] = {}
    for row, f in enumerate(fpr_list):
        t_lo, t_hi = np.quantile(boot_tpr[row], q)
        tpr_ci[_fpr_key(f)] = (float(t_lo), float(t_hi))
    return AttackMetrics(
        auc=auc,
        auc_ci=(float(lo), float(hi)),
        tpr=tpr,
        tpr_ci=tpr_ci,
        n_members=n_m,
        n_nonmembers=n_n,
        confidence=confidence,
        n_bootstrap=n_boot,
    )


def loss_threshold_scores(losses: npt.ArrayLike) -> FloatArray:
    """Yeom et al.: ``-losses``, lower loss meaning member."""
    return -_scores(losses, "losses")


def logit_confidence(logits: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """phi = z_y - logsumexp_{j != y} z_j = log(p_y / (1 - p_y)), stable for any logits."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError("logits must have shape (n, C) with n >= 1 and C >= 2")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("labels must be integers of shape (n,)")
    if np.any(y < 0) or np.any(y >= z.shape[1]):
        raise ValueError("labels out of range")
    rows = np.arange(z.shape[0])
    z_y = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    out: FloatArray = z_y - special.logsumexp(others, axis=1)
    return out


def lira_offline_scores(
    target_phi: npt.ArrayLike,
    reference_phi: npt.ArrayLike,
    *,
    global_variance: bool | None = None,
) -> FloatArray:
    """Offline LiRA: (phi - mu_out) / sigma_out, higher meaning member.

    ``reference_phi`` (R, n) holds each example's phi under R models that did not train on
    it. mu_out is the per-example mean. sigma_out is per-example (std over the R models) or,
    with ``global_variance`` (default when R < 16, required when R = 1), one std of all R * n
    reference values, as in the authors' reference code. sigma is floored at 1e-6.
    """
    t = _scores(target_phi, "target_phi")
    ref = np.asarray(reference_phi, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] < 1 or ref.shape[1] != t.size:
        raise ValueError("reference_phi must have shape (R, n) with R >= 1, n = len(target_phi)")
    if not np.all(np.isfinite(ref)):
        raise ValueError("reference_phi must be finite")
    n_ref = ref.shape[0]
    pooled = n_ref < _LIRA_GLOBAL_BELOW if global_variance is None else global_variance
    if not pooled and n_ref < 2:
        raise ValueError("a per-example variance needs at least 2 reference models")
    mu = ref.mean(axis=0)
    sigma = np.full(t.size, ref.std()) if pooled else ref.std(axis=0)
    out: FloatArray = (t - mu) / np.maximum(sigma, _SIGMA_FLOOR)
    return out


# --------------------------------------------------------------------------- exposure


def _space_bits(space_size: int) -> float:
    return math.log2(_count(space_size, "space_size", 1))


def exposure_from_rank(rank: int, space_size: int) -> float:
    """Secret Sharer exposure log2|R| - log2(rank) for a 1-based rank among |R| candidates."""
    r = _count(rank, "rank", 1)
    if r > space_size:
        raise ValueError("rank cannot exceed space_size")
    return _space_bits(space_size) - math.log2(r)


@dataclass(frozen=True)
class ExposureReport:
    """Per-canary exposures in bits, and their maxima."""

    empirical: list[float]
    extrapolated: list[float]
    max: float
    max_empirical: float
    space_bits: float
    samples: int
    fit: str  # "skewnorm" or "normal": the distribution the extrapolation used

    def to_dict(self) -> dict[str, Any]:
        return {
            "empirical": [_r6(v) for v in self.empirical],
            "extrapolated": [_r6(v) for v in self.extrapolated],
            "max": _r6(self.max),
            "max_empirical": _r6(self.max_empirical),
            "space_bits": _r6(self.space_bits),
            "samples": int(self.samples),
            "fit": self.fit,
        }


def _fit_logcdf(alt: FloatArray, x: FloatArray) -> tuple[FloatArray, str]:
    """log CDF at ``x`` of a skew-normal fitted to ``alt``; a normal fit when that fails."""
    from scipy import stats  # here: ~0.5 s a process to import

    if alt.size >= _MIN_SKEWNORM_SAMPLES and alt.std() > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a, loc, scale = stats.skewnorm.fit(alt)
                if np.all(np.isfinite([a, loc, scale])) and scale > 0:
                    out = np.asarray(stats.skewnorm.logcdf(x, a, loc, scale), dtype=np.float64)
                    if not np.any(np.isnan(out)):
                        return out, "skewnorm"
        except (ValueError, RuntimeError, FloatingPointError):
            pass
    scale = max(float(alt.std()), _SIGMA_FLOOR)
    normal = np.asarray(stats.norm.logcdf(x, float(alt.mean()), scale), dtype=np.float64)
    return normal, "normal"


def exposure(
    canary_losses: npt.ArrayLike, alternative_losses: npt.ArrayLike, space_size: int
) -> ExposureReport:
    """Exposure of each inserted canary among |R| = ``space_size`` same-template candidates.

    ``alternative_losses`` are S candidates drawn uniformly from R (inserted ones excluded).
    Empirical: log2|R| - log2(|R| (c + 1) / (S + 1)), c = #alternatives with loss < the
    canary's: the rank's quantile as the sample shows it, so at most log2(S + 1) bits (a canary
    that outranks all S alternatives is only known to sit in the top 1/(S + 1) of R).
    Extrapolated (the paper's distribution-modelling estimate): -log2 CDF(canary loss) under a
    skew-normal fitted to the alternatives (a normal if S < 20 or the fit fails), clipped to
    [0, log2|R|].
    """
    canaries = _scores(canary_losses, "canary_losses")
    alt = np.sort(_scores(alternative_losses, "alternative_losses"))
    bits = _space_bits(space_size)
    below = np.searchsorted(alt, canaries, side="left").astype(np.float64)
    log2_rank = bits + np.log2((below + 1.0) / (alt.size + 1.0))
    empirical = np.clip(bits - log2_rank, 0.0, bits)
    logcdf, fit = _fit_logcdf(alt, canaries)
    extrapolated = np.clip(-logcdf / math.log(2.0), 0.0, bits)
    return ExposureReport(
        empirical=[float(v) for v in empirical],
        extrapolated=[float(v) for v in extrapolated],
        max=float(extrapolated.max()),
        max_empirical=float(empirical.max()),
        space_bits=bits,
        samples=int(alt.size),
        fit=fit,
    )


@dataclass(frozen=True)
class ShiftTest:
    """One-sided Mann-Whitney U test that ``inserted`` values exceed ``controls``."""

    p_value: float
    u: float
    method: str  # "exact" (every split enumerated) or "asymptotic" (normal, tie-corrected)
    smallest_p: float
    """The smallest p-value these sample sizes can give (1 / C(n + m, n) when exact)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_value": float(f"{self.p_value:.6g}"),
            "u": _r6(self.u),
            "method": self.method,
            "smallest_p": float(f"{self.smallest_p:.6g}"),
        }


def shift_test(inserted: npt.ArrayLike, controls: npt.ArrayLike) -> ShiftTest:
    """Is a value drawn from ``inserted`` larger than one drawn from ``controls``?

    Exact over every split of the pooled values (ties take midranks) when there are at most
    20,000 splits; otherwise the normal approximation with the tie correction. Deterministic:
    no sampling, so a verdict is reproducible from the numbers it stores.
    """
    from scipy import stats  # here: ~0.5 s a process to import

    x = _scores(inserted, "inserted")
    y = _scores(controls, "controls")
    splits = math.comb(x.size + y.size, x.size)
    method: Any = "asymptotic"
    if splits <= _EXACT_PARTITIONS:
        method = stats.PermutationMethod(n_resamples=_EXACT_PARTITIONS)
    result = stats.mannwhitneyu(x, y, alternative="greater", method=method)
    exact = splits <= _EXACT_PARTITIONS
    if exact:
        smallest = 1.0 / splits
    else:  # U at its maximum n m, standardised (no ties)
        smallest = float(stats.norm.sf(math.sqrt(3.0 * x.size * y.size / (x.size + y.size + 1))))
    return ShiftTest(
        p_value=float(result.pvalue),
        u=float(result.statistic),
        method="exact" if exact else "asymptotic",
        smallest_p=smallest,
    )


# --------------------------------------------------------------------------- one-run audit


def one_run_guesses(scores: npt.ArrayLike, k_plus: int, k_minus: int) -> npt.NDArray[np.int8]:
    """+1 for the ``k_plus`` highest scores, -1 for the ``k_minus`` lowest, 0 otherwise.

    Ties are broken by index: among equal scores a later index ranks higher.
    """
    s = _scores(scores, "scores")
    kp = _count(k_plus, "k_plus")
    km = _count(k_minus, "k_minus")
    if kp + km > s.size:
        raise ValueError("k_plus + k_minus cannot exceed the number of canaries")
    order = np.argsort(s, kind="stable")
    guesses = np.zeros(s.size, dtype=np.int8)
    guesses[order[:km]] = -1
    guesses[order[s.size - kp :]] = 1
    return guesses


def _p_values(eps: FloatArray, m: int, r: int, v: int, delta: float) -> FloatArray:
    """The main theorem's bound on P[W >= v] under (eps, delta)-DP, one value per eps.

    f(v) + 2 m delta max_{1<=i<=v} (f(v - i) - f(v)) / i, f(u) = P[Binomial(r, q) >= u],
    q = e^eps / (1 + e^eps). For i > v, f(v - i) = 1 and the ratio only falls, so i <= v.
    """
    from scipy import stats  # here: ~0.5 s a process to import

    q = special.expit(eps)
    tail = np.asarray(stats.binom.sf(v - 1, r, q), dtype=np.float64)
    if delta == 0.0 or v == 0:
        return np.minimum(tail, 1.0)
    k = np.arange(v - 1, -1, -1)  # v-1, v-2, ..., 0: f(v - i) - f(v) sums pmf over v-i..v-1
    pmf = stats.binom.pmf(k[None, :], r, q[:, None])
    ratio = np.cumsum(pmf, axis=1) / np.arange(1, v + 1)
    out: FloatArray = np.minimum(tail + 2.0 * m * delta * ratio.max(axis=1), 1.0)
    return out


def one_run_epsilon_lower_bound(
    correct: int, guesses: int, *, m: int, delta: float, confidence: float = 0.95
) -> float:
    """Largest eps such that "(eps, delta)-DP" is rejected at ``confidence`` by the count.

    m canaries, each included independently with probability 1/2; ``guesses`` guesses made,
    ``correct`` of them right. Rejection means the main theorem of Steinke, Nasr, Jagielski
    2023 bounds P[correct guesses >= correct] below 1 - confidence. With delta = 0 that
    is P[Binomial(guesses, e^eps / (1 + e^eps)) >= correct]. The search returns the lower end
    of the first crossing (bracketing, then grid bisection), so every eps up to it is
    rejected; 0.0 if eps = 0 is not rejected or no guesses were made.
    """
    m = _count(m, "m", 1)
    r = _count(guesses, "guesses")
    v = _count(correct, "correct")
    if v > r:
        raise ValueError("correct cannot exceed guesses")
    if r > m:
        raise ValueError("guesses cannot exceed m")
    delta = float(delta)
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    alpha = 1.0 - _unit_open(confidence, "confidence")
    if r == 0 or v == 0:
        return 0.0

    def p(e: FloatArray) -> FloatArray:
        return _p_values(e, m, r, v, delta)

    if p(np.zeros(1))[0] >= alpha:
        return 0.0
    # p(eps) -> 1 as eps grows (f(v) -> 1 for v <= r), so a bracket [0, hi] exists
    hi = 1.0
    while p(np.array([hi]))[0] < alpha:
        if hi >= 1e4:  # numerically unreachable; keep the last eps known to be rejected
            return hi
        hi *= 2.0
    lo = 0.0  # invariant: every grid eps up to lo is rejected, hi is not
    while hi - lo > 1e-9 * max(1.0, hi):
        grid = np.linspace(lo, hi, _GRID + 1)
        accepted = p(grid) >= alpha
        first = int(np.argmax(accepted))  # first eps on the grid that is not rejected
        if first == 0:  # p(lo) < alpha was already established; only rounding lands here
            break
        lo, hi = float(grid[first - 1]), float(grid[first])
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """Guesses made from canary scores and the epsilon lower bound they support."""

    m: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    delta: float
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "m": int(self.m),
            "k_plus": int(self.k_plus),
            "k_minus": int(self.k_minus),
            "guesses": int(self.guesses),
            "correct": int(self.correct),
            "epsilon_lower_bound": _r6(self.epsilon_lower_bound),
            "delta": float(self.delta),
            "confidence": _r6(self.confidence),
        }


def one_run_audit(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    k_plus: int,
    k_minus: int,
    delta: float,
    confidence: float = 0.95,
) -> OneRunAudit:
    """Guess inclusion from ``scores`` (higher = included), score them against ``included``."""
    inc = np.asarray(included)
    s = _scores(scores, "scores")
    if inc.dtype != np.bool_ or inc.shape != s.shape:
        raise ValueError("included must be a boolean array shaped like scores")
    g = one_run_guesses(s, k_plus, k_minus)
    made = int(np.count_nonzero(g))
    correct = int(np.count_nonzero((g == 1) & inc) + np.count_nonzero((g == -1) & ~inc))
    bound = one_run_epsilon_lower_bound(correct, made, m=s.size, delta=delta, confidence=confidence)
    return OneRunAudit(
        m=int(s.size),
        k_plus=int(k_plus),
        k_minus=int(k_minus),
        guesses=made,
        correct=correct,
        epsilon_lower_bound=bound,
        delta=float(delta),
        confidence=float(confidence),
    )
