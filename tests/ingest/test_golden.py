"""Golden suites: a tenant's must-pass examples, stored like eval data (sealed, append-only,
out of training's reach, checked by the contamination filter, I5/I6) but kept apart from
the regular eval set, so they never count in quality metrics or training cutoffs."""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path

import pytest

from helpers import record, run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import bbc_news, sample
from silolearn.errors import AccessDenied, IngestAborted, InvalidInput
from silolearn.ingest.gateway import Gateway
from silolearn.storage.scope import Purpose

LATER = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def articles() -> list[dict[str, object]]:
    rows = sample(bbc_news(), 60, seed=23)
    return [r for r in rows if 150 <= len(str(r["text"]).split()) <= 500][:8]


def edited_copy(text: str) -> str:
    """Case and punctuation changed, a sentence added: still a near-duplicate."""
    return text.upper().replace(",", " ;") + " Copied by a careless editor at the end."


def _golden_rows(articles: list[dict[str, object]], start: int, n: int) -> list[object]:
    return [
        record(f"g-{i}", str(a["text"]), label=str(a["label"]), timestamp=LATER)
        for i, a in enumerate(articles[start : start + n])
    ]


def _register_golden(ws: Workspace, path: Path, *extra: str) -> dict[str, object]:
    result = run_cli(
        "eval", "register", str(path), "--golden", "--tenant", "acme",
        "--workspace", str(ws.path), "--json", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_golden_suite_is_stored_apart_from_the_regular_eval_set(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("acme")
    regular = [record(f"e-{i}", str(a["text"]), label="x") for i, a in enumerate(articles[:2])]
    Gateway(ws).ingest("acme", regular, all_to_eval=True)
    golden = _golden_rows(articles, 2, 3)
    path = write_jsonl(tmp_path / "golden.jsonl", golden)

    report = _register_golden(ws, path)
    assert report["benchmark"] == "golden" and report["eval"] == 3 and report["train"] == 0

    evaluation = ws.scope("acme", purpose=Purpose.EVALUATION)
    assert [s.record.id for s in evaluation.eval.read()] == ["e-0", "e-1"]
    stored = evaluation.eval.golden()
    assert [s.record.id for s in stored] == ["g-0", "g-1", "g-2"]
    assert [s.seq for s in stored] == sorted(s.seq for s in stored)
    assert [s.record.label for s in stored] == [articles[i]["label"] for i in (2, 3, 4)]
    # golden examples move neither the counts nor the training cutoff
    assert evaluation.eval.count() == 2
    assert str(evaluation.eval.latest_timestamp()).startswith("2025-03-01T12:00:00")

    [event] = ws.audit.events(tenant="acme", action="benchmark.register")
    assert event.object == "golden" and event.details == {"records": 3, "suite": "golden"}
    reads = ws.audit.events(tenant="acme", action="data.read")
    assert reads[-1].details["suite"] == "golden" and reads[-1].details["records"] == 3

    # training (and ingestion) scopes cannot read the suite
    for purpose in (Purpose.TRAINING, Purpose.INGEST):
        with pytest.raises(AccessDenied):
            ws.scope("acme", purpose=purpose).eval.golden()
    denied = ws.audit.events(tenant="acme", action="access.denied")
    assert denied[-2].details == {"capability": "eval:read", "purpose": "training"}

    # registering again stores nothing twice; a regular eval id cannot become golden
    again = _register_golden(ws, path)
    assert again["eval"] == 0 and again["duplicates"] == 3
    clash = write_jsonl(tmp_path / "clash.jsonl", [regular[0]])
    result = run_cli(
        "eval", "register", str(clash), "--golden", "--tenant", "acme",
        "--workspace", str(ws.path),
    )  # fmt: skip
    assert result.returncode == 6 and "outside the golden suite" in result.stderr
    assert len(evaluation.eval.golden()) == 3 and evaluation.eval.count() == 2

    # append-only: a record's suite is fixed at insertion
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("UPDATE eval_records SET suite = NULL")


def test_golden_examples_are_guarded_by_the_contamination_filter_both_ways(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("acme")
    first, second = str(articles[0]["text"]), str(articles[1]["text"])
    ws.tenant("acme").ingest(
        [
            record("t-copy", edited_copy(first), label=None),
            record("t-other", str(articles[2]["text"]), label=None),
        ]
    )
    # a stored training record that copies a golden example is moved to quarantine
    golden = [record("g-1", first, label="a"), record("g-2", second, label="b")]
    report = _register_golden(ws, write_jsonl(tmp_path / "golden.jsonl", golden))
    assert report["eval"] == 2 and report["quarantined"] == 1
    training = ws.scope("acme", purpose=Purpose.TRAINING)
    assert [s.record.id for s in training.train.read()] == ["t-other"]
    assert ws.scope("acme").train.quarantined_count() == 1
    [moved] = ws.audit.events(tenant="acme", action="contamination.quarantine")
    assert moved.details["direction"] == "eval_after_train" and moved.details["similarity"] >= 0.8

    # a training record arriving later that copies a golden example is refused
    later = ws.tenant("acme").ingest([record("t-late", edited_copy(second), label=None)])
    assert later.contaminated == 1 and later.accepted == 0
    [match] = ws.audit.events(tenant="acme", action="contamination.match")
    g2 = ws.scope("acme", purpose=Purpose.EVALUATION).eval.golden()[1]
    assert match.details["record_id"] == "t-late" and match.details["source"] == "eval"
    assert match.details["eval_seq"] == g2.seq
    assert [s.record.id for s in training.train.read()] == ["t-other"]


def test_unlabelled_golden_line_is_rejected(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("acme")
    rows = [
        record("g-1", str(articles[0]["text"]), label="a"),
        record("g-2", str(articles[1]["text"]), label=None),
    ]
    path = write_jsonl(tmp_path / "golden.jsonl", rows)
    result = run_cli(
        "eval", "register", str(path), "--golden", "--tenant", "acme", "--workspace", str(ws.path)
    )
    assert result.returncode == 6
    assert "nothing stored" in result.stderr
    assert "line 2: " in result.stderr and "must be labelled" in result.stderr
    evaluation = ws.scope("acme", purpose=Purpose.EVALUATION)
    assert evaluation.eval.golden() == [] and evaluation.eval.count() == 0
    assert not ws.audit.events(tenant="acme", action="benchmark.register")

    gateway = Gateway(ws)
    with pytest.raises(IngestAborted):
        gateway.ingest("acme", rows, all_to_eval=True, suite="golden", strict=True)
    assert evaluation.eval.golden() == []
    # without strict the labelled line is kept and the other one reported
    report = gateway.ingest("acme", rows, all_to_eval=True, suite="golden")
    assert report.eval == 1 and report.rejected == 1
    assert report.errors[0]["line"] == 2 and "must be labelled" in report.errors[0]["reason"]
    assert [s.record.id for s in evaluation.eval.golden()] == ["g-1"]

    # a suite is never routed, and only known suites exist
    with pytest.raises(InvalidInput, match="all_to_eval"):
        gateway.ingest("acme", rows[:1], suite="golden")
    with pytest.raises(InvalidInput, match="unknown eval suite"):
        gateway.ingest("acme", rows[:1], all_to_eval=True, suite="platinum")


def test_golden_needs_a_tenant(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    path = write_jsonl(tmp_path / "golden.jsonl", [record("g-1", "a golden example", label="a")])
    result = run_cli("eval", "register", str(path), "--golden", "--workspace", str(ws.path))
    assert result.returncode == 6
    assert "--golden needs --tenant" in result.stderr and result.stdout == ""
    count = ws.conn.execute("SELECT COUNT(*) FROM benchmark_sets").fetchone()[0]
    assert count == 0 and ws.scope("acme").eval.count() == 0
    result = run_cli("eval", "register", str(path), "--workspace", str(ws.path))
    assert result.returncode == 6 and "--name is required" in result.stderr


def test_golden_text_is_not_on_disk_in_clear(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("acme")
    markers = [f"zq{secrets.token_hex(8)}xv" for _ in range(3)]
    rows = [
        record(f"g-{i}", f"{a['text']} {m}", label=str(a["label"]))
        for i, (a, m) in enumerate(zip(articles[:3], markers, strict=True))
    ]
    _register_golden(ws, write_jsonl(tmp_path / "golden.jsonl", rows))
    (tmp_path / "golden.jsonl").unlink()
    golden = ws.scope("acme", purpose=Purpose.EVALUATION).eval.golden()
    assert all(m in s.record.text for s, m in zip(golden, markers, strict=True))
    needles = [m.encode() for m in markers]
    needles += [" ".join(str(a["text"]).split()[10:18]).encode() for a in articles[:3]]
    for file in sorted(p for p in ws.path.rglob("*") if p.is_file()):
        data = file.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle[:40]!r} found in clear in {file}"
