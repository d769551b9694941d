"""Feedback-loop safety through real rounds on real workers: a round reports where its
training labels came from and the share of self-confirmed feedback (labels that repeat the
served prediction with nobody having reviewed them), and leaves out the excess over
``training.max_self_confirmed_share``, audited; ``silolearn train`` shows it (human and
--json)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.ingest.gateway import Gateway
from silolearn.learning.active import self_confirmed_quota
from silolearn.records import LabelOrigin, LabelSource

SELF_CONFIRMED = LabelOrigin(LabelSource.FEEDBACK, reviewed=False, confirms=True)
REVIEWED = LabelOrigin(LabelSource.FEEDBACK, reviewed=True, confirms=True)
CORRECTED = LabelOrigin(LabelSource.FEEDBACK, reviewed=False, confirms=False)


def _rows(rows: list[dict[str, object]], prefix: str) -> list[dict[str, object]]:
    return [{**r, "id": f"{prefix}-{r['id']}"} for r in rows]


def test_a_round_bounds_self_confirmed_feedback_and_audits_it(tmp_path: Path) -> None:
    path = tmp_path / "ws"
    rows = sample(rotten_tomatoes(), 420, seed=41)
    with Workspace.init(path, actor="test") as ws:
        ws.create_tenant("critics")
        gateway = Gateway(ws)
        gateway.ingest("critics", _rows(rows[:120], "bulk"))
        gateway.ingest("critics", _rows(rows[120:140], "reviewed"), origin=REVIEWED)
        gateway.ingest("critics", _rows(rows[140:160], "corrected"), origin=CORRECTED)
        gateway.ingest("critics", _rows(rows[160:300], "confirmed"), origin=SELF_CONFIRMED)

    trained = run_cli("train", "critics", "--seed", "3", "--json", "--workspace", str(path))
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    loop = result["lineage"]["feedback_loop"]
    sources = loop["label_sources"]
    total = sum(sources.values())
    assert set(sources) == {"bulk", "feedback"}
    assert loop["max_self_confirmed_share"] == 0.2
    # every self-confirmed record reached training (no other filter took them out) and
    # was counted; the excess over the bound was left out, the rest trained on
    confirmed = loop["self_confirmed"]
    assert confirmed > 0.3 * total, loop
    assert loop["self_confirmed_share"] == round(confirmed / total, 6)
    kept = self_confirmed_quota(total, confirmed, 0.2)
    assert loop["left_out"] == confirmed - kept > 0
    assert result["lineage"]["records"] == total - loop["left_out"]
    assert loop["trained_self_confirmed_share"] <= 0.2
    assert kept / result["lineage"]["records"] > 0.19  # the bound is reached, not undershot

    with Workspace.open(path, actor="test") as ws:
        events = ws.audit.events(tenant="critics", action="train.self_confirmed_bounded")
        ours = [e for e in events if e.object == f"v{result['version']}"]
        assert len(ours) == 1 and ours[0].details["left_out"] == loop["left_out"]

    # with the bound off nothing is left out, and the human output says what was learned from
    more = sample(rotten_tomatoes(), 900, seed=43)[-60:]
    stamp = "2031-01-01T00:00:00Z"
    with Workspace.open(path, actor="test") as ws:
        gateway = Gateway(ws)
        gateway.ingest(
            "critics",
            [{**r, "timestamp": stamp} for r in _rows(more[:30], "later")],
            origin=LabelOrigin(LabelSource.HUMAN, reviewed=True),
        )
        gateway.ingest(
            "critics",
            [{**r, "timestamp": stamp} for r in _rows(more[30:], "later-confirmed")],
            origin=SELF_CONFIRMED,
        )
    human = run_cli(
        "train",
        "critics",
        "--seed",
        "3",
        "--cutoff",
        stamp,
        "--workspace",
        str(path),
        env={"SILOLEARN_TRAINING__MAX_SELF_CONFIRMED_SHARE": "1.0"},
    )
    assert human.returncode == 0, human.stderr
    line = next(x for x in human.stdout.splitlines() if "self-confirmed" in x)
    assert line.startswith("critics: labels") and "(bound 100%)" in line
    assert "human" in line and "feedback" in line and "left out" not in line
