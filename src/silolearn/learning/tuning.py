"""The self-tuning fit of a head: a full-batch L-BFGS fit whose L2 strength is chosen by
k-fold cross-validation on the run's own training records, never on the eval store.

Why this and not a fixed schedule: a multinomial logistic regression on the frozen
embeddings is a convex problem, so its optimum does not depend on a learning rate, an epoch
count or the order of the records, only on the data and the L2 strength; cross-validation
picks the strength per run from the data in front of it. That is what lets the default
head learn well on a tenant nobody tuned for.

- Folds are grouped by content: every copy of a normalised text falls in one fold, so a
  text repeated many times cannot score itself and make weak regularisation look good.
  Groups are dealt to folds round-robin in (label, keyed order), which stratifies them.
- Class weighting is chosen by the same cross-validation (objective ``auto``, the default):
  an unweighted fit and an inverse-frequency (``balanced``) fit, each with its C chosen by
  its own held-out log loss (class-weighted for the balanced fit; macro-F1, a step function
  of the scores, ties across strengths and would pick the strongest penalty), are both
  cross-validated on the same folds, and the one whose out-of-fold predictions score the
  higher mean of accuracy and macro-F1 is kept (ties: unweighted). A tenant is judged on
  both: accuracy rewards the label prior, which balancing throws away, and macro-F1 (what
  the quality gate compares) rewards the rare labels, which an unweighted fit neglects
  when they are hard to separate. Neither always wins: on speaker attribution with a few
  dominant speakers, balancing raised both (out of sample +0.01-0.05 accuracy, +0.07-0.12
  macro-F1); on an 88/12 tabular tenant it costs accuracy. ``log_loss`` or ``macro_f1``
  asks for one of the two.
- A warm start is a prior: the penalty is ``lambda/2 * ||W - W_parent||^2`` (L2-SP), so a
  round on new records and a replay sample keeps what its parent knew unless the data say
  otherwise; labels new in the round are pulled towards zero.
- The MLP head is fitted the same way (L-BFGS from a seeded initialisation, its L2 chosen
  by cross-validation on a shorter grid).

Everything runs on one thread with deterministic kernels (float32: float64 doubled the
time for no measurable change in the chosen strength), and the data order is the caller's:
the same records and seed give the same bits (I4).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
"""Inverse L2 strengths tried, in scikit-learn's convention for unit-length embeddings
(penalty ``||W||^2 / (2 C)`` on the summed loss); from strongest to weakest, so each fit
warm-starts from the previous one."""
MLP_C_GRID = (1.0, 10.0, 100.0)
WEIGHTINGS = {
    "auto": ("none", "balanced"),
    "log_loss": ("none",),
    "macro_f1": ("balanced",),
}
"""The class weightings cross-validation tries, per objective."""
STRONGER_C = (0.001, 0.003, 0.01, 0.03, 0.1)
"""Where a grid extends when an upper bound on C (``TrainingConfig.max_c``) leaves little
of it: the penalties a remediation may need beyond the usual strongest."""
ECE_BINS = 15

IntArray = npt.NDArray[np.int64]


def content_key(text: str) -> str:
    """The group of a text: its normalised form (case and whitespace folded)."""
    return " ".join(text.lower().split())


def assign_folds(groups: Sequence[str], labels: IntArray, k: int, seed: int) -> IntArray:
    """A fold per record such that records of one group share a fold. Groups are dealt
    round-robin in order of (majority label, keyed hash), so each label spreads over the
    folds as evenly as its groups allow."""
    first: dict[str, int] = {}
    for i, g in enumerate(groups):
        first.setdefault(g, i)
    salt = str(seed).encode()
    order = sorted(
        first,
        key=lambda g: (int(labels[first[g]]), hashlib.sha256(salt + g.encode()).digest()),
    )
    fold_of = {g: i % k for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


def expected_calibration_error(proba: npt.NDArray[Any], y: IntArray, bins: int = ECE_BINS) -> float:
    """ECE of the top-label confidence over equal-width bins."""
    if len(y) == 0:
        return 0.0
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        rows = edges == b
        if rows.any():
            total += abs(float(correct[rows].mean()) - float(confidence[rows].mean())) * int(
                rows.sum()
            )
    return total / len(y)


def macro_f1(truth: IntArray, predicted: IntArray, n_labels: int) -> float:
    present = np.union1d(np.unique(truth), np.unique(predicted))
    scores = []
    for label in present:
        tp = float(np.sum((truth == label) & (predicted == label)))
        fp = float(np.sum((truth != label) & (predicted == label)))
        fn = float(np.sum((truth == label) & (predicted != label)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@dataclass(frozen=True, slots=True)
class Tuned:
    """What the cross-validation chose and why."""

    c: float
    objective: str
    folds: int
    grid: tuple[float, ...]
    scores: tuple[float, ...]
    """Mean held-out score per grid value (log loss: lower is better; macro-F1: higher)."""
    errors: tuple[float, ...]
    """Standard error of each mean over the folds."""
    ece: float
    """Expected calibration error of the out-of-fold probabilities at the chosen ``c``."""
    oof_accuracy: float
    oof_macro_f1: float
    rule: str
    weighting: str = "none"
    """``none`` (unweighted log loss) or ``balanced`` (inverse-frequency class weights)."""
    alternatives: tuple[dict[str, Any], ...] = ()
    """The other weightings cross-validated: their chosen C and out-of-fold scores."""
    oof_predicted: tuple[int, ...] = ()
    """Each record's out-of-fold predicted label (an index) at the chosen ``c``: what the
    head answers on texts it did not train on (drift monitoring's reference); not in
    ``to_dict``, it is no summary."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "c": self.c,
            "objective": self.objective,
            "folds": self.folds,
            "grid": list(self.grid),
            "cv_scores": [round(s, 6) for s in self.scores],
            "cv_errors": [round(s, 6) for s in self.errors],
            "ece": round(self.ece, 6),
            "oof_accuracy": round(self.oof_accuracy, 6),
            "oof_macro_f1": round(self.oof_macro_f1, 6),
            "rule": self.rule,
            "weighting": self.weighting,
            "alternatives": list(self.alternatives),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "weighting": self.weighting,
            "c": self.c,
            "oof_accuracy": round(self.oof_accuracy, 6),
            "oof_macro_f1": round(self.oof_macro_f1, 6),
        }


class LbfgsProblem:
    """Penalised cross-entropy of one head (linear or MLP) on fixed inputs, minimised by
    full-batch L-BFGS with a strong-Wolfe line search."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        class_weights: torch.Tensor | None,
        prior: dict[str, torch.Tensor] | None,
        max_iter: int,
    ) -> None:
        self.module = module.float()
        self.class_weights = None if class_weights is None else class_weights.float()
        self.prior = prior
        self.max_iter = max_iter

    def _penalty(self, strength: float) -> torch.Tensor:
        import torch

        total = torch.zeros(())
        for name, p in self.module.named_parameters():
            if name.endswith("bias"):
                continue
            centre = None if self.prior is None else self.prior.get(name)
            diff = p if centre is None else p - centre
            total = total + diff.pow(2).sum()
        return 0.5 * strength * total

    def fit(self, x: torch.Tensor, y: torch.Tensor, strength: float) -> int:
        """Minimise mean(weighted CE) + strength/2 * ||W - prior||^2; returns evaluations."""
        import torch

        optimiser = torch.optim.LBFGS(
            list(self.module.parameters()),
            lr=1.0,
            max_iter=self.max_iter,
            history_size=10,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )
        calls = 0
        weights = self.class_weights
        norm = float(len(y)) if weights is None else float(weights[y].sum().clamp_min(1e-12))

        def closure() -> torch.Tensor:
            nonlocal calls
            calls += 1
            optimiser.zero_grad(set_to_none=True)
            losses = torch.nn.functional.cross_entropy(
                self.module(x), y, weight=weights, reduction="sum"
            )
            loss = losses / norm + self._penalty(strength)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        optimiser.step(closure)  # type: ignore[no-untyped-call]
        return calls

    def log_proba(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return torch.log_softmax(self.module(x), dim=1)


def strength_for(c: float, n: int, input_scale: float) -> float:
    """The penalty on the mean loss of scaled inputs equal to scikit-learn's ``C`` on the
    summed loss of unit-length ones: ``W_scaled = W / s`` so ``||W||^2 = s^2 ||W_scaled||^2``."""
    return input_scale**2 / (c * max(n, 1))


def select_c(
    make: Callable[[], LbfgsProblem],
    x: torch.Tensor,
    y: torch.Tensor,
    folds: IntArray,
    *,
    grid: Sequence[float],
    objective: str,
    n_labels: int,
    input_scale: float,
    one_standard_error: bool,
    weighting: str = "none",
) -> Tuned:
    """The grid value with the best mean held-out score over the folds (ties and, with
    ``one_standard_error``, anything within one standard error of the best go to the
    stronger penalty)."""
    import torch

    k = int(folds.max()) + 1 if len(folds) else 0
    y_np = y.numpy()
    # held-out log loss weighs each record as the fit does: by its class weight
    counts = np.bincount(y_np, minlength=n_labels).astype(np.float64)
    row_weight = (
        (1.0 / np.maximum(counts, 1.0))[y_np] if weighting == "balanced" else np.ones(len(y_np))
    )
    per_fold = np.full((len(grid), k), np.nan)
    oof = np.zeros((len(grid), len(y), n_labels))
    for f in range(k):
        held = folds == f
        if not held.any() or held.all():
            continue
        train_rows = torch.from_numpy(np.flatnonzero(~held))
        test_rows = np.flatnonzero(held)
        problem = make()
        for j, c in enumerate(grid):
            problem.fit(x[train_rows], y[train_rows], strength_for(c, len(train_rows), input_scale))
            lp = problem.log_proba(x[torch.from_numpy(test_rows)]).numpy()
            oof[j, test_rows] = np.exp(lp)
            if objective == "macro_f1":
                per_fold[j, f] = macro_f1(y_np[test_rows], lp.argmax(axis=1), n_labels)
            else:
                w = row_weight[test_rows]
                true_lp = lp[np.arange(len(test_rows)), y_np[test_rows]]
                per_fold[j, f] = -float((w * true_lp).sum() / w.sum())
    valid = ~np.isnan(per_fold[0])
    used = per_fold[:, valid]
    means = used.mean(axis=1) if used.size else np.zeros(len(grid))
    errors = (
        used.std(axis=1, ddof=1) / math.sqrt(used.shape[1])
        if used.shape[1] > 1
        else np.zeros(len(grid))
    )
    sign = 1.0 if objective == "macro_f1" else -1.0  # higher is better after the sign
    goodness = sign * means
    best = int(np.argmax(goodness))
    chosen = best
    rule = "best mean held-out score"
    if one_standard_error:
        bar = goodness[best] - errors[best]
        chosen = next(j for j in range(len(grid)) if goodness[j] >= bar)
        rule = "strongest penalty within one standard error of the best"
    proba = oof[chosen]
    predicted = proba.argmax(axis=1)
    return Tuned(
        c=float(grid[chosen]),
        objective=objective,
        folds=int(valid.sum()),
        grid=tuple(float(c) for c in grid),
        scores=tuple(float(m) for m in means),
        errors=tuple(float(e) for e in errors),
        ece=expected_calibration_error(proba, y_np),
        oof_accuracy=float((predicted == y_np).mean()) if len(y_np) else 0.0,
        oof_macro_f1=macro_f1(y_np, predicted, n_labels),
        rule=rule,
        weighting=weighting,
        oof_predicted=tuple(int(p) for p in predicted),
    )


def choose_weighting(candidates: Sequence[Tuned]) -> Tuned:
    """The cross-validated fit whose out-of-fold predictions have the higher mean of
    accuracy and macro-F1 (the first, unweighted, on a tie), with the others recorded."""
    best = max(
        range(len(candidates)),
        key=lambda i: (candidates[i].oof_accuracy + candidates[i].oof_macro_f1, -i),
    )
    others = tuple(t.summary() for i, t in enumerate(candidates) if i != best)
    return replace(candidates[best], alternatives=others)


def grid_below(grid: Sequence[float], max_c: float | None) -> tuple[float, ...]:
    """The grid's values at or below ``max_c`` (None: the whole grid), extended with
    stronger penalties so that at least three remain; the bound itself when nothing else
    does."""
    if max_c is None:
        return tuple(grid)
    kept = sorted(c for c in set(grid) | set(STRONGER_C) if c <= max_c)
    return tuple(kept[-max(3, sum(c <= max_c for c in grid)) :]) or (float(max_c),)


def fold_count(groups: Sequence[str], labels: IntArray, wanted: int) -> int:
    """At most ``wanted`` folds, fewer when there are too few distinct texts to fill them."""
    distinct = len(set(groups))
    return max(2, min(wanted, distinct // 2)) if distinct >= 4 else 0
