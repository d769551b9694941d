"""`silolearn train`, `predict` and `adapters` through the real command line: results,
JSON output, and typed errors on bad input that leave accepted state untouched (I10)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from helpers import run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample


@pytest.fixture(scope="module")
def cli_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A workspace with two tenants; `critics` trained once through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    path = root / "ws"
    rows = sample(rotten_tomatoes(), 360, seed=21)
    assert run_cli("init", "--workspace", str(path)).returncode == 0
    for name, chunk in (("critics", rows[:180]), ("reviews", rows[180:])):
        assert run_cli("tenant", "create", name, "--workspace", str(path)).returncode == 0
        source = write_jsonl(root / f"{name}.jsonl", chunk)
        assert run_cli("ingest", name, str(source), "--workspace", str(path)).returncode == 0
    trained = run_cli("train", "critics", "--seed", "5", "--json", "--workspace", str(path))
    assert trained.returncode == 0, trained.stderr
    return path, json.loads(trained.stdout)


def test_train_prints_version_status_metrics_and_sha256(
    cli_ws: tuple[Path, dict[str, Any]],
) -> None:
    _, result = cli_ws
    assert result["tenant"] == "critics"
    assert result["version"] == 1 and result["status"] == "active"
    assert re.fullmatch(r"[0-9a-f]{64}", result["sha256"])
    assert 0.0 < result["metrics"]["accuracy"] <= 1.0
    assert 0.0 < result["metrics"]["macro_f1"] <= 1.0
    assert result["lineage"]["seed"] == 5
    assert result["decision"]["gates"][0]["passed"] is True


def test_adapters_list_json_has_status_metrics_sha_and_lineage(
    cli_ws: tuple[Path, dict[str, Any]],
) -> None:
    path, result = cli_ws
    listed = run_cli("adapters", "list", "critics", "--json", "--workspace", str(path))
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["sha256"] == result["sha256"] and row["status"] == "active"
    assert row["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    assert row["lineage"]["records_digest"] == result["lineage"]["records_digest"]
    runs = run_cli("adapters", "runs", "critics", "--json", "--workspace", str(path))
    assert [r["status"] for r in json.loads(runs.stdout)] == ["succeeded"]


def test_predict_from_arguments_and_file(
    cli_ws: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, result = cli_ws
    texts = ["a warm, funny and moving film", "tedious, overlong and empty"]
    answered = run_cli("predict", "critics", *texts, "--json", "--workspace", str(path))
    assert answered.returncode == 0, answered.stderr
    predictions = json.loads(answered.stdout)
    assert len(predictions) == 2
    assert all(p["version"] == result["version"] for p in predictions)
    assert all(p["label"] in ("fresh", "rotten", "plot") for p in predictions)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    from_file = run_cli("predict", "critics", "--file", str(source), "--workspace", str(path))
    assert from_file.returncode == 0, from_file.stderr
    assert "v1" in from_file.stdout and "predictions for critics" in from_file.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train"], 6, "name one tenant"),
        (["train", "critics", "--all"], 6, "name one tenant"),
        (["train", "nosuch"], 4, "nosuch"),
        (["train", "critics", "--adapter", "forest"], 6, "unknown adapter kind"),
        (["train", "critics", "--cutoff", "yesterday-ish"], 6, "not an ISO-8601"),
        (["train", "critics", "--cutoff", "1999-01-01T00:00:00Z"], 6, "never goes back"),
        (["predict", "critics"], 6, "give texts"),
        (["predict", "critics", "--file", "/nonexistent/texts.txt"], 6, "cannot read"),
        (["predict", "critics", "   "], 6, "empty"),
        (["predict", "reviews", "some text"], 4, "no active adapter"),
        (["adapters", "promote", "critics", "99"], 4, "no adapter version 99"),
        (["adapters", "promote", "critics", "1"], 5, "not a candidate"),
        (["adapters", "rollback", "critics"], 6, "no earlier version"),
    ],
)
def test_bad_requests_get_typed_errors_and_change_nothing(
    cli_ws: tuple[Path, dict[str, Any]], args: list[str], code: int, message: str
) -> None:
    path, _ = cli_ws
    before = run_cli("adapters", "list", "critics", "--json", "--workspace", str(path)).stdout
    failed = run_cli(*args, "--workspace", str(path))
    assert failed.returncode == code, (failed.stdout, failed.stderr)
    assert message in failed.stderr
    assert failed.stdout == ""
    after = run_cli("adapters", "list", "critics", "--json", "--workspace", str(path)).stdout
    assert after == before


def test_quarantined_tenant_is_not_trained_but_keeps_serving(
    cli_ws: tuple[Path, dict[str, Any]],
) -> None:
    path, _ = cli_ws
    assert (
        run_cli(
            "tenant", "quarantine", "critics", "--reason", "t", "--workspace", str(path)
        ).returncode
        == 0
    )
    try:
        refused = run_cli("train", "critics", "--workspace", str(path))
        assert refused.returncode == 7 and "quarantined" in refused.stderr
        assert (
            run_cli("predict", "critics", "a fine film", "--workspace", str(path)).returncode == 0
        )
    finally:
        assert run_cli("tenant", "release", "critics", "--workspace", str(path)).returncode == 0
    with Workspace.open(path) as ws:
        denied = [e for e in ws.audit.events(action="access.denied") if e.object == "train"]
    assert denied


def test_train_all_runs_every_active_tenant(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ws"
    # enough records per tenant that each first version can be shown to beat the constant
    # answer on its eval records whichever texts the workspace's routing secret sends there
    rows = sample(rotten_tomatoes(), 600, seed=8)
    assert run_cli("init", "--workspace", str(path)).returncode == 0
    for name, chunk in (("north", rows[:300]), ("south", rows[300:])):
        run_cli("tenant", "create", name, "--workspace", str(path))
        run_cli(
            "ingest",
            name,
            str(write_jsonl(tmp_path / f"{name}.jsonl", chunk)),
            "--workspace",
            str(path),
        )
    done = run_cli("train", "--all", "--json", "--workspace", str(path))
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert sorted(r["tenant"] for r in results) == ["north", "south"]
    assert all(r["status"] == "active" and r["version"] == 1 for r in results)
    human = run_cli("adapters", "list", "north", "--workspace", str(path))
    assert "active" in human.stdout
