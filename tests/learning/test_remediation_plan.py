"""Which remediation a leaking candidate gets: the one-standard-error penalty only where it
can mend the leak (a membership failure, or a hand-set schedule the default learner
replaces), then steps each bounding C at a tenth of the chosen one (for a canary failure of
the default learner too: they can pull a canary of a small label off zero loss), then
DP-SGD at the largest epsilon the tenant's budget pays."""

from __future__ import annotations

from pathlib import Path

from silolearn import Workspace
from silolearn.learning.tuning import C_GRID, STRONGER_C, grid_below
from silolearn.pipeline import REGULARISATION_STEPS, RoundResult, Trainer


def _rejected(failed: list[str], *, c: float | None) -> RoundResult:
    fit = {"tuning": {"c": c}} if c is not None else {"tuning": None}
    return RoundResult(
        tenant="t",
        status="rejected",
        decision={"failed": failed, "severity": "SEV2"},
        lineage={"fit": fit},
    )


def test_membership_leak_is_met_with_a_ladder_of_stronger_penalties(tmp_path: Path) -> None:
    with Workspace.init(tmp_path / "ws", actor="test") as ws:
        ws.create_tenant("ward")
        made = [_rejected(["membership"], c=30.0)]
        plans = Trainer(ws)._remediations("ward", made)
        what, plan = next(plans)
        assert what == "stronger regularisation"
        assert plan == {"overrides": {"tuning": "auto", "l2_choice": "one_standard_error"}}
        made.append(_rejected(["membership"], c=10.0))
        what, plan = next(plans)
        assert what == "stronger regularisation, C at most 1"
        assert plan is not None and plan["overrides"]["max_c"] == 1.0
        made.append(_rejected(["membership", "quality"], c=0.3))
        what, plan = next(plans)
        assert plan is not None and plan["overrides"]["max_c"] == 0.03
        assert REGULARISATION_STEPS == 2
        made.append(_rejected(["membership"], c=0.03))
        what, plan = next(plans)
        assert what == "dp epsilon 4" and plan == {"dp": True, "epsilon": 4.0}


def test_canary_leak_of_the_default_learner_bounds_c_before_dp(tmp_path: Path) -> None:
    """No one-standard-error attempt (a grid step does not move a canary's exposure); each
    bound is a tenth of the C the attempt before chose, then DP-SGD."""
    with Workspace.init(tmp_path / "ws", actor="test") as ws:
        ws.create_tenant("ward")
        made = [_rejected(["canary"], c=10.0)]
        plans = Trainer(ws)._remediations("ward", made)
        what, plan = next(plans)
        assert what == "stronger regularisation, C at most 1"
        assert plan == {
            "overrides": {"tuning": "auto", "l2_choice": "one_standard_error", "max_c": 1.0}
        }
        made.append(_rejected(["canary"], c=0.3))
        what, plan = next(plans)
        assert what == "stronger regularisation, C at most 0.03"
        made.append(_rejected(["canary"], c=0.03))
        assert [what for what, _ in plans] == ["dp epsilon 4", "dp epsilon 1"]


def test_a_hand_set_schedule_that_leaks_is_first_refitted_by_the_default_learner(
    tmp_path: Path,
) -> None:
    with Workspace.init(tmp_path / "ws", actor="test") as ws:
        ws.create_tenant("ward")
        plans = Trainer(ws)._remediations("ward", [_rejected(["canary"], c=None)])
        assert next(plans)[0] == "stronger regularisation"


def test_a_bounded_grid_extends_below_its_strongest_penalty() -> None:
    assert grid_below(C_GRID, None) == C_GRID
    assert grid_below(C_GRID, 1.0) == (0.1, 0.3, 1.0)
    assert grid_below(C_GRID, 0.03) == (0.003, 0.01, 0.03)
    assert grid_below(C_GRID, 10.0) == (0.3, 1.0, 3.0, 10.0)
    assert grid_below(C_GRID, STRONGER_C[0] / 2) == (STRONGER_C[0] / 2,)
