"""I10 and I5 at the gateway: bad lines are reported and never cost a good one; routing,
idempotency, minimisation and the exact contamination check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import record, run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.errors import IngestAborted, InvalidInput
from silolearn.ingest.gateway import Gateway, route_to_eval
from silolearn.storage.scope import Purpose

OVERSIZE = "word " * 7000  # 35,000 bytes > 32 KiB


def _mixed_file(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    lines = [
        record("ok-1", "the first valid record"),
        '{"id": "broken", "text": "unterminated',
        record("ok-2", "the second valid record", label=None),
        record("unknown", "has an extra field", extra_field=1),
        record("empty", "   "),
        record("big", OVERSIZE),
        record("when", "bad time", timestamp="yesterday at noon"),
        record("ok-1", "same id as line 1"),
        record("ok-3", "the third valid record", meta={"source": "crm", "score": 0.5}),
        record("nested", "meta must be flat", meta={"a": {"b": 1}}),
        {"id": 7, "text": "id must be a string", "timestamp": "2025-01-01"},
        "[1, 2, 3]",
        record("ok-4", "the fourth valid record"),
    ]
    expected = {
        2: "malformed JSON",
        4: "unknown field 'extra_field'",
        5: "text is empty",
        6: "over the limit of 32768",
        7: "timestamp is not ISO-8601",
        8: "duplicate id (first seen on line 1)",
        10: "meta.a",
        11: "id",
        12: "JSON object",
    }
    return write_jsonl(tmp_path / "mixed.jsonl", lines), expected


def test_I10_mixed_file_stores_exactly_the_valid_lines_and_reports_each_bad_one(
    ws: Workspace, tmp_path: Path
) -> None:
    ws.create_tenant("acme")
    path, expected = _mixed_file(tmp_path)
    result = run_cli("ingest", "acme", str(path), "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accepted"] == 4 and report["rejected"] == len(expected)
    assert report["train"] + report["eval"] == 4
    assert {e["line"] for e in report["errors"]} == set(expected)
    for error in report["errors"]:
        assert expected[error["line"]] in error["reason"], error
    stored = ws.scope("acme").train.read()
    evals = ws.scope("acme", purpose=Purpose.EVALUATION).eval.read()
    assert sorted(s.record.id for s in stored + evals) == ["ok-1", "ok-2", "ok-3", "ok-4"]
    assert next(s.record for s in stored + evals if s.record.id == "ok-1").text == (
        "the first valid record"
    )
    # reasons are in the audit log, but no text of any line
    audit_dump = json.dumps([e.to_dict() for e in ws.audit.events(tenant="acme")])
    assert "valid record" not in audit_dump and "unterminated" not in audit_dump


def test_I10_strict_stores_nothing_and_exits_non_zero(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    path, expected = _mixed_file(tmp_path)
    result = run_cli("ingest", "acme", str(path), "--strict", "--workspace", str(ws.path))
    assert result.returncode == 6
    assert "nothing stored" in result.stderr
    for line, reason in expected.items():
        assert f"line {line}: " in result.stderr and reason in result.stderr
    assert ws.scope("acme").train.count() == 0 and ws.scope("acme").eval.count() == 0
    assert ws.audit.events(tenant="acme", action="ingest.refused")
    # a clean file under --strict is stored whole
    clean = write_jsonl(tmp_path / "clean.jsonl", [record(i, f"clean {i}") for i in range(5)])
    assert ws.tenant("acme").ingest(clean, strict=True).accepted == 5


def test_I10_strict_is_atomic_against_conflicting_ids_too(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    ws.tenant("acme").ingest([record("x", "original text")])
    with pytest.raises(IngestAborted):
        ws.tenant("acme").ingest(
            [record("y", "new record"), record("x", "changed text")], strict=True
        )
    assert ws.scope("acme").train.count() + ws.scope("acme").eval.count() == 1


def test_I10_reingesting_stores_nothing_twice(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("news")
    rows = sample(bbc_news(), 120, seed=1)
    path = write_jsonl(tmp_path / "bbc.jsonl", rows)
    first = ws.tenant("news").ingest(path)
    count = ws.scope("news").train.count() + ws.scope("news").eval.count()
    second = ws.tenant("news").ingest(path)
    assert second.accepted == 0 and second.duplicates == first.accepted + first.duplicates
    assert ws.scope("news").train.count() + ws.scope("news").eval.count() == count
    # the same id with other content is an error, not an overwrite
    changed = dict(rows[0], text="rewritten text")
    third = ws.tenant("news").ingest([changed])
    assert third.accepted == 0 and "different content" in third.errors[0]["reason"]


def test_routing_sends_about_the_configured_fraction_to_eval_deterministically(
    ws: Workspace, tmp_path: Path
) -> None:
    ws.create_tenant("critics")
    rows = sample(rotten_tomatoes(), 3000, seed=2)
    rows = [r for r in rows if r["text"]]
    report = ws.tenant("critics").ingest(rows)
    fraction = report.eval / (report.eval + report.train)
    assert 0.07 < fraction < 0.13, fraction  # 3000 draws: +-3.6 sigma
    # unlabelled records never go to eval
    ws.create_tenant("unlabelled")
    plain = [dict(r, label=None) for r in rows[:500]]
    assert ws.tenant("unlabelled").ingest(plain).eval == 0
    # the decision is a pure function of the workspace key, the tenant and the text (near
    # duplicates aside, which join the side their cluster is on)
    assert report.joined_eval == 0
    evals = {s.record.id for s in ws.scope("critics", purpose=Purpose.EVALUATION).eval.read()}
    info = ws.tenants.get("critics")
    assert evals == {
        r["id"] for r in rows if route_to_eval(ws.routing_key(), info.id, r["text"], 0.1)
    }


def test_routing_is_keyed_not_guessable() -> None:
    ids = [f"rec-{i}" for i in range(2000)]
    a = {i for i in ids if route_to_eval(b"a" * 32, "t-1", i, 0.1)}
    b = {i for i in ids if route_to_eval(b"b" * 32, "t-1", i, 0.1)}
    assert a != b and abs(len(a) - 200) < 60 and abs(len(b) - 200) < 60


def test_csv_and_stdin_ingestion(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    csv_path = tmp_path / "records.csv"
    csv_path.write_text(
        "id,text,label,timestamp,meta\n"
        'c1,"a, quoted, text",x,2025-01-01T00:00:00Z,"{""k"": 1}"\n'
        'c2,"multi\nline text",,2025-01-02,\n'
        "c3,,x,2025-01-03,\n"
        "c4,four,x,not-a-date,\n",
        encoding="utf-8",
    )
    report = ws.tenant("acme").ingest(csv_path)
    assert report.accepted == 2
    assert [(e["line"], e["reason"]) for e in report.errors] == [
        (5, "text: text is empty"),
        (6, "timestamp: timestamp is not ISO-8601"),
    ]
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("id,text,timestamp,secret\n1,x,2025-01-01,y\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="unknown columns"):
        ws.tenant("acme").ingest(bad_header)
    stdin = "\n".join(json.dumps(record(f"s{i}", f"from stdin {i}")) for i in range(3))
    result = run_cli("ingest", "acme", "-", "--workspace", str(ws.path), "--json", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == 3


def test_missing_file_and_unknown_tenant_are_clear_errors(ws: Workspace, tmp_path: Path) -> None:
    ws.create_tenant("acme")
    result = run_cli("ingest", "acme", str(tmp_path / "nope.jsonl"), "--workspace", str(ws.path))
    assert result.returncode == 6 and "no such file" in result.stderr
    result = run_cli("ingest", "ghost", str(tmp_path / "nope.jsonl"), "--workspace", str(ws.path))
    assert result.returncode == 4 and "no tenant named 'ghost'" in result.stderr
    result = run_cli("tenant", "list", "--workspace", str(tmp_path / "none"))
    assert result.returncode == 3 and "no workspace" in result.stderr
    not_utf8 = tmp_path / "latin.jsonl"
    not_utf8.write_bytes(b'{"id": "1", "text": "caf\xe9", "timestamp": "2025-01-01"}\n')
    result = run_cli("ingest", "acme", str(not_utf8), "--workspace", str(ws.path), "--json")
    assert result.returncode == 6 and "UTF-8" in result.stderr


@pytest.mark.parametrize("policy", ["redact", "tokenize", "reject"])
def test_minimisation_policy_is_applied_before_storage(
    ws: Workspace, tmp_path: Path, policy: str
) -> None:
    ws.create_tenant("acme", pii_policy=policy)
    rows = [
        record("p1", "Contact jane.doe@example.org or +44 20 7946 0958 today"),
        record("p2", "No personal data here at all"),
        record("p3", "Card 4111 1111 1111 1111 on file for JANE.DOE@example.org"),
    ]
    report = ws.tenant("acme").ingest(rows)
    texts = {
        s.record.id: s.record.text
        for s in ws.scope("acme").train.read()
        + ws.scope("acme", purpose=Purpose.EVALUATION).eval.read()
    }
    if policy == "reject":
        assert report.accepted == 1 and report.rejected == 2
        assert "policy is reject" in report.errors[0]["reason"]
        assert set(texts) == {"p2"}
        return
    assert report.accepted == 3 and report.redactions["email"] == 2
    assert all("jane.doe" not in t.lower() and "4111" not in t for t in texts.values())
    if policy == "redact":
        assert "[EMAIL]" in texts["p1"] and "[PHONE]" in texts["p1"]
    else:
        token_1 = texts["p1"].split()[1]
        assert token_1.startswith("[EMAIL:") and token_1 in texts["p3"]


def test_I5_exact_copies_of_eval_records_never_reach_training_in_either_order(
    ws: Workspace,
) -> None:
    ws.create_tenant("critics")
    rows = [r for r in sample(rotten_tomatoes(), 400, seed=5) if r["text"]]
    ws.tenant("critics").ingest(rows)
    evaluation = ws.scope("critics", purpose=Purpose.EVALUATION).eval.read()
    assert evaluation
    target = evaluation[0].record
    # train after eval: a case/punctuation-changed copy under a new unlabelled id
    copy = record("copy-1", target.text.upper().replace(",", " ,") + "!!", label=None)
    report = ws.tenant("critics").ingest([copy])
    assert report.contaminated == 1 and report.accepted == 0
    match = ws.audit.events(tenant="critics", action="contamination.match")[-1]
    assert match.details["record_id"] == "copy-1" and match.details["similarity"] == 1.0
    assert target.text[:30] not in json.dumps(match.details)

    # eval after train: a train record is moved out when its copy is registered as eval
    ws.create_tenant("fresh")
    ws.tenant("fresh").ingest([record("t1", "Identical review text, word for word.", label=None)])
    report = Gateway(ws).ingest(
        "fresh", [record("e1", "identical review text word for word")], all_to_eval=True
    )
    assert report.eval == 1 and report.quarantined == 1
    assert ws.scope("fresh", purpose=Purpose.TRAINING).train.read() == []
    assert ws.scope("fresh").train.quarantined_count() == 1
    assert ws.audit.events(tenant="fresh", action="contamination.quarantine")


def test_exact_duplicate_texts_under_new_ids_are_stored_as_copies(ws: Workspace) -> None:
    """A copy is evidence of how often a text occurs; an answer about a text (feedback,
    ``keep_copies=False``) whose text is in training is not stored again."""
    ws.create_tenant("acme")
    report = ws.tenant("acme").ingest(
        [record("a", "Same words here", label=None), record("b", "same  WORDS here.", label=None)]
    )
    assert (report.accepted, report.train, report.copies, report.duplicates) == (2, 2, 1, 0)
    answer = Gateway(ws).ingest(
        "acme", [record("c", "SAME words, here", label=None)], keep_copies=False
    )
    assert (answer.accepted, answer.repeats, answer.duplicates) == (0, 1, 1)
    assert ws.scope("acme").train.count() == 2
