"""The monitors' and the scheduler's overhead on serving (``benchmarks/serve.py --overhead
N``): predict throughput and p50/p99 over HTTP of ``silolearn serve`` as it runs by default
(drift monitor, the performance monitor's sums for its estimate, rollout counts, scheduler
and rollouts' ticks: **on**) against the same server with the documented switches off
(**off**: ``[drift] enabled = false``, ``[performance] estimate = false``, ``[schedule]
enabled = false``), on the same workspace, texts, tenants and concurrency.

Two servers run side by side on the workspace, one per configuration; the closed-loop load
(``--concurrency`` clients, ``--seconds`` after a 2-second warm-up, requests round-robin
over ``--overhead-tenants`` tenants) goes to one at a time, over ``N`` pairs in the order
on-off, off-on alternately (on, off, off, on, on, off, ...) so that a trend in the
machine's load weighs on both alike. After each load the benchmark waits until that server
is idle (below a tenth of a core over a second): background work a load caused, a drift
backlog say, is done before the next load and counted in its server's CPU time. A first,
uncounted load on each server builds each tenant version's drift reference and calibrates
its online test, once per process, as in a server that has been serving. Per pair the ratio
on/off of throughput, p50, p99 and the server's CPU time per answered text (user + system,
all its threads, from the load's start until it is idle again: less moved by the machine's
other work than the wall-clock figures); reported: their mean with a 95% t-interval across
pairs, the median, and the load average at each load."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Table, fmt_float, machine

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import httpx

from serve import (
    build_workspace,
    closed_loop,
    free_port,
    load_average,
    probe_texts,
    start,
    stop,
    summary,
)

OFF = {
    "SILOLEARN_DRIFT__ENABLED": "false",
    "SILOLEARN_PERFORMANCE__ESTIMATE": "false",
    "SILOLEARN_SCHEDULE__ENABLED": "false",
}
"""The monitoring-off configuration: documented settings of the service, by environment."""
FIRST_SECONDS = 10.0
Row = dict[str, Any]


def overhead(args: argparse.Namespace) -> Row:
    """The interleaved loads; their rows and the ratios across pairs."""
    texts = probe_texts()
    result: Row = {
        "mode": "overhead",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "off": OFF,
        "loads": [],
        "command": "",
    }
    with tempfile.TemporaryDirectory(prefix="silolearn-overhead-") as tmp:
        root = Path(tmp)
        workspace = args.workspace or root / "ws"
        tokens, auditor, result["train_seconds"] = build_workspace(
            workspace, args.overhead_tenants, args.records
        )
        names = sorted(tokens)[: args.overhead_tenants]
        targets = [(f"/v1/tenants/{t}/predict", tokens[t]) for t in names]
        result["load_average_start"] = load_average()
        servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        try:
            for config in ("on", "off"):
                port = free_port()
                command = [sys.executable, "-m", "silolearn.cli", "serve", "-w",
                           str(workspace), "--port", str(port)]  # fmt: skip
                env = OFF if config == "off" else {}
                process = start(command, port, root / f"server-{config}.log", env=env)
                servers[config] = (f"http://127.0.0.1:{port}", process)

            def load(config: str, seconds: float) -> Row:
                url, process = servers[config]
                before = (load_average(), cpu_seconds(process.pid), counts(url, auditor))
                lat = asyncio.run(closed_loop(url, targets, texts, args.concurrency, seconds))
                settled = settle(process.pid)
                after = (cpu_seconds(process.pid), counts(url, auditor))
                answered = after[1]["texts"] - before[2]["texts"]
                return {
                    "config": config,
                    **summary(lat, seconds),
                    "late": after[1]["late"] - before[2]["late"],
                    "cpu_ms_per_text": 1000 * (after[0] - before[1]) / answered,
                    "settle_seconds": settled,
                    "load_average": before[0],
                }

            result["first"] = [load(c, FIRST_SECONDS) for c in ("on", "off")]
            for pair in range(args.overhead):
                order = ("on", "off") if pair % 2 == 0 else ("off", "on")
                for config in order:
                    result["loads"].append({"pair": pair, **load(config, args.seconds)})
        finally:
            for _, process in servers.values():
                stop(process)
    result["load_average_end"] = load_average()
    result["ratios"] = ratios(result["loads"])
    return result


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, idle: float = 0.1, limit: float = 900.0) -> float:
    """Wait until the server uses less than ``idle`` of a core over a second (its background
    work after the load, a drift backlog say, is done); the seconds waited."""
    begin = time.perf_counter()
    last = cpu_seconds(pid)
    while time.perf_counter() - begin < limit:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - last < idle:
            break
        last = now
    return time.perf_counter() - begin


def counts(url: str, auditor: str) -> dict[str, float]:
    """Texts answered and answers released late so far, all tenants (``/metrics``)."""
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {auditor}"}, timeout=120)
    r.raise_for_status()
    total = {"texts": 0.0, "late": 0.0}
    for line in r.text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == "silolearn_predictions_total":
            total["texts"] += float(line.rsplit(" ", 1)[1])
        elif name == "silolearn_predict_deadline_misses_total":
            total["late"] += float(line.rsplit(" ", 1)[1])
    return total


def ratios(loads: list[Row]) -> Row:
    """Per pair on/off of each measure; their mean, 95% t-interval and median."""
    from scipy.stats import t

    pairs: dict[int, dict[str, Row]] = {}
    for row in loads:
        pairs.setdefault(row["pair"], {})[row["config"]] = row
    out: Row = {}
    for measure in ("throughput", "p50_ms", "p99_ms", "cpu_ms_per_text"):
        values = [p["on"][measure] / p["off"][measure] for p in pairs.values()]
        mean = statistics.mean(values)
        half = (
            float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / len(values) ** 0.5
            if len(values) > 1
            else float("nan")
        )
        out[measure] = {
            "pairs": values,
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "median": statistics.median(values),
        }
    return out


def tables(result: Row) -> list[Table]:
    args = result["args"]
    loads = Table(
        f"predict over HTTP, {args['overhead_tenants']} tenants round-robin, "
        f"{args['concurrency']} concurrent clients, {args['seconds']:.0f} s per load, "
        "monitoring and scheduler on (defaults) and off, interleaved",
        ["pair", "config", "requests/s", "p50 ms", "p99 ms", "server CPU ms/text",
         "settled after s", "late answers", "load avg (1 min)"],
    )  # fmt: skip
    for row in result["loads"]:
        loads.add(
            str(row["pair"] + 1),
            row["config"],
            fmt_float(row["throughput"], 2),
            fmt_float(row["p50_ms"], 0),
            fmt_float(row["p99_ms"], 0),
            fmt_float(row["cpu_ms_per_text"], 1),
            fmt_float(row["settle_seconds"], 0),
            str(int(row["late"])),
            fmt_float(row["load_average"][0], 2),
        )
    summary_table = Table(
        f"on / off across {len(result['loads']) // 2} pairs (1.00 = no overhead)",
        ["measure", "mean ratio", "95% interval", "median ratio", "per pair"],
        note="throughput ratio below 1 and latency ratios above 1 are the monitors' cost",
    )
    for measure, name in (
        ("throughput", "requests/s"),
        ("p50_ms", "p50"),
        ("p99_ms", "p99"),
        ("cpu_ms_per_text", "server CPU per text"),
    ):
        r = result["ratios"][measure]
        summary_table.add(
            name,
            f"{r['mean']:.3f}",
            f"{r['low']:.3f} - {r['high']:.3f}",
            f"{r['median']:.3f}",
            ", ".join(f"{v:.2f}" for v in r["pairs"]),
        )
    return [loads, summary_table]
