"""`silolearn schedule show|set|tick` through the real command line, human and --json, and
its errors (stderr, non-zero exit). No round runs here: the tenants are manual-only or
quarantined."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli
from silolearn import Workspace
from silolearn.datasets import bbc_news, sample


def _workspace(path: Path) -> Path:
    with Workspace.init(path, actor="test") as ws:
        ws.create_tenant("acme")
        ws.create_tenant("held")
        ws.tenant("held").ingest(sample(bbc_news(), 60, seed=2))
    return path


def test_show_and_set_human_and_json(ws_path: Path) -> None:
    path = str(_workspace(ws_path))
    shown = run_cli("schedule", "show", "acme", "-w", path, "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    # the [schedule] defaults: no trigger, rounds by hand only
    assert view["manual_only"] is True and view["policy"]["triggers"] == []
    assert view["override"] == {} and view["decisions"] == []
    human = run_cli("schedule", "show", "acme", "-w", path)
    assert human.returncode == 0, human.stderr
    assert "none (manual rounds only)" in human.stdout
    assert "none (the workspace's defaults)" in human.stdout

    set_ = run_cli(
        "schedule", "set", "acme", "-w", path, "--json",
        "--triggers", "schedule,volume", "--cron", "0 3 * * 1", "--min-new-records", "250",
    )  # fmt: skip
    assert set_.returncode == 0, set_.stderr
    view = json.loads(set_.stdout)
    assert view["policy"]["triggers"] == ["schedule", "volume"]
    assert view["policy"]["cron"] == "0 3 * * 1" and view["policy"]["min_new_records"] == 250
    assert sorted(view["override"]) == ["cron", "min_new_records", "triggers"]
    assert view["state"]["next_scheduled"].endswith("T03:00:00.000000Z")
    human = run_cli("schedule", "set", "acme", "-w", path, "--backoff-minutes", "15")
    assert human.returncode == 0, human.stderr
    assert "schedule, volume" in human.stdout and "15.0 min" in human.stdout

    manual = json.loads(run_cli("schedule", "set", "acme", "-w", path, "--manual", "--json").stdout)
    assert manual["manual_only"] is True and manual["policy"]["cron"] == "0 3 * * 1"
    reset = json.loads(run_cli("schedule", "set", "acme", "-w", path, "--reset", "--json").stdout)
    assert reset["override"] == {} and reset["policy"]["backoff_minutes"] == 60.0
    with Workspace.open(ws_path, actor="test") as ws:
        changes = [e.details["set"] for e in ws.audit.events(action="schedule.policy")]
    assert changes[1] == {"backoff_minutes": 15.0} and changes[-1] == {}


def test_bad_input_is_a_typed_error(ws_path: Path) -> None:
    path = str(_workspace(ws_path))
    cases = [
        (("acme", "--cron", "61 * * * *"), "InvalidInput", "cron"),
        (("acme", "--triggers", "schedule"), "InvalidInput", "needs a cron"),
        (("acme", "--triggers", "hourly"), "InvalidInput", "triggers"),
        (("acme", "--triggers", "volume", "--manual"), "InvalidInput", "exclude"),
        (("acme",), "InvalidInput", "nothing to set"),
        (("nobody", "--manual"), "TenantNotFound", "nobody"),
    ]
    for i, (args, code, words) in enumerate(cases):
        as_json = run_cli("schedule", "set", *args, "-w", path, "--json")
        assert as_json.returncode != 0 and as_json.stdout == "", args
        error = json.loads(as_json.stderr)
        assert error["error"] == code and words in error["message"], error
        if i in (0, len(cases) - 1):  # the human form of one bad value and one unknown name
            human = run_cli("schedule", "set", *args, "-w", path)
            assert human.returncode == as_json.returncode, args
            assert f"error ({code})" in human.stderr, human.stderr
    missing = run_cli("schedule", "show", "nobody", "-w", path, "--json")
    assert missing.returncode != 0 and json.loads(missing.stderr)["error"] == "TenantNotFound"
    # nothing was stored by a refused change
    with Workspace.open(ws_path, actor="test") as ws:
        assert ws.conn.execute("SELECT COUNT(*) FROM schedule_policies").fetchone() == (0,)


def test_tick_starts_nothing_for_a_quarantined_tenant(ws_path: Path) -> None:
    path = str(_workspace(ws_path))
    assert run_cli("schedule", "set", "held", "-w", path, "--triggers", "volume",
                   "--min-new-records", "20").returncode == 0  # fmt: skip
    assert run_cli("tenant", "quarantine", "held", "-w", path, "--reason", "review").returncode == 0
    ticked = run_cli("schedule", "tick", "-w", path, "--json")
    assert ticked.returncode == 0, ticked.stderr
    made = json.loads(ticked.stdout)
    assert [(d["tenant"], d["decision"], d["reason"]) for d in made] == [
        ("held", "skip", "quarantined")
    ]
    human = run_cli("schedule", "tick", "-w", path)
    assert human.returncode == 0 and "held" not in human.stdout  # recorded once already
    shown = run_cli("schedule", "show", "held", "-w", path)
    assert "quarantined" in shown.stdout and "skip" in shown.stdout
