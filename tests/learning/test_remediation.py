"""Automatic remediation (issue: gates that reject leaks, automatic remediation): a
non-private candidate that fails the membership gate ends, in the same ``train`` call, with
a promoted remediated version or with the previous version kept and an explanation; every
attempt is a real isolated run with its own gates, listed in the round's ``attempts``, in
the audit log and, for DP attempts, in the privacy ledger.

The leaky candidate is the demo's leak drill (the fixed schedule: 500 epochs of a
1,024-unit MLP head, no weight decay) on real movie snippets; the tenant's audience is its
own (the default), so the leak is a SEV2 that leaves the tenant active and remediable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.demo import LEAK_DRILL
from silolearn.pipeline import Trainer
from silolearn.privacy.ledger import tenant_scope


def test_a_candidate_failing_membership_is_remediated_in_the_same_train_call(
    tmp_path: Path,
) -> None:
    reviews = sample(rotten_tomatoes(), 700, seed=31)
    with Workspace.init(tmp_path / "ws", actor="test") as ws:
        ws.create_tenant("critics")
        ws.tenant("critics").ingest(reviews[:450])
        first = Trainer(ws).train("critics")
        assert first.status == "active", first.decision["reason"]
        assert first.attempts == [
            {**first.attempts[0], "what": "as asked", "status": "active", "failed": []}
        ]
        ws.tenant("critics").ingest(reviews[450:])

        result = Trainer(ws).train("critics", overrides=LEAK_DRILL)
        asked = result.attempts[0]
        print("attempts:", [(a["what"], a["status"], a.get("failed")) for a in result.attempts])
        print("explanation:", result.explanation)
        assert asked["what"] == "as asked" and asked["status"] == "rejected"
        assert "membership" in asked["failed"] and asked["severity"] == "SEV2"
        assert "excess" in asked["reasons"]["membership"]
        assert ws.tenants.get("critics").status == "active"  # SEV2: remediable, no quarantine
        tried = [a["what"] for a in result.attempts[1:]]
        assert tried[0] == "stronger regularisation"
        assert result.attempts[1]["overrides"] == {
            "tuning": "auto",
            "l2_choice": "one_standard_error",
        }
        serving = Trainer(ws).serving_version("critics")
        if result.status == "active":
            assert serving == result.version == result.attempts[-1]["version"]
            assert result.explanation is None
        else:
            assert serving == first.version
            assert result.explanation and "keeps serving v1" in result.explanation
            assert "Tried:" in result.explanation and "A model needs" in result.explanation

        events = [e for e in ws.audit.events(tenant="critics") if e.action == "train.remediation"]
        made = [a for a in result.attempts[1:] if a.get("version") is not None]
        assert len([e for e in events if (e.object or "").startswith("v")]) == len(made) >= 1
        dp_attempts = [a for a in made if a["what"].startswith("dp epsilon")]
        ledger = ws.ledger().events(tenant_scope(ws.tenants.get("critics").id))
        assert len({e.run_id for e in ledger}) == len(dp_attempts)
        as_json: dict[str, Any] = result.to_dict()
        assert [a["what"] for a in as_json["attempts"]] == ["as asked", *tried]
