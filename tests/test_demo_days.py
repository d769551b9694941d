"""The demo's simulated days (``silolearn.demo.days``) on a small scale: the service on a
manual clock, real tweets whose outlets change between 2013 and 2014-15, the scheduler's
drift and performance triggers, canary rollouts on live feedback through the HTTP API,
and the drill (a planted label-mapping bug that passes the offline gates on a window the
bug labelled too).

What is scaled down, and why: the demo runs the rollout at its defaults (1%, 5%, 100%),
where a canary needs some 3,000 texts of traffic (750 requests) at 1% to gather its 30
feedback items, a day and a half of the demo's 2,000 a day (the full run takes 12 to 18
minutes: README); here the steps are 20%, 50%, 100% (``SILOLEARN_ROLLOUT__STEPS``), so a
few hundred texts a day do, and the privacy gates that cost the most time are off
(membership inference, canary exposure, the one-run audit: the drill is about quality and
forgetting, which stay on). Everything else is the defaults: the sequential test, its
alpha, its minimum feedback and step time, the monitors' false-alarm rates, the back-off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from silolearn import Workspace
from silolearn.demo.days import DRILL, WIRE, run_days
from silolearn.demo.report import render_report
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose

ENV = {
    "SILOLEARN_ROLLOUT__STEPS": "[0.2, 0.5, 1.0]",
    "SILOLEARN_GATES__MEMBERSHIP": "false",
    "SILOLEARN_GATES__CANARIES": "0",
    "SILOLEARN_GATES__AUDIT_CANARIES": "0",
    "SILOLEARN_GATES__SHADOW": "0",
}
DAYS = 7
pytestmark = pytest.mark.timeout(1800)  # the days' rounds: minutes on a loaded machine
PER_DAY = 500


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("demo-days") / "ws"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        Workspace.init(path, actor="test").close()
        said: list[str] = []
        result = run_days(path, days=DAYS, per_day=PER_DAY, say=lambda *a, **k: said.append(str(a)))
    result["said"] = said
    return path, result


def _events(path: Path, tenant: str, action: str) -> list[Any]:
    with Workspace.open(path, actor="test") as ws:
        return ws.audit.events(tenant=tenant, action=action)


def test_a_trigger_started_a_round_whose_canary_was_promoted_on_its_own(
    days: tuple[Path, dict[str, Any]],
) -> None:
    path, result = days
    timeline = [e for e in result["timeline"] if e["tenant"] == WIRE]
    actions = [e["action"] for e in timeline]
    assert result["outcomes"][WIRE]["triggers"] >= 1, actions
    assert result["outcomes"][WIRE]["promoted"] >= 1, actions
    first_trigger = actions.index("schedule.trigger")
    assert "rollout.start" in actions[first_trigger:], actions
    assert "rollout.promote" in actions[actions.index("rollout.start") :], actions
    trigger = timeline[first_trigger]["details"]
    assert trigger["trigger"] in ("drift", "performance")
    assert trigger["evidence"]["signals"], trigger  # the signals that fired it
    # promoted by the rollout driver on live feedback, its evidence audited
    promoted = _events(path, WIRE, "rollout.promote")[-1].details
    lower, _ = promoted["difference"]
    assert lower >= -promoted["tolerance"]
    assert promoted["canary"]["feedback"] > 0 and promoted["stable"]["feedback"] > 0
    with Workspace.open(path, actor="test") as ws:
        versions = AdapterRegistry(ws.scope(WIRE, purpose=Purpose.REGISTRY)).list()
    status = {v.version: v.status for v in versions}
    # it became the active version (retired only if a later round's candidate replaced it)
    assert status[promoted["canary"]["version"]] in ("active", "retired"), status


def test_the_drill_passed_the_offline_gates_and_was_rolled_back_on_live_feedback(
    days: tuple[Path, dict[str, Any]],
) -> None:
    path, result = days
    drill = result["drill"]
    assert drill["outcome"] == "canary", drill  # passed every offline gate
    assert drill["gates"]["quality"] and drill["gates"]["forgetting"], drill
    assert all(drill["gates"].values()), drill
    assert result["outcomes"][DRILL]["rolled_back"] == 1, result["outcomes"]
    assert result["outcomes"][DRILL]["promoted"] == 0
    announced = _events(path, DRILL, "demo.drill")
    assert len(announced) == 1 and "DRILL" in announced[0].details["what"]
    rollback = _events(path, DRILL, "rollout.rollback")[-1]
    assert rollback.seq > announced[0].seq
    evidence = rollback.details
    # on live traffic: shown worse on its feedback, or its predicted labels unlike
    # stable's while its feedback is behind stable's
    assert evidence["decision"] in (
        "the canary is worse than stable",
        "the canary's predicted labels drifted from stable's",
    ), evidence
    if evidence["decision"] == "the canary is worse than stable":
        assert evidence["difference"][1] < 0
    else:
        assert evidence["drift"]["abnormal"] is True
    assert evidence["canary"]["version"] == drill["version"]
    assert evidence["canary"]["feedback"] > 0
    assert evidence["canary"]["accuracy"] < evidence["stable"]["accuracy"]


def test_the_timeline_is_in_the_output_and_the_report(days: tuple[Path, dict[str, Any]]) -> None:
    _, result = days
    assert result["audit"]["ok"] is True
    said = "\n".join(result["said"])
    assert "DRILL" in said and "trigger" in said and "promote" in said and "rollback" in said
    html = render_report({"days": result})
    assert 'id="days"' in html and "rollout.promote" in html and "rollout.rollback" in html
    assert "DRILL" in html
