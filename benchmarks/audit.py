"""Audit log throughput: append rate, verify rate, and two processes appending at once.

What is measured, each on a fresh workspace (SQLite WAL, ``synchronous=FULL``, a signed
checkpoint every 1,000 events as configured by default):

* **(a) one event per transaction**: ``AuditLog.append``, what a single operation pays
  (``BEGIN IMMEDIATE``, read the last hash, hash, insert, commit with fsync); ``--single-events``
  events (default 5,000: a fsync'd commit each makes 100,000 of them slow to wait for);
* **(b) batched**: ``--events`` events (default 100,000) appended inside transactions of
  ``--batch`` (default 1,000) through ``with log.write() as conn: log.append_in(conn, ...)``;
* **(c) verify**: ``AuditLog.verify()`` over the chain written by (b): every hash and link,
  every checkpoint's Ed25519 signature and the head file; against a plain scan of the table;
* **(d) the baseline**: the very rows written by (b), inserted with plain ``sqlite3`` into an
  identical ``audit_events`` table in a fresh database with the same pragmas, batched the same
  way, without hashing (``executemany`` per batch: the floor; and one ``execute`` per row);
* **concurrency**: two processes (multiprocessing, spawn) appending N events each to one
  workspace at the same time, one event per transaction and batched; total events/s, how
  often the chain alternates between the writers, and that the chain verifies afterwards.

"x baseline" is our time per event divided by the baseline's in the same run (the ratio
to compare across machines). Each measurement runs ``--repeat`` times; medians are reported.

Quick run: ``python benchmarks/audit.py --events 5000 --single-events 500 --concurrent-events
2000 --concurrent-single 200 --repeat 1``.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
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
from silolearn import db
from silolearn.audit.log import AuditLog, canonical_details, event_hash, utcnow
from silolearn.config import AuditConfig
from silolearn.workspace import Workspace

TENANT = "bench"
EVENT_COLUMNS = "seq, ts, actor, tenant, action, object, details, prev_hash, hash"
AUDIT_TABLE = """
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        actor TEXT NOT NULL,
        tenant TEXT,
        action TEXT NOT NULL,
        object TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
"""
AuditRow = tuple[Any, ...]


def event(i: int) -> dict[str, Any]:
    """The i-th benchmark event: shaped like the gateway's per-batch audit event."""
    return {
        "action": "ingest.batch",
        "tenant": TENANT,
        "obj": None,
        "details": {
            "train": 900 + i % 100,
            "eval": 100 - i % 100,
            "duplicates_or_contaminated": i % 7,
            "rejected_lines": [],
            "rejected_reasons": [],
        },
    }


def append_single(
    log: AuditLog, count: int, offset: int = 0, latencies: list[float] | None = None
) -> None:
    for i in range(offset, offset + count):
        start = time.perf_counter()
        log.append(**event(i))
        if latencies is not None:
            latencies.append(time.perf_counter() - start)


def append_batched(
    log: AuditLog, count: int, batch: int, offset: int = 0, latencies: list[float] | None = None
) -> None:
    for first in range(offset, offset + count, batch):
        start = time.perf_counter()
        with log.write() as conn:
            for i in range(first, min(first + batch, offset + count)):
                log.append_in(conn, **event(i))
        if latencies is not None:
            latencies.append(time.perf_counter() - start)


def new_workspace(root: Path, actor: str = "bench:audit") -> Workspace:
    return Workspace.init(root / "ws", actor=actor)


def last_seq(ws: Workspace) -> int:
    row = ws.conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()
    return int(row[0] or 0)


# -- (a), (b), (c) --------------------------------------------------------------------------


def bench_single(root: Path, count: int) -> float:
    ws = new_workspace(root)
    try:
        seconds, _ = timed(lambda: append_single(ws.audit, count))
    finally:
        ws.close()
    return seconds


def bench_batched_and_verify(
    root: Path, count: int, batch: int
) -> tuple[float, float, float, dict[str, Any], list[AuditRow]]:
    """(b) then (c) on the same workspace; returns the appended rows for the baseline."""
    ws = new_workspace(root)
    try:
        before = last_seq(ws)
        append_s, _ = timed(lambda: append_batched(ws.audit, count, batch))
        ws.audit.checkpoint_if_moved()
        verify_s, report = timed(ws.audit.verify)
        scan_s, _ = timed(
            lambda: sum(
                1 for _ in ws.conn.execute(f"SELECT {EVENT_COLUMNS} FROM audit_events ORDER BY seq")
            )
        )
        rows = ws.conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq > ? ORDER BY seq", (before,)
        ).fetchall()
    finally:
        ws.close()
    return append_s, verify_s, scan_s, report.to_dict(), rows


# -- (d) the baseline -----------------------------------------------------------------------


def plain_inserts(path: Path, rows: list[AuditRow], batch: int, *, per_row: bool) -> float:
    conn = db.connect(path)
    try:
        conn.execute(AUDIT_TABLE)
        insert = f"INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

        def run() -> None:
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                with db.transaction(conn):
                    if per_row:
                        for row in chunk:
                            conn.execute(insert, row)
                    else:
                        conn.executemany(insert, chunk)

        seconds, _ = timed(run)
    finally:
        conn.close()
    return seconds


# -- where the time of one batched append goes ----------------------------------------------


def step_breakdown(
    root: Path, count: int, checkpoint_every: int, repeat: int
) -> list[tuple[str, float]]:
    """Seconds for ``count`` events of each step of ``append_in``, timed in isolation
    (median of ``repeat`` passes)."""
    ws = new_workspace(root)
    try:
        append_batched(ws.audit, 1000, 1000)
        events = [event(i) for i in range(count)]
        ts = utcnow()
        bodies = [canonical_details(e["details"]) for e in events]
        last_row = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        signing_key = ws.keys.signing_key()
        signatures = max(1, count // checkpoint_every)
        steps: list[tuple[str, Callable[[], object]]] = [
            (
                "read the last seq and hash (SELECT)",
                lambda: [ws.conn.execute(last_row).fetchone() for _ in range(count)],
            ),
            ("timestamp (utcnow)", lambda: [utcnow() for _ in range(count)]),
            (
                "canonical JSON of the details",
                lambda: [canonical_details(e["details"]) for e in events],
            ),
            (
                "event hash (JSON array + SHA-256)",
                lambda: [
                    event_hash(i, ts, "bench:audit", TENANT, "ingest.batch", None, body, "0" * 64)
                    for i, body in enumerate(bodies)
                ],
            ),
            (
                f"Ed25519 checkpoint signature (1 per {checkpoint_every})",
                lambda: [
                    signing_key.sign(b"silolearn-audit-checkpoint" + str(i).encode())
                    for i in range(signatures)
                ],
            ),
        ]
        return [(label, median([timed(step)[0] for _ in range(repeat)])) for label, step in steps]
    finally:
        ws.close()


# -- concurrency ----------------------------------------------------------------------------


def _worker(path: str, index: int, count: int, batch: int, barrier: Any, results: Any) -> None:
    """One appending process: open the workspace, wait for the other, append, report times."""
    limit_threads()
    ws = Workspace.open(path, actor=f"bench:proc{index}")
    try:
        latencies: list[float] = []
        barrier.wait()
        start = time.monotonic()
        if batch <= 1:
            append_single(ws.audit, count, offset=index * count, latencies=latencies)
        else:
            append_batched(ws.audit, count, batch, offset=index * count, latencies=latencies)
        end = time.monotonic()
    finally:
        ws.close()
    results.put((index, start, end, max(latencies)))


def bench_concurrent(root: Path, per_process: int, batch: int) -> dict[str, Any]:
    ws = new_workspace(root)
    before = last_seq(ws)
    ws.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, args=(str(root / "ws"), i, per_process, batch, barrier, results)
        )
        for i in range(2)
    ]
    for proc in procs:
        proc.start()
    spans = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"an appending process failed (exit code {proc.exitcode})")
    spans.sort()
    begin = min(start for _, start, _, _ in spans)
    seconds = max(end for _, _, end, _ in spans) - begin
    ws = Workspace.open(root / "ws", actor="bench:audit")
    try:
        report = ws.audit.verify().to_dict()
        actors = [
            str(r[0])
            for r in ws.conn.execute(
                "SELECT actor FROM audit_events WHERE seq > ? AND actor LIKE 'bench:proc%' "
                "ORDER BY seq",
                (before,),
            )
        ]
    finally:
        ws.close()
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    return {
        "events": 2 * per_process,
        "seconds": seconds,
        "verified": report["ok"] and len(actors) == 2 * per_process,
        "chain_events": report["events"],
        "checkpoints": report["checkpoints"],
        "writer_switches": switches,
        # when each process finished, from the common start, and its slowest transaction
        "finished_s": [end - begin for _, _, end, _ in spans],
        "max_transaction_s": [longest for _, _, _, longest in spans],
    }


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    checkpoint_every = AuditConfig().checkpoint_every
    times: dict[str, list[float]] = {
        k: []
        for k in ("single", "batched", "verify", "scan", "plain_many", "plain_rows", "plain_single")
    }
    verify_report: dict[str, Any] = {}
    concurrent: dict[str, list[dict[str, Any]]] = {"single": [], "batched": []}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="silolearn-bench-", dir=args.tmpdir) as tmp:
            root = Path(tmp)
            times["single"].append(bench_single(root / "single", args.single_events))
            append_s, verify_s, scan_s, verify_report, rows = bench_batched_and_verify(
                root / "batched", args.events, args.batch
            )
            times["batched"].append(append_s)
            times["verify"].append(verify_s)
            times["scan"].append(scan_s)
            times["plain_many"].append(
                plain_inserts(root / "plain-many.db", rows, args.batch, per_row=False)
            )
            times["plain_rows"].append(
                plain_inserts(root / "plain-rows.db", rows, args.batch, per_row=True)
            )
            times["plain_single"].append(
                plain_inserts(root / "plain-single.db", rows[: args.single_events], 1, per_row=True)
            )
            del rows
            if args.concurrent_single:
                concurrent["single"].append(
                    bench_concurrent(root / "conc-single", args.concurrent_single, 1)
                )
            if args.concurrent_events:
                concurrent["batched"].append(
                    bench_concurrent(root / "conc-batched", args.concurrent_events, args.batch)
                )
    with tempfile.TemporaryDirectory(prefix="silolearn-bench-", dir=args.tmpdir) as tmp:
        steps = step_breakdown(Path(tmp), args.events, checkpoint_every, args.repeat)
    medians = {k: median(v) for k, v in times.items()}
    counts = {
        "single": args.single_events,
        "batched": args.events,
        "plain_many": args.events,
        "plain_rows": args.events,
        "plain_single": min(args.single_events, args.events),
        "verify": verify_report["events"],
        "scan": verify_report["events"],
    }
    per_event = {k: medians[k] / counts[k] for k in medians}
    return {
        "benchmark": "audit",
        "machine": machine(),
        "batch": args.batch,
        "checkpoint_every": checkpoint_every,
        "repeat": args.repeat,
        "counts": counts,
        "runs_s": times,
        "median_s": medians,
        "events_per_s": {k: rate(counts[k], medians[k]) for k in medians},
        "x_baseline": {
            k: per_event[k] / per_event["plain_many"]
            for k in ("single", "batched", "plain_many", "plain_rows", "plain_single")
        },
        "verify_x_scan": per_event["verify"] / per_event["scan"],
        "verify_report": verify_report,
        "steps_s": dict(steps),
        "concurrent": {
            mode: _concurrent_summary(runs) for mode, runs in concurrent.items() if runs
        },
    }


def _concurrent_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = median([r["seconds"] for r in runs])
    events = runs[0]["events"]
    return {
        "events": events,
        "seconds": seconds,
        "events_per_s": rate(events, seconds),
        "verified": all(r["verified"] for r in runs),
        "writer_switches": median([float(r["writer_switches"]) for r in runs]),
        "max_transaction_s": max(max(r["max_transaction_s"]) for r in runs),
        "first_finished_s": median([min(r["finished_s"]) for r in runs]),
        "runs": runs,
    }


def tables_for(result: dict[str, Any]) -> list[Table]:
    counts, medians = result["counts"], result["median_s"]
    rates, ratios = result["events_per_s"], result["x_baseline"]
    batch = result["batch"]
    append = Table(
        f"audit append: median of {result['repeat']}, checkpoint every "
        f"{result['checkpoint_every']} events",
        ["path", "events", "seconds", "events/s", "x baseline time/event"],
    )
    labels = {
        "single": "(a) AuditLog.append, 1 event per transaction",
        "batched": f"(b) append_in, transactions of {batch}",
        "plain_many": f"(d) plain sqlite3 executemany, same rows, {batch}/txn",
        "plain_rows": f"(d') plain sqlite3 execute per row, {batch}/txn",
        "plain_single": "(d'') plain sqlite3, 1 row per transaction",
    }
    for key, label in labels.items():
        append.add(
            label,
            fmt_int(counts[key]),
            fmt_float(medians[key], 3),
            fmt_int(rates[key]),
            fmt_ratio(ratios[key]),
        )
    append.note = (
        f"(a) vs (d''), both one fsync'd transaction per event: "
        f"{fmt_ratio(ratios['single'] / ratios['plain_single'])}; "
        f"(b) vs (d): {fmt_ratio(ratios['batched'])}"
    )
    report = result["verify_report"]
    verify = Table(
        "audit verify",
        ["path", "events", "checkpoints", "seconds", "events/s", "x scan time"],
    )
    verify.add(
        "(c) AuditLog.verify(): hashes, links, signatures, head",
        fmt_int(report["events"]),
        fmt_int(report["checkpoints"]),
        fmt_float(medians["verify"], 3),
        fmt_int(rates["verify"]),
        fmt_ratio(result["verify_x_scan"]),
    )
    verify.add(
        "plain scan of the same table (floor)",
        fmt_int(report["events"]),
        "-",
        fmt_float(medians["scan"], 3),
        fmt_int(rates["scan"]),
        fmt_ratio(1.0),
    )
    tables = [append, verify]
    if result["concurrent"]:
        conc = Table(
            "two processes appending at once (spawn), N events each",
            [
                "mode",
                "events",
                "seconds",
                "events/s",
                "x 1-process rate",
                "switches",
                "first done s",
                "slowest txn s",
                "verifies",
            ],
        )
        names = {"single": ("single", "1 event per transaction"), "batched": ("batched", None)}
        for mode, summary in result["concurrent"].items():
            key, text = names[mode]
            conc.add(
                f"2 x {fmt_int(summary['events'] // 2)}, " + (text or f"transactions of {batch}"),
                fmt_int(summary["events"]),
                fmt_float(summary["seconds"], 3),
                fmt_int(summary["events_per_s"]),
                fmt_ratio(summary["events_per_s"] / rates[key]),
                fmt_int(summary["writer_switches"]),
                fmt_float(summary["first_finished_s"], 3),
                fmt_float(summary["max_transaction_s"], 3),
                "yes" if summary["verified"] else "NO",
            )
        conc.note = (
            "switches: how often consecutive events in the chain change writer (1 = one process "
            "ran all its transactions, then the other); first done: when the first process "
            "finished; slowest txn: the longest single transaction, waiting for the write lock "
            "included (worst of all runs); verifies: AuditLog.verify() passed afterwards"
        )
        tables.append(conc)
    total = medians["batched"]
    n = counts["batched"]
    steps = Table(
        f"where a batched append's time goes ({fmt_int(n)} events, steps timed in isolation)",
        ["step", "us/event", "% of (b)"],
    )
    spent = 0.0
    for label, seconds in result["steps_s"].items():
        spent += seconds
        steps.add(label, fmt_float(seconds / n * 1e6, 2), fmt_float(100 * seconds / total, 1))
    plain = medians["plain_rows"] * n / counts["plain_rows"]
    steps.add(
        "INSERT one row per execute + commits (= baseline d')",
        fmt_float(plain / n * 1e6, 2),
        fmt_float(100 * plain / total, 1),
    )
    spent += plain
    steps.add(
        "sum of the steps above", fmt_float(spent / n * 1e6, 2), fmt_float(100 * spent / total, 1)
    )
    steps.add("(b) total", fmt_float(total / n * 1e6, 2), "100.0")
    tables.append(steps)
    return tables


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for (b), (c), (d)")
    parser.add_argument("--batch", type=int, default=1_000, help="events per transaction")
    parser.add_argument(
        "--single-events", type=int, default=5_000, help="events for (a), 1 per transaction"
    )
    parser.add_argument(
        "--concurrent-events",
        type=int,
        default=50_000,
        help="events per process, batched, in the concurrent run (0: skip)",
    )
    parser.add_argument(
        "--concurrent-single",
        type=int,
        default=2_500,
        help="events per process, 1 per transaction, in the concurrent run (0: skip)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median counts")
    parser.add_argument("--tmpdir", help="where the temporary workspaces go (default: $TMPDIR)")
    add_output_flags(parser)
    args = parser.parse_args()
    for name in ("events", "batch", "single_events", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    limit_threads()
    result = run(args)
    if args.json:
        print_json(result)
        return
    render(tables_for(result), markdown=args.markdown)


if __name__ == "__main__":
    main()
