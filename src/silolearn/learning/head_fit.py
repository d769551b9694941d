"""The head's self-tuning fit: L-BFGS with its L2 strength (and class weighting) chosen by
cross-validation on the run's own records, grouped by content (``learning.tuning`` holds the
maths of the choice). Deterministic for a seed, like every fit (I4)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from silolearn.learning.adapter_base import INPUT_SCALE, objective_weights

if TYPE_CHECKING:
    import torch

    from silolearn.config import TrainingConfig
    from silolearn.learning.tuning import Tuned


def fit_tuned_head(
    head: torch.nn.Module,
    x: torch.Tensor,
    y_np: npt.NDArray[np.int64],
    groups: list[str],
    *,
    n_labels: int,
    prior: dict[str, torch.Tensor] | None,
    config: TrainingConfig,
    seed: int,
) -> tuple[Tuned | None, float, int]:
    """Fit ``head`` in place by L-BFGS with the cross-validated L2 strength; returns what was
    chosen (None with too few distinct texts to cross-validate: then C = 1), the final
    unpenalised training loss and the number of loss evaluations."""
    import torch

    from silolearn.learning.tuning import (
        C_GRID,
        MLP_C_GRID,
        WEIGHTINGS,
        LbfgsProblem,
        assign_folds,
        choose_weighting,
        fold_count,
        grid_below,
        select_c,
        strength_for,
    )

    linear = isinstance(head, torch.nn.Linear)
    grid = grid_below(C_GRID if linear else MLP_C_GRID, config.max_c)
    max_iter = 150 if linear else 300
    start = copy.deepcopy(head)
    if linear:
        # convex: start from the prior (or zero), which the optimum does not depend on but
        # the number of iterations does
        with torch.no_grad():
            for name, p in start.named_parameters():
                p.copy_(prior[name] if prior is not None else torch.zeros_like(p))

    def maker(weights: torch.Tensor | None) -> Callable[[], LbfgsProblem]:
        def make() -> LbfgsProblem:
            return LbfgsProblem(
                copy.deepcopy(start), class_weights=weights, prior=prior, max_iter=max_iter
            )

        return make

    xd = x.float()
    y = torch.from_numpy(y_np)
    k = fold_count(groups, y_np, config.cv_folds)
    tuned: Tuned | None = None
    c = min(1.0, config.max_c or 1.0)
    weighting = "balanced" if config.objective == "macro_f1" else "none"
    if k >= 2:
        folds = assign_folds(groups, y_np, k, seed)
        candidates = []
        for option in WEIGHTINGS[config.objective]:
            candidates.append(
                select_c(
                    maker(objective_weights(y_np, n_labels, option)),
                    xd,
                    y,
                    folds,
                    grid=grid,
                    objective="log_loss",
                    n_labels=n_labels,
                    input_scale=INPUT_SCALE,
                    one_standard_error=config.l2_choice == "one_standard_error",
                    weighting=option,
                )
            )
        tuned = choose_weighting(candidates)
        c, weighting = tuned.c, tuned.weighting
    make = maker(objective_weights(y_np, n_labels, weighting))
    problem = make()
    calls = problem.fit(xd, y, strength_for(c, len(y), INPUT_SCALE))
    with torch.no_grad():
        for name, p in head.named_parameters():
            p.copy_(dict(problem.module.named_parameters())[name].float())
        final_loss = float(torch.nn.functional.cross_entropy(problem.module(xd), y))
    head.eval()
    return tuned, final_loss, calls
