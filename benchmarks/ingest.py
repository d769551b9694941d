"""Ingestion throughput through the real gateway, against two baselines on the same records.

What is measured, per dataset (health-news tweets: short texts; BBC articles: long texts):

* **gateway**: ``ws.tenant(name).ingest(records)`` on a fresh workspace and tenant, i.e. strict
  schema validation (pydantic), PII minimisation (redact policy), keyed routing to the eval
  store, the exact contamination check, AES-256-GCM sealing, SQLite in WAL mode with
  ``synchronous=FULL`` (one transaction per batch of 1,000) and the audit events;
* **re-ingest**: the same records again into the same tenant: all are duplicates (idempotency
  on the record id), so nothing is sealed or stored beyond one audit event per batch;
* **baseline (a), the floor**: the plaintext JSON records inserted with ``executemany`` into a
  fresh SQLite WAL table opened with the same pragmas and committed in the same batches (no
  validation, no crypto, no audit);
* **baseline (b)**: pydantic validation and AES-GCM sealing only (no database), to show how
  much of the gateway's time these two take.

Rates are records/s and MB/s of the records' compact JSON encoding; "x plaintext" is the
time ratio to baseline (a) in the same run, which is what should be compared across
machines. Each path runs ``--repeat`` times (median reported), each time in a fresh temporary
directory. A stage breakdown times the gateway's per-record steps in isolation on the same
records; ``--profile`` adds the top cProfile entries of one more gateway run.

Quick run: ``python benchmarks/ingest.py --records 2000 --bbc-records 200 --repeat 1``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    Table,
    add_output_flags,
    fmt_float,
    fmt_int,
    fmt_ratio,
    limit_threads,
    machine,
    median,
    print_json,
    rate,
    render,
    timed,
)
from silolearn import datasets, db
from silolearn.config import IngestConfig
from silolearn.ingest.gateway import Gateway, IngestReport, route_to_eval
from silolearn.ingest.minimise import MinimisationPolicy, Minimiser
from silolearn.records import Record, record_from_mapping
from silolearn.security.envelope import DataKey
from silolearn.text import normalise
from silolearn.workspace import Workspace

TENANT = "bench"
ACTOR = "bench:ingest"
PATHS = ("plaintext", "validate_seal", "gateway", "reingest")
LABELS = {
    "plaintext": "(a) plain sqlite3 executemany, JSON (floor)",
    "validate_seal": "(b) pydantic + AES-GCM only, no DB",
    "gateway": "gateway ingest, fresh tenant",
    "reingest": "gateway re-ingest, all duplicates",
}
Row = dict[str, Any]


def encode(row: Row) -> str:
    return json.dumps(row, separators=(",", ":"), ensure_ascii=False)


# -- the paths ------------------------------------------------------------------------------


def plain_sqlite(rows: list[Row], path: Path, batch_size: int) -> float:
    """Baseline (a): plaintext JSON into a WAL table, same pragmas, same batches."""
    conn = db.connect(path)
    try:
        conn.execute(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL "
            "UNIQUE, ts TEXT NOT NULL, body TEXT NOT NULL)"
        )

        def run() -> None:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                with db.transaction(conn):
                    conn.executemany(
                        "INSERT INTO records (id, ts, body) VALUES (?, ?, ?)",
                        [(r["id"], r["timestamp"], encode(r)) for r in batch],
                    )

        seconds, _ = timed(run)
    finally:
        conn.close()
    return seconds


def validate_and_seal(rows: list[Row]) -> float:
    """Baseline (b): the schema validation and the AES-GCM seal of each record, nothing else."""
    key = DataKey.generate("t-bench", 1)

    def run() -> None:
        for row in rows:
            record = record_from_mapping(row)
            key.seal(record.canonical_json().encode(), kind="train", object_id=record.id)

    seconds, _ = timed(run)
    return seconds


def new_workspace(root: Path) -> Workspace:
    ws = Workspace.init(root / "ws", actor=ACTOR)
    ws.create_tenant(TENANT)
    return ws


def gateway_runs(
    rows: list[Row], root: Path
) -> tuple[float, IngestReport, list[float], float, IngestReport]:
    """The gateway on a fresh workspace (with the time of each committed batch), then the same
    records again (all duplicates). ``Gateway(ws).ingest`` is what ``ws.tenant(n).ingest``
    calls; it is used directly for its progress callback."""
    ws = new_workspace(root)
    marks: list[tuple[int, float]] = []
    try:
        gateway = Gateway(ws)
        marks.append((0, time.perf_counter()))
        first_s, first = timed(
            lambda: gateway.ingest(
                TENANT, rows, progress=lambda n: marks.append((n, time.perf_counter()))
            )
        )
        again_s, again = timed(lambda: ws.tenant(TENANT).ingest(rows))
    finally:
        ws.close()
    # microseconds per record of each committed batch
    batches = [1e6 * (t1 - t0) / n for (_, t0), (n, t1) in itertools.pairwise(marks)]
    return first_s, first, batches, again_s, again


# -- where the gateway's time goes ----------------------------------------------------------


def stage_breakdown(rows: list[Row], root: Path, repeat: int) -> list[tuple[str, float]]:
    """Seconds of each per-record gateway step, timed in isolation on the same records
    (median of ``repeat`` passes)."""
    ws = new_workspace(root)
    try:
        scope = ws.scope(TENANT)
        tenant_id = scope.tenant.id
        minimiser = Minimiser(
            policy=MinimisationPolicy.REDACT, token_key=scope.keyed_hash("pii-tokens", tenant_id)
        )
        routing_key = ws.routing_key()
        fraction = ws.settings.ingest.eval_fraction
        key = DataKey.generate(tenant_id, 1)
        records = [record_from_mapping(r) for r in rows]

        def minimise() -> list[Record]:
            out = []
            for record in records:
                text = minimiser.apply(record.text).text
                out.append(
                    record if text == record.text else record.model_copy(update={"text": text})
                )
            return out

        minimised = minimise()
        prepared = [scope.prepare(r) for r in minimised]
        steps: list[tuple[str, Callable[[], object]]] = [
            ("schema validation (pydantic Record)", lambda: [record_from_mapping(r) for r in rows]),
            ("PII minimisation (detect + redact)", minimise),
            (
                "eval routing (HMAC of the normalised text)",
                lambda: [
                    route_to_eval(routing_key, tenant_id, r.text, fraction)
                    for r in minimised
                    if r.label is not None
                ],
            ),
            (
                "keyed hashes: scope.prepare (rid, digest, fingerprint)",
                lambda: [scope.prepare(r) for r in minimised],
            ),
            (
                "  - of which normalise_text (fingerprint input)",
                lambda: [normalise(r.text) for r in minimised],
            ),
            (
                "  - of which canonical_json (digest input)",
                lambda: [r.canonical_json() for r in minimised],
            ),
            (
                "AES-GCM seal (incl. a 2nd canonical_json)",
                lambda: [
                    key.seal(
                        p.record.canonical_json().encode(), kind="train", object_id=p.rid.hex()
                    )
                    for p in prepared
                ],
            ),
        ]
        times: dict[str, list[float]] = {label: [] for label, _ in steps}
        for _ in range(repeat):
            for label, step in steps:
                times[label].append(timed(step)[0])
    finally:
        ws.close()
    return [(label, median(values)) for label, values in times.items()]


def profile_gateway(rows: list[Row], root: Path, top: int) -> list[dict[str, Any]]:
    ws = new_workspace(root)
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        ws.tenant(TENANT).ingest(rows)
        profiler.disable()
    finally:
        ws.close()
    stats = pstats.Stats(profiler, stream=io.StringIO()).sort_stats("tottime")
    entries = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, line, name), (_, calls, tottime, cumtime, _) in sorted(
        raw.items(), key=lambda item: item[1][2], reverse=True
    )[:top]:
        where = name if filename == "~" else f"{Path(filename).name}:{line}({name})"
        entries.append({"function": where, "calls": calls, "tottime": tottime, "cumtime": cumtime})
    return entries


# -- the run --------------------------------------------------------------------------------


def bench_dataset(
    name: str,
    rows: list[Row],
    *,
    repeat: int,
    batch_size: int,
    tmpdir: str | None,
    breakdown: bool,
    profile_top: int,
) -> dict[str, Any]:
    runs: dict[str, list[float]] = {path: [] for path in PATHS}
    reports: dict[str, dict[str, Any]] = {}
    batch_us: list[list[float]] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="silolearn-bench-", dir=tmpdir) as tmp:
            root = Path(tmp)
            runs["plaintext"].append(plain_sqlite(rows, root / "plain.db", batch_size))
            runs["validate_seal"].append(validate_and_seal(rows))
            first_s, first, batches, again_s, again = gateway_runs(rows, root)
            batch_us.append(batches)
            runs["gateway"].append(first_s)
            runs["reingest"].append(again_s)
            reports = {"gateway": _summary(first), "reingest": _summary(again)}
    payload_bytes = sum(len(encode(r).encode()) for r in rows)
    result: dict[str, Any] = {
        "dataset": name,
        "records": len(rows),
        "batch_size": batch_size,
        "bytes": payload_bytes,
        "mean_record_bytes": payload_bytes / len(rows),
        "repeat": repeat,
        "runs_s": runs,
        "median_s": {path: median(times) for path, times in runs.items()},
        "reports": reports,
        "gateway_batch_us_per_record": batch_us,
    }
    # does a batch get slower as the tenant's tables grow? (first vs last 5 batches, all runs)
    if len(batch_us[0]) >= 10:
        result["gateway_batch_us_first_last"] = [
            median([b for run in batch_us for b in run[:5]]),
            median([b for run in batch_us for b in run[-5:]]),
        ]
    base = result["median_s"]["plaintext"]
    result["records_per_s"] = {p: rate(len(rows), s) for p, s in result["median_s"].items()}
    result["mb_per_s"] = {p: rate(payload_bytes / 1e6, s) for p, s in result["median_s"].items()}
    result["x_plaintext"] = {p: s / base for p, s in result["median_s"].items()}
    if breakdown:
        with tempfile.TemporaryDirectory(prefix="silolearn-bench-", dir=tmpdir) as tmp:
            stages = stage_breakdown(rows, Path(tmp), repeat)
        result["stages_s"] = dict(stages)
    if profile_top:
        with tempfile.TemporaryDirectory(prefix="silolearn-bench-", dir=tmpdir) as tmp:
            result["profile"] = profile_gateway(rows, Path(tmp), profile_top)
    return result


def _summary(report: IngestReport) -> dict[str, Any]:
    summary = report.to_dict()
    summary.pop("errors")
    return summary


def tables_for(result: dict[str, Any]) -> list[Table]:
    n = result["records"]
    title = (
        f"{result['dataset']}: {fmt_int(n)} records, mean {fmt_int(result['mean_record_bytes'])} "
        f"B of JSON, median of {result['repeat']}"
    )
    main = Table(title, ["path", "seconds", "records/s", "MB/s", "x plaintext time"])
    for path in PATHS:
        main.add(
            LABELS[path],
            fmt_float(result["median_s"][path], 3),
            fmt_int(result["records_per_s"][path]),
            fmt_float(result["mb_per_s"][path]),
            fmt_ratio(result["x_plaintext"][path]),
        )
    first, again = result["reports"]["gateway"], result["reports"]["reingest"]
    main.note = (
        f"gateway: {first['accepted']} accepted ({first['train']} train, {first['eval']} eval), "
        f"{first['duplicates']} duplicate texts, {first['contaminated']} contaminated, "
        f"{first['quarantined']} quarantined, {first['redactions']} redactions; "
        f"re-ingest: {again['accepted']} accepted, {again['duplicates']} duplicates"
    )
    if "gateway_batch_us_first_last" in result:
        first_us, last_us = result["gateway_batch_us_first_last"]
        main.note += (
            f"; gateway batches of {result['batch_size']}: median {fmt_float(first_us, 0)} "
            f"us/record over the first 5, {fmt_float(last_us, 0)} us/record over the last 5"
        )
    tables = [main]
    if "stages_s" in result:
        total = result["median_s"]["gateway"]
        stages = Table(
            f"{result['dataset']}: where the gateway's time goes (steps timed in isolation)",
            ["step", "us/record", "% of gateway time"],
        )
        top_level = 0.0
        for step, seconds in result["stages_s"].items():
            if not step.startswith(" "):
                top_level += seconds
            stages.add(step, fmt_float(seconds / n * 1e6, 1), fmt_float(100 * seconds / total, 1))
        rest = total - top_level
        stages.add(
            "rest: SQLite writes + fsync, lookups, audit, parse loop",
            fmt_float(rest / n * 1e6, 1),
            fmt_float(100 * rest / total, 1),
        )
        stages.add("gateway total (median above)", fmt_float(total / n * 1e6, 1), "100.0")
        tables.append(stages)
    if "profile" in result:
        profile = Table(
            f"{result['dataset']}: cProfile, top functions by own time (one profiled run)",
            ["function", "calls", "own s", "cumulative s"],
        )
        for entry in result["profile"]:
            profile.add(
                entry["function"],
                fmt_int(entry["calls"]),
                fmt_float(entry["tottime"], 3),
                fmt_float(entry["cumtime"], 3),
            )
        tables.append(profile)
    return tables


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=50_000, help="health-news tweets to ingest (0: skip)"
    )
    parser.add_argument(
        "--bbc-records", type=int, default=2_225, help="BBC articles to ingest (0: skip)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per path; the median counts")
    parser.add_argument("--seed", type=int, default=0, help="seed of the time-ordered subsample")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the per-step timing of the gateway"
    )
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=15,
        default=0,
        metavar="TOP",
        help="also profile one gateway run and show the TOP functions (default 15)",
    )
    parser.add_argument("--tmpdir", help="where the temporary workspaces go (default: $TMPDIR)")
    add_output_flags(parser)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    limit_threads()
    batch_size = IngestConfig().batch_size
    loaders: list[tuple[str, Callable[[], list[Row]], int]] = [
        ("health_tweets", datasets.health_tweets, args.records),
        ("bbc_news", datasets.bbc_news, args.bbc_records),
    ]
    results = []
    for name, loader, count in loaders:
        if count <= 0:
            continue
        rows = datasets.sample(loader(), count, seed=args.seed)
        results.append(
            bench_dataset(
                name,
                rows,
                repeat=args.repeat,
                batch_size=batch_size,
                tmpdir=args.tmpdir,
                breakdown=not args.no_breakdown,
                profile_top=args.profile,
            )
        )
    if args.json:
        print_json(
            {
                "benchmark": "ingest",
                "machine": machine(),
                "batch_size": batch_size,
                "results": results,
            }
        )
        return
    render([t for result in results for t in tables_for(result)], markdown=args.markdown)


if __name__ == "__main__":
    main()
