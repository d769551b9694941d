"""Label provenance through the gateway and `silolearn ingest --source`: each training record
keeps where its label came from, sealed under the tenant's training key beside it (no
source name in clear in the database), read back with the record, kept across a data-key
rotation; a source the command line does not take is refused (human and --json)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import bbc_news, sample
from silolearn.ingest.gateway import Gateway
from silolearn.records import LabelOrigin, LabelSource
from silolearn.storage.scope import Purpose


def _origins(ws: Workspace, tenant: str) -> dict[str, LabelOrigin | None]:
    scope = ws.scope(tenant, purpose=Purpose.TRAINING)
    return {s.record.id: s.origin for s in scope.train.read()}


def test_the_cli_keeps_the_source_of_the_labels_it_ingests(tmp_path: Path) -> None:
    path = tmp_path / "ws"
    rows = sample(bbc_news(), 40, seed=2)
    assert run_cli("init", "--workspace", str(path)).returncode == 0
    assert run_cli("tenant", "create", "newsroom", "--workspace", str(path)).returncode == 0
    people = write_jsonl(tmp_path / "people.jsonl", rows[:20])
    files = write_jsonl(tmp_path / "files.jsonl", rows[20:])
    human = run_cli(
        "ingest", "newsroom", str(people), "--source", "human", "--json", "--workspace", str(path)
    )
    assert human.returncode == 0, human.stderr
    assert json.loads(human.stdout)["train"] > 0
    bulk = run_cli("ingest", "newsroom", str(files), "--workspace", str(path))
    assert bulk.returncode == 0, bulk.stderr

    for as_json in (False, True):
        refused = run_cli(
            "ingest",
            "newsroom",
            str(files),
            "--source",
            "active",
            *(["--json"] if as_json else []),
            "--workspace",
            str(path),
        )
        assert refused.returncode != 0 and refused.stdout == ""
        if as_json:
            assert json.loads(refused.stderr)["error"] == "InvalidInput"
        else:
            assert "unknown label source 'active'" in refused.stderr

    with Workspace.open(path, actor="test") as ws:
        origins = _origins(ws, "newsroom")
        people_ids = {str(r["id"]) for r in rows[:20]}
        assert origins and all(o is not None for o in origins.values())
        for record_id, origin in origins.items():
            assert origin is not None
            expected = LabelSource.HUMAN if record_id in people_ids else LabelSource.BULK
            assert (origin.source, origin.reviewed) == (expected, expected is LabelSource.HUMAN)
        boxes = [bytes(b) for (b,) in ws.conn.execute("SELECT origin FROM train_records")]
        assert boxes and not any(b"human" in b or b"bulk" in b for b in boxes)


def test_provenance_survives_a_data_key_rotation(ws: Workspace) -> None:
    ws.create_tenant("newsroom")
    rows = sample(bbc_news(), 30, seed=4)
    confirmed = LabelOrigin(LabelSource.FEEDBACK, reviewed=False, confirms=True)
    Gateway(ws).ingest("newsroom", rows[:15])
    Gateway(ws).ingest("newsroom", rows[15:], origin=confirmed)
    before = _origins(ws, "newsroom")
    assert {o.self_confirmed for o in before.values() if o is not None} == {True, False}
    ws.tenants.rotate_data_key("newsroom")
    assert _origins(ws, "newsroom") == before
