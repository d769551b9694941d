"""I5, completed: no training record is a near-duplicate (word 5-gram Jaccard >= 0.8) of
an eval record, in either order of arrival, on real text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import record, run_cli, write_jsonl
from silolearn import Workspace
from silolearn.datasets import bbc_news, sample
from silolearn.errors import ConfigError
from silolearn.ingest.gateway import Gateway
from silolearn.ingest.minhash import shingle_hashes
from silolearn.storage.scope import Purpose


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Brute-force word 5-gram Jaccard: the ground truth the filter must agree with."""

    def grams(t: str) -> set[tuple[str, ...]]:
        w = _words(t)
        return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def edited_copy(text: str) -> str:
    """Words swapped, punctuation and case changed, a sentence added."""
    words = text.split()
    words[10], words[11] = words[11], words[10]
    words[40], words[41] = words[41], words[40]
    changed = " ".join(words).upper().replace(",", " ;").replace(".", "!")
    return changed + " This sentence was added by a careless editor at the end."


@pytest.fixture(scope="module")
def articles() -> list[dict[str, object]]:
    rows = sample(bbc_news(), 80, seed=11)
    return [r for r in rows if 250 <= len(str(r["text"]).split()) <= 600][:30]


def test_I5_near_copy_of_eval_record_is_not_stored_for_training(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("newsroom")
    target, unrelated, half_source = (str(a["text"]) for a in articles[:3])
    Gateway(ws).ingest("newsroom", [record("ev", target, label="business")], all_to_eval=True)
    assert ws.scope("newsroom").eval.count() == 1

    copy = edited_copy(target)
    words = target.split()
    half = " ".join(words[: len(words) // 2] + half_source.split()[: len(words) // 2])
    assert jaccard(copy, target) >= 0.8
    assert 0.2 <= jaccard(half, target) <= 0.6
    rows = [
        record("copy", copy, label=None),
        record("unrelated", unrelated, label=None),
        record("half", half, label=None),
    ]
    result = run_cli(
        "ingest",
        "newsroom",
        str(write_jsonl(tmp_path / "r.jsonl", rows)),
        "--workspace",
        str(ws.path),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["contaminated"] == 1 and report["train"] == 2
    stored = {s.record.id for s in ws.scope("newsroom", purpose=Purpose.TRAINING).train.read()}
    assert stored == {"unrelated", "half"}

    [event] = ws.audit.events(tenant="newsroom", action="contamination.match")
    assert event.details["record_id"] == "copy" and event.details["source"] == "eval"
    assert event.object is not None and "copy" not in event.object
    assert event.details["similarity"] == pytest.approx(jaccard(copy, target), abs=0.02)
    assert isinstance(event.details["eval_seq"], int)
    dumped = json.dumps(event.to_dict())
    assert not any(w in dumped for w in words[5:15] if len(w) > 6)

    shown = run_cli("contamination", "report", "newsroom", "--workspace", str(ws.path), "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["threshold"] == 0.8 and summary["ngram"] == 5 and summary["num_perm"] == 128
    assert summary["bands"] * summary["rows"] <= 128
    assert summary["contaminated"] == 1
    assert summary["index"]["eval"]["entries"] == 1 and summary["index"]["train"]["entries"] == 2
    assert [m["record_id"] for m in summary["matches"]] == ["copy"]


def test_I5_eval_arriving_after_a_training_copy_quarantines_it(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    ws.create_tenant("newsroom")
    original, other = str(articles[3]["text"]), str(articles[4]["text"])
    ws.tenant("newsroom").ingest(
        [record("t-copy", edited_copy(original), label=None), record("t-other", other, label=None)]
    )
    evals = write_jsonl(tmp_path / "eval.jsonl", [record("e-1", original, label="tech")])
    result = run_cli(
        "eval",
        "register",
        str(evals),
        "--name",
        "spring",
        "--tenant",
        "newsroom",
        "--workspace",
        str(ws.path),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["quarantined"] == 1
    stored = {s.record.id for s in ws.scope("newsroom", purpose=Purpose.TRAINING).train.read()}
    assert stored == {"t-other"}
    [event] = ws.audit.events(tenant="newsroom", action="contamination.quarantine")
    assert event.details["similarity"] >= 0.8 and event.details["direction"] == "eval_after_train"


def test_I5_workspace_benchmark_applies_to_every_tenant_both_ways(
    ws: Workspace, articles: list[dict[str, object]], tmp_path: Path
) -> None:
    suite, later = str(articles[5]["text"]), str(articles[6]["text"])
    for name in ("alpha", "beta"):
        ws.create_tenant(name)
        ws.tenant(name).ingest([record(f"{name}-1", edited_copy(suite), label=None)])
    ws.tenant("beta").quarantine("under review")
    path = write_jsonl(
        tmp_path / "suite.jsonl", [record("s-1", suite, label="x"), record("s-2", later)]
    )
    result = run_cli(
        "eval",
        "register",
        str(path),
        "--name",
        "safety-suite",
        "--workspace",
        str(ws.path),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    # a quarantined tenant is cleaned too: removing data from training is always allowed
    assert json.loads(result.stdout)["quarantined"] == {"alpha": 1, "beta": 1}
    report = ws.tenant("alpha").ingest([record("alpha-2", edited_copy(later), label=None)])
    assert report.contaminated == 1
    match = ws.audit.events(tenant="alpha", action="contamination.match")[-1]
    assert match.details["source"] == "registry"
    again = run_cli(
        "eval", "register", str(path), "--name", "safety-suite", "--workspace", str(ws.path)
    )
    assert again.returncode == 5 and "already exists" in again.stderr


def test_index_is_loaded_after_a_restart_not_rebuilt(
    ws_path: Path, articles: list[dict[str, object]]
) -> None:
    texts = [str(a["text"]) for a in articles[7:27]]
    with Workspace.init(ws_path) as ws:
        ws.create_tenant("newsroom")
        Gateway(ws).ingest(
            "newsroom", [record(f"e{i}", t) for i, t in enumerate(texts)], all_to_eval=True
        )
        probes = [record(f"p{i}", edited_copy(t), label=None) for i, t in enumerate(texts[:10])]
        first = ws.tenant("newsroom").ingest(probes[:5])
        segments = ws.conn.execute("SELECT COUNT(*) FROM contamination_segments").fetchone()[0]
    with Workspace.open(ws_path) as ws:
        second = ws.tenant("newsroom").ingest(probes[5:])
        checker = ws.contamination()
        # loaded from the persisted segments: as many segments as stored, no eval text read
        assert checker.store.segments_loaded >= 1
        assert checker.store.segments_loaded <= segments
        reads = [
            e
            for e in ws.audit.events(tenant="newsroom", action="data.read")
            if e.object == "eval_store"
        ]
        assert reads == []
    assert first.contaminated == 5 and second.contaminated == 5


def test_no_workspace_file_holds_eval_text_or_plaintext_shingles(
    ws: Workspace, articles: list[dict[str, object]]
) -> None:
    texts = [str(a["text"]) for a in articles[:10]]
    ws.create_tenant("newsroom")
    Gateway(ws).ingest(
        "newsroom", [record(f"e{i}", t) for i, t in enumerate(texts)], all_to_eval=True
    )
    ws.tenant("newsroom").ingest([record("p", edited_copy(texts[0]), label=None)])
    config = ws.contamination().store.config
    needles: list[bytes] = []
    for text in texts:
        needles.append(" ".join(text.split()[20:28]).encode())
        hashes = shingle_hashes(text, config)
        for dtype in ("<u4", ">u4", "<u8"):
            needles.append(np.asarray(hashes[:6]).astype(dtype).tobytes())
    for path in sorted(p for p in ws.path.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"found in clear in {path}"


def test_changed_settings_do_not_silently_reuse_an_old_index(
    ws_path: Path, articles: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Workspace.init(ws_path) as ws:
        ws.create_tenant("newsroom")
        Gateway(ws).ingest("newsroom", [record("e", str(articles[0]["text"]))], all_to_eval=True)
    monkeypatch.setenv("SILOLEARN_CONTAMINATION__THRESHOLD", "0.9")
    with Workspace.open(ws_path) as ws, pytest.raises(ConfigError, match=r"threshold=0\.8"):
        ws.tenant("newsroom").ingest([record("t", "a new training record", label=None)])
