"""Learning round: the cost of one continuous-learning round for one tenant with 1,000 new
records, split into its steps, for the ``head`` and ``lora`` adapters, with the peer
libraries run in the same process on the same texts and labels, and single-text predict
latency.

What is measured (one process; torch, numpy and the tokenizer on one thread; the round's
workers are separate processes, also on one thread):

* **rounds**, through the product path: a fresh workspace in a temporary directory, one
  tenant per adapter kind, ``--records`` real records (default 1,000 Rotten Tomatoes
  snippets, a seeded sample kept in time order) ingested through the gateway (10% of them
  routed to the eval store), then ``Trainer(ws).train(tenant, kind=...)``: a training
  worker (load the base model, read the records, embed them, train), then an evaluation
  worker, then the promotion gate. The steps are the worker's own timings
  (``RoundResult.timings``); "to worker start" is from the call to the worker's first
  progress event (base-model check, run slot, process start, imports); "other" is the rest
  of the total (result transfer, second base-model check, sealing and registering the
  candidate, promotion). ``lora`` back-propagates through the encoder for every record, as
  many epochs as ``training.lora_budget_examples`` allows (``--lora-budget``). A **second
  head round** on the same tenant, after ``--records`` newer records, shows what the
  embedding caches save:
  only new records are embedded, replayed ones and earlier eval records come from the
  caches.
* **encoder vs sentence-transformers**: ``FrozenEncoder.embed(texts, max_length=128)`` and
  ``SentenceTransformer(model_dir).encode(texts, batch_size=64)`` with ``max_seq_length``
  128, the same local model files, on the first round's texts; each warmed up on 64 texts
  first. Agreement of the two embeddings: max absolute difference and minimum cosine.
* **head vs scikit-learn**: ``HeadAdapter.fit`` (the round's trainer: 40 epochs of AdamW in
  mini-batches of 64, inverse-frequency class weights) against ``LogisticRegression
  (max_iter=1000)`` (L-BFGS) and the same with ``class_weight="balanced"``, on the same
  embeddings, a seeded 80/20 split of the first round's records; accuracy and macro-F1 on
  the held-out 20%. Each fit ``--head-repeat`` times, interleaved; median time.
* **LoRA vs full fine-tuning**: ``LoraAdapter.fit`` on ``--ft-records`` records truncated
  to ``--ft-tokens`` tokens against the same training loop with every encoder weight
  trainable (same batches of 16, pooling, head, loss, AdamW; the encoder at lr 2e-5). Each
  is warmed up with one step first (LoRA on a throw-away adapter). Peak memory is the peak
  resident set size from the private copy of the encoder to the last step (weights,
  gradients, optimiser state, activations) above the resident size before it (VmHWM, reset
  through ``/proc/self/clear_refs``).
* **predict latency**: ``ws.tenant(t).predict([text])`` one text per call, ``--predict-calls``
  calls on texts the tenant never saw, for each tenant with a promoted version; the first
  call of each path is reported apart (for the head tenant it starts the predictor: base
  model check, encoder and adapter load). For comparison, the bare model
  work in process (``FrozenEncoder.embed([text])`` + ``HeadAdapter.predict_proba``) and the
  peer path ``SentenceTransformer.encode([text])`` + ``LogisticRegression.predict_proba``.
  The paths take turns text by text (interleaved), so that the machine's slow phases hit
  them alike.
  Each product call also opens a serving scope and appends audit events (fsync'd SQLite
  transactions); the count per call is reported, and one ``AuditLog.append`` is timed alone
  for reference.

"x ours" is the other path's time divided by silolearn's. The train/eval routing is keyed
by each fresh workspace's secret, so the records trained and the eval scores move a little
between runs. ``--json PATH`` also writes the raw numbers. Quick run (3 minutes here):
``python benchmarks/round.py --records 300 --predict-calls 50 --embed-repeat 1
--no-second-round``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import (
    PeakMemory,
    Table,
    fmt_float,
    fmt_int,
    fmt_ratio,
    limit_threads,
    machine,
    rate,
    render,
)

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import numpy as np
import torch

from silolearn import datasets
from silolearn.config import TrainingConfig
from silolearn.learning.adapters import (
    INPUT_SCALE,
    Features,
    HeadAdapter,
    LoraAdapter,
    deterministic_torch,
    new_adapter,
)
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.pipeline import RoundResult, Trainer
from silolearn.workspace import Workspace

DATASETS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "rotten-tomatoes": datasets.rotten_tomatoes,
    "health-tweets": datasets.health_tweets,
    "bbc": datasets.bbc_news,
}
HEAD_TENANT, LORA_TENANT = "bench-head", "bench-lora"
FULL_FT_LR = 2e-5
"""Learning rate of the encoder's weights in the full fine-tuning comparison."""
Row = dict[str, Any]


# ----------------------------------------------------------------------------- helpers


def percentiles_ms(samples: Sequence[float]) -> dict[str, float]:
    values = np.array(samples) * 1e3
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


def macro_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
    }


def audit_count(ws: Workspace) -> int:
    return int(ws.conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0])


# ----------------------------------------------------------------------------- rounds


def run_round(ws: Workspace, tenant: str, kind: str, label: str) -> dict[str, Any]:
    """One round through ``Trainer.train``, with the time at which each worker started."""
    events: list[tuple[float, str]] = []

    def progress(_tenant: str, _pid: int, event: str, _details: dict[str, Any]) -> None:
        events.append((time.perf_counter(), event))

    start = time.perf_counter()
    result: RoundResult = Trainer(ws).train(tenant, kind=kind, progress=progress)
    starts = [t - start for t, event in events if event == "started"]
    timings = dict(result.timings)
    worker_start = starts[0] if starts else 0.0
    steps = ("load", "read", "embed", "train", "evaluate")
    other = timings["total"] - worker_start - sum(timings.get(s, 0.0) for s in steps)
    metrics = result.metrics
    lineage = result.lineage
    evaluate_predict = float(metrics.get("seconds", 0.0))
    return {
        "round": label,
        "tenant": tenant,
        "kind": kind,
        "status": result.status,
        "version": result.version,
        "to_worker_start": worker_start,
        **{s: float(timings.get(s, 0.0)) for s in steps},
        "other": other,
        "total": float(timings["total"]),
        "records": lineage.get("records"),
        "new_records": lineage.get("new_records"),
        "replay_records": lineage.get("replay_records"),
        "embedded": lineage.get("embedded"),
        "fit": {k: v for k, v in lineage.get("fit", {}).items() if k != "losses"},
        "eval_records": metrics.get("eval_records"),
        "eval_embed_seconds": metrics.get("eval_embed_seconds"),
        "eval_predict_seconds": evaluate_predict,
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "compared_with": metrics.get("compared_with"),
    }


def ingest(ws: Workspace, tenant: str, rows: list[Row]) -> dict[str, Any]:
    start = time.perf_counter()
    report = ws.tenant(tenant).ingest(rows)
    return {"seconds": time.perf_counter() - start, **report.to_dict()}


# ----------------------------------------------------------------------------- peers


def compare_embedding(
    encoder: FrozenEncoder, model: Any, texts: list[str], max_tokens: int, repeat: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Our encoder against sentence-transformers on ``texts``; returns our embeddings."""
    encoder.embed(texts[:64], max_length=max_tokens)
    model.encode(texts[:64], batch_size=64)
    ours_s, peer_s = [], []
    ours = peer = np.empty(0)
    for _ in range(repeat):  # interleaved, so that drift of the machine hits both alike
        start = time.perf_counter()
        ours = encoder.embed(texts, max_length=max_tokens)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        peer = model.encode(texts, batch_size=64)
        peer_s.append(time.perf_counter() - start)
    peer = np.asarray(peer, dtype=np.float32)
    cosine = (ours * peer).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(peer, axis=1)
    )
    tokens = encoder.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
    return {
        "texts": len(texts),
        "max_tokens": max_tokens,
        "mean_tokens": float(np.mean([len(t) for t in tokens])),
        "silolearn_seconds": float(np.median(ours_s)),
        "sentence_transformers_seconds": float(np.median(peer_s)),
        "runs": repeat,
        "max_abs_diff": float(np.abs(ours - peer).max()),
        "min_cosine": float(cosine.min()),
    }, ours


def compare_head(
    embeddings: np.ndarray, labels: list[str], config: TrainingConfig, seed: int, repeat: int
) -> tuple[dict[str, Any], HeadAdapter, Any]:
    """HeadAdapter.fit against scikit-learn's logistic regression on the same split; each
    fit ``repeat`` times, interleaved, median time (every fit is deterministic)."""
    from sklearn.linear_model import LogisticRegression

    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(len(labels) * 0.8)
    train, test = np.sort(order[:cut]), np.sort(order[cut:])
    x_train, x_test = embeddings[train], embeddings[test]
    y_train = [labels[i] for i in train]
    y_test = [labels[i] for i in test]
    names = sorted(set(labels))

    def ours() -> tuple[HeadAdapter, str, Callable[[], list[str]]]:
        adapter = HeadAdapter(names, hidden=config.head_hidden, dim=384, seed=seed)
        report = adapter.fit(Features(embeddings=x_train), y_train, config=config, seed=seed)

        def predict() -> list[str]:
            proba = adapter.predict_proba(Features(embeddings=x_test))
            return [adapter.labels[int(i)] for i in proba.argmax(axis=1)]

        name = f"silolearn HeadAdapter.fit ({report.epochs} epochs, {report.steps} steps)"
        return adapter, name, predict

    def peer(weight: str | None) -> Callable[[], tuple[Any, str, Callable[[], list[str]]]]:
        def fit() -> tuple[Any, str, Callable[[], list[str]]]:
            model = LogisticRegression(max_iter=1000, class_weight=weight)
            model.fit(x_train, y_train)
            name = "scikit-learn LogisticRegression(max_iter=1000"
            name += ")" if weight is None else ', class_weight="balanced")'
            return model, name, lambda: list(model.predict(x_test))

        return fit

    fits: list[Callable[[], tuple[Any, str, Callable[[], list[str]]]]] = [
        ours,
        peer(None),
        peer("balanced"),
    ]
    seconds: list[list[float]] = [[] for _ in fits]
    last: list[tuple[Any, str, Callable[[], list[str]]]] = []
    for _ in range(repeat):
        last = []
        for i, fit in enumerate(fits):
            start = time.perf_counter()
            last.append(fit())
            seconds[i].append(time.perf_counter() - start)
    rows = [
        {"path": name, "seconds": float(np.median(seconds[i])), **macro_scores(y_test, predict())}
        for i, (_, name, predict) in enumerate(last)
    ]
    return (
        {"train": len(train), "test": len(test), "labels": names, "runs": repeat, "rows": rows},
        last[0][0],
        last[1][0],
    )


def _full_ft_embed(model: Any, tokenizer: Any, texts: list[str], max_tokens: int) -> Any:
    """The pooling LoraAdapter uses: mean over tokens, unit length, scaled."""
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1) * INPUT_SCALE


def full_fine_tune(
    encoder: FrozenEncoder,
    texts: list[str],
    labels: list[str],
    config: TrainingConfig,
    seed: int,
) -> dict[str, Any]:
    """LoraAdapter.fit's loop with every encoder weight trainable instead of LoRA's."""
    names = sorted(set(labels))
    index = {label: i for i, label in enumerate(names)}
    y = torch.tensor([index[label] for label in labels], dtype=torch.int64)
    counts = np.bincount(y.numpy(), minlength=len(names)).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0)
    with PeakMemory() as memory:
        model = copy.deepcopy(encoder.model)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.eval()  # no dropout, as in LoraAdapter
        head = torch.nn.Linear(encoder.dim, len(names))
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
        optimiser = torch.optim.AdamW(
            [
                {"params": list(model.parameters()), "lr": FULL_FT_LR},
                {"params": list(head.parameters()), "lr": config.learning_rate},
            ],
            weight_decay=config.weight_decay,
        )
        batch_size = min(config.batch_size, 16)

        def step(rows: Any) -> None:
            optimiser.zero_grad(set_to_none=True)
            embedded = _full_ft_embed(
                model, encoder.tokenizer, [texts[int(i)] for i in rows], config.max_tokens
            )
            loss = loss_fn(head(embedded), y[rows])
            loss.backward()
            optimiser.step()

        step(torch.arange(min(batch_size, len(texts))))  # warm-up, not timed
        generator = torch.Generator().manual_seed(seed + 1)
        order = torch.randperm(len(texts), generator=generator)
        batches = [order[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        start = time.perf_counter()
        for rows in batches:
            step(rows)
        seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.parameters()) + sum(
        p.numel() for p in head.parameters()
    )
    return {
        "path": "full fine-tuning (all encoder weights trainable)",
        "seconds": seconds,
        "steps": len(batches),
        "trainable": trainable,
        "artefact_bytes": 4 * trainable,
        "peak_mb": memory.mb,
    }


def compare_lora(
    encoder: FrozenEncoder,
    texts: list[str],
    labels: list[str],
    config: TrainingConfig,
    seed: int,
) -> dict[str, Any]:
    names = sorted(set(labels))
    warm = new_adapter("lora", names, config=config, seed=seed, encoder=encoder, parent=None)
    warm.fit(Features(texts=texts[:16]), labels[:16], config=config, seed=seed)  # one step
    del warm
    with PeakMemory() as memory:
        start = time.perf_counter()
        adapter = new_adapter("lora", names, config=config, seed=seed, encoder=encoder, parent=None)
        setup = time.perf_counter() - start
        assert isinstance(adapter, LoraAdapter)
        start = time.perf_counter()
        report = adapter.fit(Features(texts=texts), labels, config=config, seed=seed)
        seconds = time.perf_counter() - start
    trainable = sum(t.numel() for t in adapter.tensors().values())
    lora = {
        "path": f"silolearn LoraAdapter.fit (rank {config.lora_rank}, query + value)",
        "seconds": seconds,
        "steps": report.steps,
        "trainable": trainable,
        "artefact_bytes": len(adapter.to_bytes()),
        "peak_mb": memory.mb,
        "setup_seconds": setup,
    }
    del adapter
    gc.collect()
    full = full_fine_tune(encoder, texts, labels, config, seed)
    return {
        "records": len(texts),
        "max_tokens": config.max_tokens,
        "batch_size": min(config.batch_size, 16),
        "memory_method": memory.method,
        "rows": [lora, full],
    }


# ----------------------------------------------------------------------------- predict


def interleaved(
    paths: Sequence[tuple[str, Callable[[str], object], bool]],
    texts: Sequence[str],
    count_events: Callable[[], int],
) -> list[dict[str, Any]]:
    """Each path's first call apart (cold), then for every remaining text one call of each
    path in turn, so that the machine's slow phases hit all paths alike. For the paths
    flagged, the audit events a warm call appends are counted (outside the timing)."""
    first = []
    for _, call, _ in paths:
        start = time.perf_counter()
        call(texts[0])
        first.append(time.perf_counter() - start)
    samples: list[list[float]] = [[] for _ in paths]
    events = [0] * len(paths)
    for text in texts[1:]:
        for i, (_, call, audited) in enumerate(paths):
            before = count_events() if audited else 0
            start = time.perf_counter()
            call(text)
            samples[i].append(time.perf_counter() - start)
            if audited:
                events[i] += count_events() - before
    calls = len(texts) - 1
    return [
        {
            "path": name,
            "first_ms": first[i] * 1e3,
            "calls": calls,
            "audit_events_per_call": events[i] / calls if audited else None,
            **percentiles_ms(samples[i]),
        }
        for i, (name, _, audited) in enumerate(paths)
    ]


def bench_predict(
    ws: Workspace,
    tenants: Sequence[str],
    texts: Sequence[str],
    encoder: FrozenEncoder,
    head: HeadAdapter | None,
    model: Any,
    classifier: Any,
    max_tokens: int,
) -> list[dict[str, Any]]:
    paths: list[tuple[str, Callable[[str], object], bool]] = []
    for tenant in tenants:
        kind = "head" if tenant == HEAD_TENANT else "lora"

        def product(text: str, tenant: str = tenant) -> object:
            return ws.tenant(tenant).predict([text])

        paths.append((f"silolearn ws.tenant(t).predict([text]), {kind}", product, True))
    if head is not None:
        head_adapter = head

        def bare(text: str) -> object:
            vectors = encoder.embed([text], max_length=max_tokens)
            return head_adapter.predict_proba(Features(embeddings=vectors))

        paths.append(("FrozenEncoder.embed + HeadAdapter.predict_proba (in process)", bare, False))

    def audit_only(_text: str) -> object:
        ws.audit.append("bench.predict", obj="latency", details={"count": 1})
        return None

    paths.append(("AuditLog.append alone (one fsync'd transaction)", audit_only, True))
    if model is not None and classifier is not None:

        def peer(text: str) -> object:
            return classifier.predict_proba(model.encode([text]))

        paths.append(("SentenceTransformer.encode + LogisticRegression.predict_proba", peer, False))
    return interleaved(paths, texts, lambda: audit_count(ws))


# ----------------------------------------------------------------------------- tables


def trained(r: dict[str, Any]) -> str:
    offered = r["new_records"] + r["replay_records"]
    if r["records"] < offered:  # a DP run or a retrain on all records reports its own count
        return f"{r['records']} of {offered} ({r['new_records']} + {r['replay_records']})"
    return f"{r['records']} ({r['new_records']} + {r['replay_records']})"


def tables_for(result: dict[str, Any]) -> list[Table]:
    tables = []
    rounds = result["rounds"]
    cost = Table(
        f"{result['dataset']}: one round per tenant, seconds",
        [
            "round",
            "trained (new + replay)",
            "embedded",
            "to worker start",
            "load",
            "read",
            "embed",
            "train",
            "evaluate",
            "other",
            "total",
        ],
        note=(
            "to worker start: base-model check, run slot, process start and imports; load: "
            "base-model digest + encoder load in the worker; evaluate: evaluation worker "
            "(start, load, eval embeddings, predictions); other: result transfer, second "
            "base-model check, registering and promoting the candidate."
        ),
    )
    outcome = Table(
        f"{result['dataset']}: what the rounds produced",
        [
            "round",
            "eval records",
            "eval embed s",
            "eval predict s",
            "accuracy",
            "macro-F1",
            "status",
        ],
    )
    for r in rounds:
        cost.add(
            r["round"],
            trained(r),
            str(r["embedded"]),
            *(fmt_float(r[s], 2) for s in ("to_worker_start", "load", "read", "embed")),
            *(fmt_float(r[s], 2) for s in ("train", "evaluate", "other", "total")),
        )
        outcome.add(
            r["round"],
            str(r["eval_records"]),
            fmt_float(r["eval_embed_seconds"] or 0.0, 2),
            fmt_float(r["eval_predict_seconds"], 2),
            fmt_float(r["accuracy"] or 0.0, 3),
            fmt_float(r["macro_f1"] or 0.0, 3),
            f"v{r['version']} {r['status']}",
        )
    tables += [cost, outcome]

    embedding = result.get("embedding")
    if embedding:
        table = Table(
            f"embedding {fmt_int(embedding['texts'])} texts (mean "
            f"{embedding['mean_tokens']:.0f} tokens, max {embedding['max_tokens']}), 1 thread",
            ["library", "seconds", "texts/s", "x ours"],
            note=(
                f"Same embeddings: max abs difference {embedding['max_abs_diff']:.1e}, minimum "
                f"cosine {embedding['min_cosine']:.6f}; median of {embedding['runs']} run(s)."
            ),
        )
        ours = embedding["silolearn_seconds"]
        for name, key in (
            ("silolearn FrozenEncoder.embed", "silolearn_seconds"),
            ("sentence-transformers encode", "sentence_transformers_seconds"),
        ):
            seconds = embedding[key]
            table.add(
                name,
                fmt_float(seconds, 2),
                fmt_float(rate(embedding["texts"], seconds), 1),
                fmt_ratio(seconds / ours),
            )
        tables.append(table)

    head = result.get("head")
    if head:
        table = Table(
            f"training a head on {head['train']} embeddings, accuracy on {head['test']} held out",
            ["path", "seconds", "x ours", "accuracy", "macro-F1"],
            note=f"Median of {head['runs']} fits each, interleaved.",
        )
        ours = head["rows"][0]["seconds"]
        for r in head["rows"]:
            table.add(
                r["path"],
                fmt_float(r["seconds"], 3),
                fmt_ratio(r["seconds"] / ours),
                fmt_float(r["accuracy"], 3),
                fmt_float(r["macro_f1"], 3),
            )
        tables.append(table)

    lora = result.get("lora")
    if lora:
        table = Table(
            f"LoRA vs full fine-tuning: {lora['records']} records, max {lora['max_tokens']} "
            f"tokens, batches of {lora['batch_size']}",
            [
                "path",
                "trainable params",
                "seconds",
                "steps",
                "ms/step",
                "samples/s",
                "x LoRA time",
                "peak MB",
                "artefact MB",
            ],
            note=(
                f"LoRA set-up (private copy of the encoder, LoRA layers injected): "
                f"{lora['rows'][0]['setup_seconds']:.2f} s, not in the fit time. Peak MB: "
                "peak RSS above the start, from the model copy to the last step (weights, "
                "gradients, optimiser state, activations)."
            ),
        )
        ours = lora["rows"][0]["seconds"]
        for r in lora["rows"]:
            table.add(
                r["path"],
                fmt_int(r["trainable"]),
                fmt_float(r["seconds"], 2),
                str(r["steps"]),
                fmt_int(1e3 * r["seconds"] / max(r["steps"], 1)),
                fmt_float(rate(lora["records"], r["seconds"]), 1),
                fmt_ratio(r["seconds"] / ours),
                fmt_int(r["peak_mb"]),
                fmt_float(r["artefact_bytes"] / 1e6, 2),
            )
        tables.append(table)

    predict = result.get("predict")
    if predict:
        table = Table(
            f"predict one text per call: {predict[0]['calls']} warm calls",
            ["path", "first call ms", "p50 ms", "p99 ms", "mean ms", "x ours (p50)", "audit/call"],
            note="first call, not in the percentiles: for the head tenant it starts the "
            "predictor (base-model check, encoder and adapter load), for the lora tenant it "
            "loads its adapter (a private copy of the encoder), for the others a warm-up. "
            "audit/call: audit events each warm call appended.",
        )
        ours = predict[0]["p50_ms"]
        for r in predict:
            events = r.get("audit_events_per_call")
            table.add(
                r["path"],
                fmt_float(r["first_ms"], 1),
                fmt_float(r["p50_ms"], 1),
                fmt_float(r["p99_ms"], 1),
                fmt_float(r["mean_ms"], 1),
                fmt_ratio(r["p50_ms"] / ours),
                "-" if events is None else fmt_float(events, 1),
            )
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", choices=list(DATASETS), default="rotten-tomatoes", help="real records"
    )
    parser.add_argument("--records", type=int, default=1000, help="new records per round")
    parser.add_argument(
        "--second-round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a second head round after --records newer records (default: on)",
    )
    parser.add_argument(
        "--lora-round",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a lora round on its own tenant (default: on)",
    )
    parser.add_argument(
        "--lora-budget",
        type=int,
        default=None,
        help="training.lora_budget_examples for the lora round (default: the config's)",
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the sentence-transformers, scikit-learn and full fine-tuning comparisons",
    )
    parser.add_argument(
        "--embed-repeat", type=int, default=3, help="runs of the embedding comparison (median)"
    )
    parser.add_argument(
        "--head-repeat", type=int, default=5, help="fits of each head trainer (median time)"
    )
    parser.add_argument("--ft-records", type=int, default=64, help="records of LoRA vs full FT")
    parser.add_argument("--ft-tokens", type=int, default=64, help="max tokens of LoRA vs full FT")
    parser.add_argument(
        "--predict-calls", type=int, default=200, help="single-text predict calls (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and the split")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    return parser.parse_args()


def versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "transformers", "peft", "sentence-transformers", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    # before transformers and huggingface_hub are imported: nothing is downloaded
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if args.lora_budget is not None:
        os.environ["SILOLEARN_TRAINING__LORA_BUDGET_EXAMPLES"] = str(args.lora_budget)
    limit_threads()
    deterministic_torch()  # as in the workers: one thread, deterministic kernels

    rows = DATASETS[args.dataset]()
    predict_count = args.predict_calls + 1 if args.predict_calls > 0 else 0
    pool = datasets.sample(rows, 2 * args.records + predict_count, seed=args.seed)
    first, second = pool[: args.records], pool[args.records : 2 * args.records]
    unseen = [r["text"] for r in pool[2 * args.records :]]
    predict_texts = (unseen + [r["text"] for r in first])[:predict_count]

    result: dict[str, Any] = {
        "benchmark": "round",
        "command": "python " + shlex.join(["benchmarks/round.py", *sys.argv[1:]]),
        "machine": {**machine(), "torch_threads": torch.get_num_threads(), **versions()},
        "dataset": f"{args.dataset}, {args.records} records per round",
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="silolearn-bench-round-") as tmp:
        ws = Workspace.init(Path(tmp) / "ws", actor="bench")
        try:
            config = ws.settings.training
            result["training_config"] = config.model_dump()
            ws.create_tenant(HEAD_TENANT)
            result["ingest"] = [ingest(ws, HEAD_TENANT, first)]
            result["rounds"].append(run_round(ws, HEAD_TENANT, "head", "head, round 1"))
            if args.second_round:
                result["ingest"].append(ingest(ws, HEAD_TENANT, second))
                result["rounds"].append(
                    run_round(ws, HEAD_TENANT, "head", "head, round 2 (caches warm)")
                )
            if args.lora_round:
                ws.create_tenant(LORA_TENANT)
                result["ingest"].append(ingest(ws, LORA_TENANT, first))
                label = f"lora, round 1 (budget {config.lora_budget_examples} examples)"
                result["rounds"].append(run_round(ws, LORA_TENANT, "lora", label))

            encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)
            head: HeadAdapter | None = None
            model: Any = None
            classifier: Any = None
            if args.peers:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
                model = SentenceTransformer(str(default_model_dir()), device="cpu")
                model.max_seq_length = config.max_tokens
                texts = [r["text"] for r in first]
                labels = [str(r["label"]) for r in first]
                result["embedding"], embeddings = compare_embedding(
                    encoder, model, texts, config.max_tokens, args.embed_repeat
                )
                result["head"], head, classifier = compare_head(
                    embeddings, labels, config, args.seed, args.head_repeat
                )
                ft_config = config.model_copy(update={"max_tokens": args.ft_tokens})
                result["lora"] = compare_lora(
                    encoder,
                    texts[: args.ft_records],
                    labels[: args.ft_records],
                    ft_config,
                    args.seed,
                )
            # a tenant can be asked for predictions once one of its rounds was promoted
            tenants = [
                t
                for t in (HEAD_TENANT, LORA_TENANT)
                if any(r["tenant"] == t and r["status"] == "active" for r in result["rounds"])
            ]
            if predict_texts:
                result["predict"] = bench_predict(
                    ws,
                    tenants,
                    predict_texts,
                    encoder,
                    head,
                    model,
                    classifier,
                    config.max_tokens,
                )
        finally:
            ws.close()
    result["seconds"] = time.perf_counter() - began

    print(f"Command: `{result['command']}`\n")
    info = result["machine"]
    print(
        f"Machine: {info['cpus']} CPUs ({info['processor']}), Python {info['python']}, "
        f"torch {info.get('torch')} on {info['torch_threads']} thread, sentence-transformers "
        f"{info.get('sentence-transformers')}, scikit-learn {info.get('scikit-learn')}; "
        f"whole run {result['seconds']:.0f} s.\n"
    )
    render(tables_for(result), markdown=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
