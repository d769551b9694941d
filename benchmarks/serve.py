"""Serving: throughput and latency of ``POST /v1/tenants/{t}/predict`` over HTTP with 1, 10
and 100 tenants' head adapters under concurrent clients, against a single-model server of
the same stack and against the in-process floor; and whether one tenant's latency depends
on another's traffic (the micro-batcher's timing channel).

What is measured (the servers are subprocesses, torch on one thread in each; the clients
are ``--concurrency`` asyncio tasks of httpx in this process, one text per request, texts
the tenants never saw):

* **silolearn**: ``silolearn serve`` on a workspace of ``max(--tenants)`` tenants, each
  given ``--records`` real records (Rotten Tomatoes snippets) and trained through the
  product path (``pipeline.train_many``: one head round per tenant, in worker processes,
  two at a time; the gates that need many eval records are off, as in the service tests,
  so that 100 small tenants get a version cheaply). Requests go round-robin over the first
  1, 10 or 100 tenants, each with its tenant's reader token; each one is authenticated,
  queued in the micro-batcher (fixed cadence, ``[service] batch_window_ms``), answered by
  one encoder pass then each tenant's head, kept sealed for feedback and audited, and
  released at its tick plus ``[service] release_delay_ms`` (``--release-delay-ms`` sets it
  for the run). The answers released after their deadline (above capacity) are read from
  ``/metrics`` after each load (``silolearn_predict_deadline_misses_total``).
* **single model**: FastAPI on uvicorn, the same frozen encoder (``FrozenEncoder``) and one
  ``HeadAdapter`` fitted at start, no tenancy, no batching, no audit: each request encodes
  its text and applies the head (a sync endpoint, run in the threadpool).
* **floor**: ``SentenceTransformer(model_dir).encode`` + scikit-learn ``LogisticRegression.
  predict_proba`` in this process on the same texts, one request's text per call (and,
  for reference, in batches of 64).

Each load runs ``--seconds`` after one request per tenant (a tenant's first request
opens its scope, loads its adapter and starts its drift reference: paid once per server
and version) and a warm-up of 2 seconds; throughput is answered
requests per second; latency is per request, from send to answer. "vs single" is the
throughput divided by the single-model server's.

**Timing channel**: tenant A sends ``--probe-rate`` requests per second (open loop,
Poisson arrivals) for ``--probe-seconds``, first with tenant B idle, then with B sending at
80% of capacity (open loop, sent by a process of its own so that its client work does not
share A's event loop). Capacity here is the deadline's: the highest open-loop rate, in
steps of a tenth of the 1-tenant closed-loop throughput, at which at most 1% of answers
leave late (``on_time_capacity``); the closed-loop figure is the compute's, reached with
most answers past their deadline. The two samples of A's
latencies are compared with Mann-Whitney U and Kolmogorov-Smirnov (scipy); "significant"
is p < 0.01. Other work on the machine moves latencies: the load average (``uptime``) is
recorded with each probe, and ``--probe-repeats N`` runs the idle/busy pair N times.

Building 100 tenants' versions takes most of the run (100 rounds, each a training and an
evaluation worker process); ``--workspace PATH`` keeps the workspace so that a second run
reuses it, and ``--tables-from PATH`` prints the tables of a ``--json`` result again.
``--overhead PAIRS`` measures instead the monitors' and the scheduler's cost on predict, on
and off interleaved (``benchmarks/serve_overhead.py`` says how). Quick
run: ``python benchmarks/serve.py --tenants 1,10 --records 10 --seconds 5
--probe-seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import Table, fmt_float, fmt_ratio, limit_threads, machine, print_json, render

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import httpx
import numpy as np
from pydantic import BaseModel

from silolearn import datasets
from silolearn.workspace import Workspace

SERVER_ENV = {
    "SILOLEARN_GATES__QUALITY": "false",
    "SILOLEARN_GATES__FORGETTING": "false",
    "SILOLEARN_GATES__MEMBERSHIP": "false",
    "SILOLEARN_GATES__CANARIES": "0",
    "SILOLEARN_GATES__AUDIT_CANARIES": "0",
    "SILOLEARN_GATES__SHADOW": "0",
    "SILOLEARN_TRAINING__MIN_EVAL_RECORDS": "1",
    "SILOLEARN_INGEST__EVAL_FRACTION": "0.25",
    "SILOLEARN_SERVICE__RATE_PER_SECOND": "1000000",
    "SILOLEARN_SERVICE__RATE_BURST": "1000000",
}
WARMUP = 2.0
Row = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- setup


def build_workspace(path: Path, tenants: int, records: int) -> tuple[dict[str, str], str, float]:
    """``tenants`` tenants with ``records`` records each, a head version each (product
    path); returns the reader tokens, a workspace-wide auditor token (for ``/metrics``) and
    the seconds the rounds took. A tenant whose round
    ends without a version (too few eval records, say) gets ``records`` newer records and
    another round, up to three times. A workspace already at ``path`` is reused as it is
    (``--workspace``): only new tokens are granted."""
    from silolearn.pipeline import train_many

    rows = datasets.rotten_tomatoes()
    names = [f"t{i:03d}" for i in range(tenants)]
    mine = {n: [r for j, r in enumerate(rows) if j % tenants == i] for i, n in enumerate(names)}
    seconds = 0.0
    if not (path / "silolearn.toml").exists():
        with Workspace.init(path, actor="bench") as ws:
            for name in names:
                ws.create_tenant(name)
                ws.tenant(name).ingest(mine[name][:records])
        pending, given = names, records
        for _ in range(3):
            begin = time.perf_counter()
            results = train_many(
                lambda: Workspace.open(path, actor="bench"), pending, kind="head", seed=1
            )
            seconds += time.perf_counter() - begin
            pending = [r.tenant for r in results if r.status != "active"]
            if not pending:
                break
            with Workspace.open(path, actor="bench") as ws:
                for name in pending:
                    ws.tenant(name).ingest(mine[name][given : given + records])
            given += records
        if pending:
            raise SystemExit(f"rounds without an active version: {pending[:5]} ({len(pending)})")
    with Workspace.open(path, actor="bench") as ws:
        tokens = {
            name: ws.access()
            .grant(tenant=name, roles=["reader"], duration=timedelta(hours=6), reason="bench")
            .token
            for name in names
        }
        auditor = (
            ws.access()
            .grant(tenant=None, roles=["auditor"], duration=timedelta(hours=6), reason="bench")
            .token
        )
    return tokens, auditor, seconds


def start(
    command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **SERVER_ENV, **(env or {})},
        )
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


# ----------------------------------------------------------------------------- load


def client_limits(connections: int) -> httpx.Limits:
    """At most ``connections``, each dropped by the client after 2 s idle: the server
    (uvicorn) closes a connection idle for 5 s, and a client that kept it as long could
    send a request on it as it closes (a read error, not an answer)."""
    return httpx.Limits(max_connections=connections, keepalive_expiry=2.0)


async def post_predict(
    http: httpx.AsyncClient, url: str, target: tuple[str, str], text: str
) -> None:
    """One predict request of one text with the target tenant's token; anything but a 200
    ends the benchmark."""
    path, token = target
    r = await http.post(
        url + path, json={"texts": [text]}, headers={"Authorization": f"Bearer {token}"}
    )
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")


async def warm_up(url: str, targets: list[tuple[str, str]], texts: list[str]) -> None:
    """One request per target before a load: a tenant's first request opens its scope,
    loads its adapter and starts its drift reference, a cost paid once per server and
    version, not per request."""
    async with httpx.AsyncClient(timeout=120.0, limits=client_limits(20)) as http:
        for start in range(0, len(targets), 16):
            chunk = targets[start : start + 16]
            await asyncio.gather(
                *(post_predict(http, url, t, texts[i % len(texts)]) for i, t in enumerate(chunk))
            )


async def closed_loop(
    url: str, targets: list[tuple[str, str]], texts: list[str], concurrency: int, seconds: float
) -> list[float]:
    """``concurrency`` clients, each sending its next request when answered; latencies of
    the answers after the warm-up."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    begin = time.perf_counter()
    measure_from, end = begin + WARMUP, begin + WARMUP + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while (now := time.perf_counter()) < end:
            n = next(counter)
            await post_predict(http, url, targets[n % len(targets)], texts[n % len(texts)])
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    limits = client_limits(concurrency + 4)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies


async def open_loop(
    http: httpx.AsyncClient,
    url: str,
    target: tuple[str, str],
    texts: list[str],
    rate: float,
    seconds: float,
    latencies: list[float] | None,
) -> None:
    """Requests at ``rate`` per second on average, whatever the answers do, as Poisson
    arrivals (seeded): a fixed period would keep every request at one phase of the
    server's batching cadence (5 req/s is every 40th tick of 5 ms), so each probe would
    carry its own constant offset of up to a tick, and two probes would differ by that
    offset whatever the other tenant did."""
    pending = []
    rng = np.random.default_rng(int(rate * 1000))

    async def one(n: int) -> None:
        sent = time.perf_counter()
        await post_predict(http, url, target, texts[n % len(texts)])
        if latencies is not None and sent - begin >= WARMUP:
            latencies.append(time.perf_counter() - sent)

    begin = time.perf_counter()
    n, at = 0, begin
    while (at := at + float(rng.exponential(1.0 / rate))) < begin + WARMUP + seconds:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        pending.append(asyncio.create_task(one(n)))
        n += 1
    await asyncio.gather(*pending)


async def probe(
    url: str,
    a: tuple[str, str],
    b: tuple[str, str] | None,
    texts: list[str],
    rate: float,
    b_rate: float,
    seconds: float,
) -> list[float]:
    """A's latencies; B's load, if any, comes from a process of its own, so that its
    client work does not share A's event loop and A measures the server, not its client."""
    latencies: list[float] = []
    b_process = None
    if b is not None:
        b_process = subprocess.Popen(
            [sys.executable, __file__, "--b-load",
             json.dumps({"url": url, "target": b, "rate": b_rate, "seconds": seconds})],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert b_process.stdout is not None
        b_process.stdout.readline()  # "ready": B's schedule starts now, with A's
    async with httpx.AsyncClient(timeout=120.0, limits=client_limits(500)) as http:
        await open_loop(http, url, a, texts, rate, seconds, latencies)
    if b_process is not None and b_process.wait() != 0:
        raise SystemExit("tenant B's load failed")
    return latencies


def b_load(spec: dict[str, Any]) -> None:
    """Tenant B's open-loop load, in its own process (``--b-load``)."""

    async def go() -> None:
        limits = client_limits(500)
        async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
            print("ready", flush=True)
            target = (spec["target"][0], spec["target"][1])
            texts = probe_texts()[::-1]
            await open_loop(http, spec["url"], target, texts, spec["rate"], spec["seconds"], None)

    asyncio.run(go())


def probe_texts() -> list[str]:
    """Texts no tenant saw: health tweets, cut to 400 characters."""
    held = datasets.sample(datasets.health_tweets(), 400, seed=9)
    return [str(r["text"])[:400] for r in held]


def late_answers(url: str, auditor: str) -> float:
    """The server's count of answers released after their deadline, all tenants."""
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {auditor}"}, timeout=120)
    r.raise_for_status()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in r.text.splitlines()
        if line.startswith("silolearn_predict_deadline_misses_total")
    )


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


def summary(latencies: list[float], seconds: float) -> Row:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "throughput": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


# ----------------------------------------------------------------------------- peers


class PredictBody(BaseModel):
    texts: list[str]


def single_server(port: int) -> None:
    """The single-model server: FastAPI on uvicorn, the encoder and one head."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import Features, HeadAdapter
    from silolearn.learning.encoder import FrozenEncoder, default_model_dir

    torch.set_num_threads(1)
    config = TrainingConfig()
    encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)
    rows = datasets.sample(datasets.rotten_tomatoes(), 200, seed=3)
    embeddings = encoder.embed([r["text"] for r in rows], max_length=config.max_tokens)
    labels = [str(r["label"]) for r in rows]
    head = HeadAdapter(sorted(set(labels)), hidden=config.head_hidden, dim=encoder.dim, seed=1)
    head.fit(Features(embeddings=embeddings), labels, config=config, seed=1)
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(body: PredictBody) -> dict[str, Any]:
        proba = head.predict_proba(
            Features(embeddings=encoder.embed(body.texts, max_length=config.max_tokens))
        )
        return {
            "predictions": [
                {
                    "label": head.labels[int(p.argmax())],
                    "probabilities": dict(zip(head.labels, map(float, p), strict=True)),
                }
                for p in proba
            ]
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def floor(texts: list[str], seconds: float) -> tuple[Row, Row]:
    """sentence-transformers encode + scikit-learn predict_proba in this process: one text
    per call, then batches of 64."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    from transformers.utils import logging as hf_logging

    from silolearn.learning.encoder import default_model_dir

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    model.max_seq_length = 128
    rows = datasets.sample(datasets.rotten_tomatoes(), 200, seed=3)
    head = LogisticRegression(max_iter=1000).fit(
        model.encode([r["text"] for r in rows]), [r["label"] for r in rows]
    )
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        begin = time.perf_counter()
        head.predict_proba(model.encode([texts[n % len(texts)]]))
        latencies.append(time.perf_counter() - begin)
        n += 1
    one = summary(latencies, sum(latencies))
    begin = time.perf_counter()
    batch = texts[:512]
    head.predict_proba(model.encode(batch, batch_size=64))
    batched = {"requests": len(batch), "throughput": len(batch) / (time.perf_counter() - begin)}
    return one, batched


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> Row:
    limit_threads()
    counts = sorted({int(n) for n in args.tenants.split(",")})
    texts = probe_texts()
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("tables_from", "single_server", "b_load")
    }
    result: Row = {"machine": machine(), "args": settings, "silolearn": [], "command": ""}
    with tempfile.TemporaryDirectory(prefix="silolearn-serve-") as tmp:
        root = Path(tmp)
        os.environ.update(SERVER_ENV)
        workspace = args.workspace or root / "ws"
        if args.release_delay_ms is not None:
            os.environ["SILOLEARN_SERVICE__RELEASE_DELAY_MS"] = str(args.release_delay_ms)
        tokens, auditor, train_seconds = build_workspace(workspace, max(counts), args.records)
        with Workspace.open(workspace, actor="bench") as ws:
            result["release_delay_ms"] = ws.settings.service.release_delay_ms
            result["batch_window_ms"] = ws.settings.service.batch_window_ms
        result["train_seconds"] = train_seconds
        result["load_average"] = load_average()
        port = free_port()
        server = start(
            [sys.executable, "-m", "silolearn.cli", "serve", "-w", str(workspace),
             "--port", str(port)],
            port,
            root / "server.log",
        )  # fmt: skip
        try:
            measure_silolearn(f"http://127.0.0.1:{port}", tokens, auditor, texts, counts, args,
                              result)  # fmt: skip
        finally:
            stop(server)
        port = free_port()
        single = start(
            [sys.executable, __file__, "--single-server", str(port)], port, root / "single.log"
        )
        try:
            targets = [("/predict", "none")]
            lat = asyncio.run(
                closed_loop(f"http://127.0.0.1:{port}", targets, texts, args.concurrency,
                            args.seconds)
            )  # fmt: skip
            result["single"] = summary(lat, args.seconds)
        finally:
            stop(single)
    result["floor"], result["floor_batched"] = floor(texts, args.seconds)
    return result


def measure_silolearn(
    url: str,
    tokens: dict[str, str],
    auditor: str,
    texts: list[str],
    counts: list[int],
    args: argparse.Namespace,
    result: Row,
) -> None:
    """The closed-loop loads over 1, 10, 100 tenants, then the timing-channel probes
    (``--probe-repeats`` pairs), each with the answers it saw released late."""
    names = sorted(tokens)
    for n in counts:
        targets = [(f"/v1/tenants/{t}/predict", tokens[t]) for t in names[:n]]
        asyncio.run(warm_up(url, targets, texts))
        late = late_answers(url, auditor)
        lat = asyncio.run(closed_loop(url, targets, texts, args.concurrency, args.seconds))
        late = late_answers(url, auditor) - late
        result["silolearn"].append({"tenants": n, **summary(lat, args.seconds), "late": late})
    a = (f"/v1/tenants/{names[0]}/predict", tokens[names[0]])
    b = (f"/v1/tenants/{names[-1]}/predict", tokens[names[-1]])
    capacity, steps = on_time_capacity(url, b, auditor, result["silolearn"][0]["throughput"])
    result["capacity"] = {"on_time": capacity, "steps": steps}
    result["channels"] = []
    for _ in range(args.probe_repeats):
        loads = [load_average()]
        late = late_answers(url, auditor)
        idle = asyncio.run(probe(url, a, None, texts, args.probe_rate, 0, args.probe_seconds))
        idle_late = late_answers(url, auditor) - late
        loads.append(load_average())
        busy = asyncio.run(
            probe(url, a, b, texts, args.probe_rate, 0.8 * capacity, args.probe_seconds)
        )
        busy_late = late_answers(url, auditor) - late - idle_late
        row = channel(idle, busy, 0.8 * capacity)
        row["idle"]["late"], row["busy"]["late"] = idle_late, busy_late
        row["load_average"] = loads
        result["channels"].append(row)


CAPACITY_FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CAPACITY_SECONDS = 8.0
LATE_SHARE = 0.01


def on_time_capacity(
    url: str, target: tuple[str, str], auditor: str, compute: float
) -> tuple[float, list[Row]]:
    """The highest open-loop rate, as a fraction of the closed-loop throughput ``compute``,
    at which at most 1% of the answers leave after their deadline: the capacity the timing
    guarantee is stated below. The closed-loop figure is the compute's limit, reached with
    the queue (and most answers) past the release delay, so 80% of it can still be above
    the deadline's capacity. Each step is a load from a process of its own, as B's is.
    When even the lowest step misses the 1%, it is returned, and the steps show it."""
    steps: list[Row] = []
    best = CAPACITY_FRACTIONS[0] * compute
    for fraction in CAPACITY_FRACTIONS:
        rate = fraction * compute
        late = late_answers(url, auditor)
        spec = {"url": url, "target": target, "rate": rate, "seconds": CAPACITY_SECONDS}
        sender = subprocess.Popen(
            [sys.executable, __file__, "--b-load", json.dumps(spec)], stdout=subprocess.DEVNULL
        )
        if sender.wait() != 0:
            raise SystemExit("the capacity load failed")
        share = (late_answers(url, auditor) - late) / (rate * (WARMUP + CAPACITY_SECONDS))
        steps.append({"rate": rate, "late_share": share})
        if share > LATE_SHARE:
            break
        best = rate
    return best, steps


def channel(idle: list[float], busy: list[float], b_rate: float) -> Row:
    from scipy.stats import ks_2samp, mannwhitneyu

    mw = mannwhitneyu(idle, busy, alternative="two-sided")
    ks = ks_2samp(idle, busy)
    return {
        "b_rate": b_rate,
        "idle": summary(idle, 1.0) | {"mean_ms": statistics.mean(idle) * 1000},
        "busy": summary(busy, 1.0) | {"mean_ms": statistics.mean(busy) * 1000},
        "mannwhitney_p": float(mw.pvalue),
        "ks_p": float(ks.pvalue),
    }


def tables(result: Row) -> list[Table]:
    single = result["single"]["throughput"]
    floor_tp = result["floor"]["throughput"]
    serving = Table(
        "predict over HTTP, one text per request, "
        f"{result['args']['concurrency']} concurrent clients",
        ["server", "requests/s", "p50 ms", "p99 ms", "vs single", "vs floor", "late answers"],
    )
    for row in result["silolearn"]:
        serving.add(
            f"silolearn, {row['tenants']} tenant(s)",
            fmt_float(row["throughput"], 1),
            fmt_float(row["p50_ms"], 1),
            fmt_float(row["p99_ms"], 1),
            fmt_ratio(row["throughput"] / single),
            fmt_ratio(row["throughput"] / floor_tp),
            str(int(row["late"])),
        )
    s = result["single"]
    serving.add(
        "single model (FastAPI+uvicorn, encoder + one head)",
        fmt_float(single, 1),
        fmt_float(s["p50_ms"], 1),
        fmt_float(s["p99_ms"], 1),
        "1.00x",
        fmt_ratio(single / floor_tp),
        "",
    )
    f = result["floor"]
    serving.add(
        "floor: sentence-transformers + sklearn, in process, 1 text/call",
        fmt_float(floor_tp, 1),
        fmt_float(f["p50_ms"], 1),
        fmt_float(f["p99_ms"], 1),
        fmt_ratio(floor_tp / single),
        "1.00x",
        "",
    )
    serving.add(
        "floor, batches of 64 (reference)",
        fmt_float(result["floor_batched"]["throughput"], 1),
        "",
        "",
        fmt_ratio(result["floor_batched"]["throughput"] / single),
        fmt_ratio(result["floor_batched"]["throughput"] / floor_tp),
        "",
    )
    return [serving, *(probe_table(result, c) for c in result["channels"])]


def probe_table(result: Row, c: Row) -> Table:
    delay = result.get("release_delay_ms")
    found = result.get("capacity")
    steps = (
        ""
        if found is None
        else " (on-time capacity; late shares "
        + ", ".join(f"{x['late_share']:.1%} at {x['rate']:.0f}" for x in found["steps"])
        + ")"
    )
    table = Table(
        f"tenant A at {result['args']['probe_rate']} req/s: latency with B idle and with B at "
        f"80% of capacity ({c['b_rate']:.1f} req/s{steps}); release delay {delay} ms; load average "
        f"{' / '.join(str(x[0]) for x in c['load_average'])} (1 min, at the start of each)",
        ["tenant B", "A's requests", "p50 ms", "mean ms", "p99 ms", "late answers (A and B)"],
        note=(
            f"Mann-Whitney U p = {c['mannwhitney_p']:.3g}, KS p = {c['ks_p']:.3g}: "
            + (
                "significant (p < 0.01)"
                if min(c["mannwhitney_p"], c["ks_p"]) < 0.01
                else "not significant at 0.01"
            )
        ),
    )
    for name in ("idle", "busy"):
        row = c[name]
        table.add(
            "idle" if name == "idle" else "80% of capacity",
            str(row["requests"]),
            fmt_float(row["p50_ms"], 1),
            fmt_float(row["mean_ms"], 1),
            fmt_float(row["p99_ms"], 1),
            str(int(row["late"])),
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="1,10,100", help="tenant counts, comma-separated")
    parser.add_argument("--records", type=int, default=12, help="records per tenant")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each load")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="closed-loop clients: enough that throughput measures the server's compute, "
        "not the release delay (N clients / 0.2 s caps it at 5N requests/s)",
    )
    parser.add_argument("--probe-rate", type=float, default=5.0, help="tenant A's req/s")
    parser.add_argument("--probe-seconds", type=float, default=30.0)
    parser.add_argument("--probe-repeats", type=int, default=1, help="idle/busy probe pairs")
    parser.add_argument(
        "--release-delay-ms", type=float, help="the server's [service] release_delay_ms"
    )
    parser.add_argument(
        "--workspace", type=Path, help="build the tenants' workspace here, or reuse it"
    )
    parser.add_argument(
        "--tables-from", type=Path, help="print the tables of a --json result again"
    )
    parser.add_argument(
        "--overhead",
        type=int,
        metavar="PAIRS",
        help="measure instead the monitors' and scheduler's overhead: PAIRS interleaved "
        "loads with them on (defaults) and off (benchmarks/serve_overhead.py)",
    )
    parser.add_argument(
        "--overhead-tenants", type=int, default=10, help="tenants of the --overhead loads"
    )
    parser.add_argument("--single-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--b-load", help=argparse.SUPPRESS)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print the results as JSON only")
    group.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args()
    if args.single_server is not None:
        single_server(args.single_server)
        return
    if args.b_load is not None:
        b_load(json.loads(args.b_load))
        return
    if args.tables_from is not None:
        result = json.loads(args.tables_from.read_text())
        if result.get("mode") == "overhead":
            from serve_overhead import tables as overhead_tables

            render(overhead_tables(result), markdown=args.markdown)
        else:
            render(tables(result), markdown=args.markdown)
        return
    if args.overhead is not None:
        from serve_overhead import overhead
        from serve_overhead import tables as overhead_tables

        limit_threads()
        os.environ.update(SERVER_ENV)
        result = overhead(args)
        result["command"] = "python benchmarks/serve.py " + shlex.join(sys.argv[1:])
        if args.json:
            print_json(result)
        else:
            render(overhead_tables(result), markdown=args.markdown)
        return
    result = run(args)
    result["command"] = "python benchmarks/serve.py " + shlex.join(sys.argv[1:])
    if args.json:
        print_json(result)
        return
    render(tables(result), markdown=args.markdown)
    print(f"rounds to make {max(r['tenants'] for r in result['silolearn'])} head versions: "
          f"{result['train_seconds']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
