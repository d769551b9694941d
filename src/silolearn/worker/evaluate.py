"""The ``evaluate`` action: metrics of given versions on the tenant's labelled eval records
up to a cutoff, overall and per window. Served from an ``EVALUATION`` scope: the eval
records come over the socket, decrypted by the coordinator with the evaluation key the
worker never holds."""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from silolearn.errors import AccessDenied, IntegrityError
from silolearn.worker.job import WorkerJob
from silolearn.worker.process import embed_through, encoder_for
from silolearn.worker.remote import RemoteScope, Send


def evaluate(job: WorkerJob, send: Send) -> dict[str, Any]:
    """Metrics of each given version on the tenant's labelled eval records up to the cutoff,
    overall and per window (``earlier``: at or before ``split``; ``new``: after it)."""
    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import Features, load_adapter
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.learning.metrics import classification_metrics

    config = TrainingConfig.model_validate(job.training)
    params = job.params
    cutoff, split = str(params["cutoff"]), params.get("split")
    encoder = encoder_for(job)
    scope = RemoteScope(send, job.tenant_name)
    t0 = time.perf_counter()
    stored = [s for s in scope.eval.read(until=cutoff) if s.record.label is not None]
    texts = [s.record.text for s in stored]
    truth = [str(s.record.label) for s in stored]
    versions: list[dict[str, Any]] = params["versions"]
    embeddings = None
    if stored and any(v["kind"] == "head" for v in versions):
        cache = EmbeddingCache(
            scope, encoder.sha256, namespace="eval/embeddings", max_tokens=config.max_tokens
        )
        keys = [scope.record_id_hash(s.record) for s in stored]
        embeddings, _ = embed_through(cache, keys, texts, encoder, config.max_tokens, send)
        # a quarantined tenant is evaluated without growing its cache
        with contextlib.suppress(AccessDenied):
            cache.save()
    embed_seconds = time.perf_counter() - t0
    windows = {"all": list(range(len(stored)))}
    if split is not None:
        windows["earlier"] = [i for i, s in enumerate(stored) if s.record.timestamp <= split]
        windows["new"] = [i for i, s in enumerate(stored) if s.record.timestamp > split]
    results: dict[str, Any] = {}
    for version in versions:
        t0 = time.perf_counter()
        data = scope.blobs.get(f"run/{version['run_id']}/adapter")
        if hashlib.sha256(data).hexdigest() != version["sha256"]:
            raise IntegrityError(f"adapter v{version['version']} does not match its SHA-256")
        adapter = load_adapter(data, encoder=encoder)
        if not stored:
            predicted: list[str] = []
        else:
            features = (
                Features(texts=texts) if adapter.needs_text else Features(embeddings=embeddings)
            )
            proba = adapter.predict_proba(features)
            predicted = [adapter.labels[int(i)] for i in proba.argmax(axis=1)]
        metrics = {
            name: classification_metrics([truth[i] for i in rows], [predicted[i] for i in rows])
            for name, rows in windows.items()
        }
        results[str(version["version"])] = {
            **metrics["all"],
            "windows": {k: v for k, v in metrics.items() if k != "all"},
            "seconds": round(time.perf_counter() - t0, 4),
        }
    return {
        "eval_records": len(stored),
        "window": {
            "cutoff": cutoff,
            "split": split,
            "first": min((s.record.timestamp for s in stored), default=None),
            "last": max((s.record.timestamp for s in stored), default=None),
        },
        "embed_seconds": round(embed_seconds, 4),
        "versions": results,
    }
