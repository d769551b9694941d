"""I6: nothing of a record's text reaches any file of the workspace in clear."""

from __future__ import annotations

import secrets
from pathlib import Path

from helpers import write_jsonl
from silolearn import Workspace
from silolearn.datasets import health_tweets, sample
from silolearn.records import Record
from silolearn.storage.scope import Purpose


def _all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_I6_no_plaintext_in_any_workspace_file(ws: Workspace, tmp_path: Path) -> None:
    # real tweets, each made distinctive with a marker that exists nowhere else
    markers = [f"zq{secrets.token_hex(8)}xv" for _ in range(60)]
    rows = sample(health_tweets(), 60, seed=3)
    for row, marker in zip(rows, markers, strict=True):
        row["text"] = f"{row['text']} {marker}"
    ws.create_tenant("health")
    report = ws.tenant("health").ingest(write_jsonl(tmp_path / "in.jsonl", rows))
    assert report.accepted == 60 and report.train > 0
    # routing is keyed and random per workspace: make sure the eval store holds text too
    ws.scope("health").eval.append(
        [Record(id="eval-bound", text=f"labelled {markers[0]}x eval", timestamp="2025-01-01")]
    )
    ws.scope("health").blobs.put("adapter", f"weights for {markers[1]}".encode())
    stored = ws.scope("health", purpose=Purpose.TRAINING).train.read()
    assert any(m in s.record.text for s in stored for m in markers)

    files = _all_bytes(ws.path)
    names = {p.name for p, _ in files}
    assert "silolearn.db" in names and "silolearn.db-wal" in names
    # distinctive strings, and longer real phrases of the tweets themselves
    needles = [m.encode() for m in markers]
    needles += [r["text"][:40].encode() for r in rows]
    for path, data in files:
        for needle in needles:
            assert needle not in data, f"{needle[:40]!r} found in clear in {path}"
