"""Routing by content: every copy of a text lands on one side, near-copies join their
cluster, no label vanishes from training silently, and ``tenant health`` shows it (I5)."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from helpers import record, run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import bbc_news, health_tweets, kaomoji, sample
from silolearn.ingest.gateway import Gateway, route_to_eval
from silolearn.ingest.health import (
    MIN_EVAL_TEXTS,
    NO_TRAINING,
    SHARE_COLLAPSED,
    label_warnings,
)
from silolearn.storage.scope import Purpose
from silolearn.text import content_form, normalise

TOPICS = 8
PER_TOPIC = 40
REPEATED_TEXTS = 6
COPIES = 400


@pytest.fixture(scope="module")
def tweets_by_source() -> dict[str, list[dict[str, Any]]]:
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in health_tweets():
        by_source[str(row["label"])].append(row)
    return dict(sorted(by_source.items()))


def _chat_corpus(tweets: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Eight topics of distinct tweets, and a "support" topic that is half the corpus: six
    short texts repeated under distinct ids, as in a chatbot's logs."""
    sources = list(tweets)
    rows = [r for s in sources[:TOPICS] for r in sample(tweets[s], PER_TOPIC, seed=1)]
    repeated = sample(tweets[sources[TOPICS]], REPEATED_TEXTS, seed=2)
    rows += [
        dict(repeated[i % REPEATED_TEXTS], id=f"support-{i}", label="support")
        for i in range(COPIES)
    ]
    random.Random(0).shuffle(rows)
    return rows


def test_repeated_texts_keep_every_label_in_training(
    ws: Workspace, tweets_by_source: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    ws.create_tenant("chat")
    rows = _chat_corpus(tweets_by_source)
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    result = run_cli("ingest", "chat", str(path), "--workspace", str(ws.path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    labels = report["labels"]
    assert len(labels) == TOPICS + 1 and report["warnings"] == []
    assert all(counts["train"] > 0 for counts in labels.values()), labels
    support = labels["support"]
    assert support["arrived"] == COPIES and support["contaminated"] == 0
    # both stores keep every copy: how often a text occurs is evidence of the label mix
    assert support["train_texts"] + support["eval_texts"] == REPEATED_TEXTS
    assert support["train"] + support["eval"] == COPIES and support["repeats"] == 0
    assert support["train"] > support["train_texts"] > 0
    assert report["copies"] == sum(c["train"] - c["train_texts"] for c in labels.values())
    for counts in labels.values():
        assert counts["arrived"] == sum(
            counts[k] for k in ("train", "eval", "duplicates", "repeats", "contaminated")
        )
    assert report["contaminated"] == 0 and report["quarantined"] == 0

    # every copy of a text is on one side
    sides: dict[str, set[str]] = defaultdict(set)
    audit_scope = ws.scope("chat", purpose=Purpose.AUDIT)
    for stored in audit_scope.train.read():
        sides[normalise(stored.record.text)].add("train")
    for stored in audit_scope.eval.read():
        sides[normalise(stored.record.text)].add("eval")
    assert sides and all(len(s) == 1 for s in sides.values())
    assert sum(s == {"eval"} for s in sides.values()) == sum(
        c["eval_texts"] for c in labels.values()
    )

    health = run_cli("tenant", "health", "chat", "--workspace", str(ws.path), "--json")
    assert health.returncode == 0, health.stderr
    view = json.loads(health.stdout)
    assert view["warnings"] == [] and set(view["labels"]) == set(labels)
    for name, counts in view["labels"].items():
        assert counts["train"] == labels[name]["train"] > 0
        assert counts["train_texts"] == labels[name]["train_texts"] > 0
        assert counts["eval"] == labels[name]["eval"]
        assert counts["quarantined"] == 0 and counts["warnings"] == []
    assert sum(c["train_share"] for c in view["labels"].values()) == pytest.approx(1, abs=1e-3)


def _routed(ws: Workspace, tenant: str, text: str) -> bool:
    return route_to_eval(ws.routing_key(), ws.tenants.get(tenant).id, text, 0.1)


def _near_copy(ws: Workspace, tenant: str, text: str, *, to_eval: bool) -> str:
    """A near-copy of ``text`` (Jaccard >= 0.8) whose own routing goes to the given side."""
    words = text.split()
    for n in range(1000):
        copy = " ".join([*words[:-3], f"edition {n}"])
        if _routed(ws, tenant, copy) == to_eval:
            return copy
    raise AssertionError("no near-copy routed to that side")


def test_near_copies_join_the_side_their_cluster_is_on(ws: Workspace) -> None:
    ws.create_tenant("news")
    # 180 articles: one in ten routes to eval, so none doing so has odds of 0.9 ** 180
    articles = [
        str(r["text"])
        for r in sample(bbc_news(), 300, seed=3)
        if 250 <= len(str(r["text"]).split()) <= 600
    ]
    in_eval = next(t for t in articles if _routed(ws, "news", t))
    in_train = next(t for t in articles if not _routed(ws, "news", t))
    first = ws.tenant("news").ingest(
        [record("e", in_eval, label="business"), record("t", in_train, label="tech")]
    )
    assert (first.eval, first.train) == (1, 1)

    # a labelled near-copy of an eval record joins eval instead of being dropped
    joins_eval = record("e-copy", _near_copy(ws, "news", in_eval, to_eval=False), label="business")
    # a near-copy of a training record routed to eval by its own text stays with training
    joins_train = record("t-copy", _near_copy(ws, "news", in_train, to_eval=True), label="tech")
    # unlabelled, it cannot be an eval record: it is contaminated (I5)
    unlabelled = record("u-copy", _near_copy(ws, "news", in_eval, to_eval=False), label=None)
    report = ws.tenant("news").ingest([joins_eval, joins_train, unlabelled])
    assert report.joined_eval == 1 and report.contaminated == 1 and report.quarantined == 0
    assert report.labels["business"].eval == 1 and report.labels["tech"].train == 1
    assert report.unlabelled.contaminated == 1
    train_ids = {s.record.id for s in ws.scope("news", purpose=Purpose.TRAINING).train.read()}
    eval_ids = {s.record.id for s in ws.scope("news", purpose=Purpose.EVALUATION).eval.read()}
    assert train_ids == {"t", "t-copy"} and eval_ids == {"e", "e-copy"}

    # within one batch: a train-routed near-copy of an eval-routed text joins it in eval
    ws.create_tenant("batch")
    fresh = next(t for t in articles if _routed(ws, "batch", t))
    copy = _near_copy(ws, "batch", fresh, to_eval=False)
    both = ws.tenant("batch").ingest([record("b1", fresh, label="x"), record("b2", copy, "x")])
    assert (both.eval, both.train, both.joined_eval, both.quarantined) == (2, 0, 1, 0)
    [batch] = ws.audit.events(tenant="batch", action="ingest.batch")
    assert batch.details["joined_eval"] == 1


def test_label_with_eval_records_but_no_training_records_warns_and_is_audited(
    ws: Workspace, tweets_by_source: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    ws.create_tenant("desk")
    sources = list(tweets_by_source)
    rows = [r for s in sources[:4] for r in sample(tweets_by_source[s], PER_TOPIC, seed=4)]
    # a label whose every text happens to route to eval: nothing of it reaches training
    rare_pool = tweets_by_source[sources[5]]
    rare = [r for r in rare_pool if _routed(ws, "desk", str(r["text"]))][:3]
    rows += [dict(r, label="rare") for r in rare]
    path = write_jsonl(tmp_path / "desk.jsonl", rows)

    result = run_cli("ingest", "desk", str(path), "--workspace", str(ws.path))
    assert result.returncode == 0, result.stderr
    assert "rare" in result.stdout and "by label" in result.stdout
    assert "warning (no_training_records)" in result.stderr and "'rare'" in result.stderr
    [event] = ws.audit.events(tenant="desk", action="ingest.label_warning")
    assert event.details == {
        "label": "rare",
        "kind": NO_TRAINING,
        "train": 0,
        "eval_texts": 3,
        "train_share": 0.0,
        "eval_share": event.details["eval_share"],
    }
    assert not any(str(r["text"])[:20] in json.dumps(event.details) for r in rare)

    health = run_cli("tenant", "health", "desk", "--workspace", str(ws.path), "--json")
    assert health.returncode == 0, health.stderr
    view = json.loads(health.stdout)
    assert [(w["label"], w["kind"]) for w in view["warnings"]] == [("rare", NO_TRAINING)]
    assert view["labels"]["rare"] == {
        "train": 0,
        "train_texts": 0,
        "eval": 3,
        "eval_texts": 3,
        "quarantined": 0,
        "train_share": 0.0,
        "eval_share": view["labels"]["rare"]["eval_share"],
        "warnings": [NO_TRAINING],
    }
    human = run_cli("tenant", "health", "desk", "--workspace", str(ws.path))
    assert human.returncode == 0, human.stderr
    assert "health desk" in human.stdout and NO_TRAINING in human.stdout
    assert "warning (no_training_records)" in human.stderr

    # a training record of the label clears the warning; later ingests of eval-routed
    # records of a label that is in training do not warn again
    in_train = next(r for r in rare_pool if not _routed(ws, "desk", str(r["text"])))
    more_eval = next(
        r
        for r in rare_pool
        if _routed(ws, "desk", str(r["text"])) and r["id"] not in {x["id"] for x in rare}
    )
    assert ws.tenant("desk").ingest([dict(in_train, label="rare")]).warnings == []
    assert ws.tenant("desk").ingest([dict(more_eval, label="rare")]).warnings == []
    assert len(ws.audit.events(tenant="desk", action="ingest.label_warning")) == 1
    view = json.loads(
        run_cli("tenant", "health", "desk", "--workspace", str(ws.path), "--json").stdout
    )
    assert view["warnings"] == [] and view["labels"]["rare"]["train"] == 1

    # a quarantined tenant can still be diagnosed
    ws.tenant("desk").quarantine("review")
    quarantined = run_cli("tenant", "health", "desk", "--workspace", str(ws.path), "--json")
    assert quarantined.returncode == 0, quarantined.stderr


def test_eval_registration_warns_only_for_labels_it_took_out_of_training(
    ws: Workspace, tmp_path: Path
) -> None:
    ws.create_tenant("clinic")
    rows = sample(bbc_news(), 40, seed=6)
    texts = [str(r["text"]) for r in rows if not _routed(ws, "clinic", str(r["text"]))][:4]
    ws.tenant("clinic").ingest(
        [record(f"t{i}", text, label="ab"[i // 2]) for i, text in enumerate(texts)]
    )
    gateway = Gateway(ws)
    # registering eval records of a label with no training data is not a loss: no warning
    fresh = gateway.ingest(
        "clinic", [record("e-new", "an unrelated new example", "c")], all_to_eval=True
    )
    assert fresh.warnings == []
    # a registration that leaves a label some training records quarantines without warning
    one = write_jsonl(tmp_path / "one.jsonl", [record("e2", texts[2], label="b")])
    registered = run_cli(
        "eval",
        "register",
        str(one),
        "--name",
        "one",
        "--tenant",
        "clinic",
        "--workspace",
        str(ws.path),
        "--json",
    )
    assert registered.returncode == 0, registered.stderr
    report = json.loads(registered.stdout)
    assert report["quarantined"] == 1 and report["labels"]["b"]["quarantined"] == 1
    assert report["warnings"] == []
    # copies of every training record of label "a" take it out of training: a warning
    copies = write_jsonl(
        tmp_path / "copies.jsonl", [record(f"e{i}", texts[i], label="a") for i in range(2)]
    )
    human = run_cli(
        "eval",
        "register",
        str(copies),
        "--name",
        "copies",
        "--tenant",
        "clinic",
        "--workspace",
        str(ws.path),
    )
    assert human.returncode == 0, human.stderr
    assert "warning (no_training_records)" in human.stderr and "'a'" in human.stderr
    [event] = ws.audit.events(tenant="clinic", action="ingest.label_warning")
    assert event.details["label"] == "a" and event.details["train"] == 0
    view = json.loads(
        run_cli("tenant", "health", "clinic", "--workspace", str(ws.path), "--json").stdout
    )
    assert view["labels"]["a"]["quarantined"] == 2 and view["labels"]["a"]["train"] == 0
    assert view["labels"]["b"]["quarantined"] == 1 and view["labels"]["b"]["train"] == 1
    assert {w["label"] for w in view["warnings"]} == {"a", "c"}


def test_collapse_rule_needs_enough_eval_texts() -> None:
    train = {"big": 900, "small": 10, "other": 90}
    # "small" is 1% of training; with 10 of 40 distinct eval texts (25%) it has collapsed
    flagged = label_warnings(train, {"big": 25, "small": MIN_EVAL_TEXTS, "other": 5})
    assert [(w.label, w.kind) for w in flagged] == [("small", SHARE_COLLAPSED)]
    assert "1.0% of training" in flagged[0].message
    # one text fewer is too few to say so
    assert label_warnings(train, {"big": 25, "small": MIN_EVAL_TEXTS - 1, "other": 5}) == []
    # a share above a quarter of the eval share is not a collapse
    assert label_warnings({"big": 800, "small": 200}, {"big": 30, "small": 10}) == []
    # no training record is always a warning, whatever the counts
    [gone] = label_warnings({"big": 10}, {"big": 50, "gone": 1})
    assert (gone.label, gone.kind, gone.train) == ("gone", NO_TRAINING, 0)


def test_tenant_health_of_an_unknown_tenant_is_a_typed_error(ws: Workspace) -> None:
    human = run_cli("tenant", "health", "nobody", "--workspace", str(ws.path))
    assert human.returncode == 4
    assert "no tenant named 'nobody'" in human.stderr and "Traceback" not in human.stderr
    as_json = run_cli("tenant", "health", "nobody", "--workspace", str(ws.path), "--json")
    assert as_json.returncode == 4 and as_json.stdout == ""
    assert json.loads(as_json.stderr)["error"] == "TenantNotFound"


def test_texts_of_symbols_only_are_not_copies_of_one_another(ws: Workspace) -> None:
    """A kaomoji normalises to the empty string; distinct ones are still distinct texts:
    each is stored for training, and routing spreads them over both sides."""
    faces = [r for r in kaomoji() if not normalise(str(r["text"]))]
    faces = list({content_form(str(r["text"])): r for r in faces}.values())[:200]
    assert len(faces) == 200
    ws.create_tenant("faces")
    report = ws.tenant("faces").ingest(
        [record(f"k{i}", str(r["text"]), label=str(r["label"])) for i, r in enumerate(faces)]
    )
    assert report.repeats == 0 and report.copies == 0 and report.contaminated == 0
    assert report.train + report.eval == 200 and 0 < report.eval < 50
    # the same face under another id is a copy, stored beside the first
    face = next(s.record for s in ws.scope("faces", purpose=Purpose.AUDIT).train.read())
    again = ws.tenant("faces").ingest([record("again", face.text, label=str(face.label))])
    assert (again.train, again.copies) == (1, 1)
