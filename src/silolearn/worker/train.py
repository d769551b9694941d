"""The ``train`` action: fit one candidate adapter on the run's training records.

The worker reads its tenant's training records up to the cutoff (and its parent's replay
buffer and adapter) from the coordinator, embeds them through the tenant's cache, draws the
run's canaries from the seed the coordinator derived for it, fits (under DP with exactly
the plan the ledger charged), and returns the artefact, the new replay buffer, the ids it
used, the canaries and the lineage. It writes nothing but the embedding cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from silolearn.errors import IntegrityError
from silolearn.worker.job import NothingToLearn, WorkerJob, code_version, records_digest
from silolearn.worker.process import SANDBOX, check_base, embed_through, encoder_for
from silolearn.worker.remote import RemoteScope, Send, Stored


@dataclass
class _Selection:
    """The records one run trains on: the new ones since its parent and the replayed."""

    new: list[Stored]
    replay: list[Stored]
    training: list[Stored]
    max_seq: int
    buffer: Any
    warm: bool
    all_records: bool
    rng: np.random.Generator
    labels: set[str] = field(default_factory=set)
    loop: dict[str, Any] = field(default_factory=dict)
    """The labels' provenance and the self-confirmed bound (``_bound_self_confirmed``)."""


def train(job: WorkerJob, send: Send) -> dict[str, Any]:
    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import load_adapter

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    config = TrainingConfig.model_validate(job.training)
    params = job.params
    kind, seed = str(params["kind"]), int(params["seed"])
    parent: dict[str, Any] | None = params.get("parent")
    dp: dict[str, Any] | None = params.get("dp")
    encoder = encoder_for(job)
    timings["load"] = time.perf_counter() - t0

    scope = RemoteScope(send, job.tenant_name)
    t0 = time.perf_counter()
    trunk = _trunk(params.get("trunk"))
    chosen = _select(job, scope, config, trunk)
    canaries = _draw_canaries(params, sorted(chosen.labels), dp is not None)
    canary_texts, canary_labels = canaries.training_rows()
    granted: dict[str, Any] | None = None
    if dp is not None:
        # the ledger is asked before any computation on the data: a refused run stops here
        granted = send.ask(
            "plan", {"records": len(chosen.training) + len(canary_texts), "kind": kind}
        )
    parent_adapter = None
    if parent is not None and chosen.warm:
        parent_bytes = scope.blobs.get(f"run/{parent['run_id']}/adapter")
        if hashlib.sha256(parent_bytes).hexdigest() != parent["sha256"]:
            raise IntegrityError("the parent adapter does not match its SHA-256")
        parent_adapter = load_adapter(parent_bytes, encoder=encoder)
        chosen.labels |= set(parent_adapter.labels)
    labels = sorted(chosen.labels)
    timings["read"] = time.perf_counter() - t0
    send("data", {"new": len(chosen.new), "replay": len(chosen.replay), "labels": len(labels)})

    t0 = time.perf_counter()
    features, embedded = _features(scope, encoder, config, chosen.training, canary_texts, send)
    timings["embed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from silolearn.learning.adapters import new_adapter

    adapter = new_adapter(
        kind, labels, config=config, seed=seed, encoder=encoder, parent=parent_adapter, trunk=trunk
    )
    train_labels = [str(s.record.label) for s in chosen.training] + canary_labels
    privacy: dict[str, Any] | None = None
    if dp is None:
        fit = adapter.fit(features, train_labels, config=config, seed=seed, progress=send)
    else:
        assert granted is not None
        fit, privacy = _fit_dp(adapter, features, train_labels, granted, dp, config, send)
    artefact = adapter.to_bytes()
    timings["train"] = time.perf_counter() - t0

    from silolearn.learning.replay import ReplayItem

    new = chosen.new
    chosen.buffer.offer(
        (ReplayItem(s.record.id, str(s.record.label), s.record.timestamp) for s in new),
        chosen.rng,
    )
    check_base(job)
    ids = [s.record.id for s in chosen.training]
    outcome = {
        "fit": fit.to_dict(),
        "embedded": embedded,
        "privacy": privacy or {"mode": "off"},
        "canaries": canaries.summary(),
    }
    warm_start = parent_adapter is not None
    lineage = _lineage(job, config, chosen, labels, ids, trunk, outcome, warm_start)
    return {
        "artefact": artefact,
        "replay": chosen.buffer.to_bytes(),
        "records": json.dumps([[job.tenant_id, i] for i in ids]).encode(),
        "canaries": canaries.to_bytes(),
        "oof": _out_of_fold(fit.oof_predicted, list(adapter.labels), ids),
        "lineage": lineage,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }


def _out_of_fold(
    predicted: tuple[int, ...] | None, labels: list[str], ids: list[str]
) -> bytes | None:
    """The out-of-fold predicted label of each trained record (the canaries, last, left
    out), by record id: what the candidate answers on texts it did not train on, which drift
    monitoring compares served predictions with. None when the fit kept none."""
    if predicted is None or len(predicted) < len(ids):
        return None
    return json.dumps(
        {"ids": ids, "predicted": [labels[p] for p in predicted[: len(ids)]]}
    ).encode()


def _select(job: WorkerJob, scope: RemoteScope, config: Any, trunk: Any) -> _Selection:
    """The run's training records: new labelled records since the parent plus a
    class-balanced replay sample, or every labelled record (under DP, or when the round
    cannot start from its parent's weights)."""
    from silolearn.learning.replay import ReplayBuffer

    params = job.params
    cutoff, parent = str(params["cutoff"]), params.get("parent")
    dp = params.get("dp")
    stored = scope.train.read(until=cutoff)
    max_seq = max((s.seq for s in stored), default=0)
    if parent is not None:
        p_cutoff, p_seq = str(parent["cutoff"]), int(parent["max_seq"])
        new = [s for s in stored if s.seq > p_seq or s.record.timestamp > p_cutoff]
    else:
        new = list(stored)
    new = [s for s in new if s.record.label is not None]
    by_id = {s.record.id: s for s in stored if s.record.label is not None}

    rng = np.random.default_rng([int(params["seed"]), int(params["version_hint"])])
    if parent is not None and config.replay_size > 0:
        buffer = ReplayBuffer.from_bytes(
            scope.blobs.get(f"run/{parent['run_id']}/replay"), capacity=config.replay_size
        )
    else:
        buffer = ReplayBuffer(config.replay_size)
    if not new and (dp is None or not by_id):
        raise NothingToLearn(
            f"tenant {job.tenant_name!r} has no labelled training records new since "
            f"{'v' + str(parent['version']) if parent else 'the start'} up to {cutoff}"
        )
    replay: list[Stored] = []
    warm = parent is not None and _can_warm_start(parent, str(params["kind"]), dp, trunk)
    all_records = dp is not None or (parent is not None and not warm)
    if all_records:
        # DP-SGD samples every labelled record up to the cutoff by Poisson sampling: a
        # data-dependent selection (the class-balanced replay sample, a size cap) would
        # make the accountant's sampling rate a lie. A round that cannot start from its
        # parent's weights (another kind, another shared trunk, a non-private parent of a
        # DP run) retrains on everything instead of forgetting what the parent knew.
        training = sorted(by_id.values(), key=lambda s: s.seq)
    else:
        want = 0
        if config.replay_size > 0 and len(buffer):
            want = round(config.replay_mix / (1.0 - config.replay_mix) * len(new))
        new_ids = {s.record.id for s in new}
        replay = [
            by_id[item.id]
            for item in buffer.sample(want, rng)
            if item.id in by_id and item.id not in new_ids
        ]
        training = new + replay
    loop, left_out = _bound_self_confirmed(
        training, config.max_self_confirmed_share, params, per_record=dp is not None
    )
    if left_out:
        new = [s for s in new if s.record.id not in left_out]
        replay = [s for s in replay if s.record.id not in left_out]
        training = [s for s in training if s.record.id not in left_out]
    if not training:
        raise NothingToLearn(
            f"every labelled training record of tenant {job.tenant_name!r} up to {cutoff} "
            "confirms the model's own answers without review: nothing to learn from"
        )
    return _Selection(
        new=new,
        replay=replay,
        training=training,
        max_seq=max_seq,
        buffer=buffer,
        warm=warm,
        all_records=all_records,
        rng=rng,
        labels={str(s.record.label) for s in training},
        loop=loop,
    )


def _bound_self_confirmed(
    training: list[Stored], max_share: float, params: dict[str, Any], *, per_record: bool
) -> tuple[dict[str, Any], set[str]]:
    """The labels' provenance of a training set and the self-confirmed records to leave
    out so that their share is at most ``max_share`` of what is trained on.

    Leaving the excess out, rather than down-weighting it, keeps every record the run
    trains on a whole example: DP-SGD's per-example clipping and its accountant assume one
    example per record, and membership inference judges the records actually trained on.
    Which ones stay is a seeded choice by a hash of the record id (the same run keeps the
    same ones), spread over the window instead of keeping the oldest or newest.

    ``per_record`` (a DP run): every self-confirmed record is left out (unless the bound is
    off), a rule that looks at each record alone. A quota would couple records (one more
    reviewed label admits one more self-confirmed one), so a neighbouring data set could
    differ by two trained records, which the accountant does not charge for."""
    from silolearn.learning.active import self_confirmed_quota

    sources = Counter(s.origin.source.value for s in training)
    confirmed = sorted(
        (s for s in training if s.origin.self_confirmed),
        key=lambda s: hashlib.sha256(f"{params['seed']}\x00{s.record.id}".encode()).digest(),
    )
    if per_record:
        keep = len(confirmed) if max_share >= 1.0 else 0
    else:
        keep = self_confirmed_quota(len(training), len(confirmed), max_share)
    left_out = {s.record.id for s in confirmed[keep:]}
    trained = len(training) - len(left_out)
    loop = {
        "label_sources": {k: sources[k] for k in sorted(sources)},
        "self_confirmed": len(confirmed),
        "self_confirmed_share": round(len(confirmed) / len(training), 6) if training else 0.0,
        "max_self_confirmed_share": max_share,
        "left_out": len(left_out),
        "trained_self_confirmed_share": round(keep / trained, 6) if trained else 0.0,
    }
    return loop, left_out


def _features(
    scope: RemoteScope,
    encoder: Any,
    config: Any,
    training: list[Stored],
    canary_texts: list[str],
    send: Send,
) -> tuple[Any, int]:
    """The training rows' features, canaries last. The frozen embeddings serve both kinds:
    a head trains on them, a LoRA fit starts its head from a tuned fit on them; texts group
    copies for cross-validation."""
    from silolearn.learning.adapters import Features
    from silolearn.learning.encoder import EmbeddingCache

    texts = [s.record.text for s in training]
    cache = EmbeddingCache(scope, encoder.sha256, max_tokens=config.max_tokens)
    keys = [scope.record_id_hash(s.record) for s in training]
    matrix, embedded = embed_through(cache, keys, texts, encoder, config.max_tokens, send)
    cache.save()
    if canary_texts:
        # synthetic rows: embedded here, never cached with the tenant's records
        extra = encoder.embed(canary_texts, max_length=config.max_tokens)
        matrix = np.concatenate([matrix, extra.astype(matrix.dtype)])
    return Features(texts=texts + canary_texts, embeddings=matrix), embedded


def _lineage(
    job: WorkerJob,
    config: Any,
    chosen: _Selection,
    labels: list[str],
    ids: list[str],
    trunk: Any,
    outcome: dict[str, Any],
    warm_start: bool,
) -> dict[str, Any]:
    """What the version will record of how it was made, in the order it always had."""
    params, parent = job.params, job.params.get("parent")
    training, new, buffer = chosen.training, chosen.new, chosen.buffer
    return {
        "parent": None if parent is None else parent["version"],
        "kind": str(params["kind"]),
        "seed": int(params["seed"]),
        "cutoff": str(params["cutoff"]),
        "max_seq": chosen.max_seq,
        "records": len(training),
        "new_records": len(new),
        "replay_records": len(chosen.replay),
        "records_digest": records_digest(job.tenant_id, ids),
        "max_record_timestamp": max(s.record.timestamp for s in training),
        "min_record_timestamp": min(s.record.timestamp for s in training),
        "labels": labels,
        "label_counts": dict(sorted(Counter(str(s.record.label) for s in training).items())),
        "new_label_counts": dict(sorted(Counter(str(s.record.label) for s in new).items())),
        "feedback_records": sum(_from_feedback(s) for s in training),
        "new_feedback_records": sum(_from_feedback(s) for s in new),
        "replay_buffer": {"size": len(buffer), "per_class": buffer.counts()},
        "config": config.model_dump(),
        "code_version": code_version(),
        "base_sha256": job.base_sha256,
        **outcome,
        "trunk": None if trunk is None else {"version": trunk.version, "sha256": trunk.sha256},
        "warm_start": warm_start,
        "all_records": chosen.all_records,
        "feedback_loop": chosen.loop,
        "sandbox": SANDBOX,
        "worker_pid": os.getpid(),
    }


def _from_feedback(stored: Stored) -> bool:
    """A record whose label came back from production: feedback on a served prediction,
    or an answer to the tenant's label queue (its label's provenance)."""
    return stored.origin.source.value in ("feedback", "active")


def _draw_canaries(params: dict[str, Any], labels: list[str], dp: bool) -> Any:
    """The run's canaries, drawn from the seed the coordinator keyed with the tenant's token
    key, the run seed and the version: the same run draws the same ones (I4); nobody
    without the key can predict them, the worker included. Under DP a secret canary is
    inserted once (copies would be a group, not a record)."""
    from silolearn.validation.canaries import Canaries

    spec = params.get("canaries") or {}
    seed: bytes = params["canary_seed"]
    return Canaries.draw(
        np.random.default_rng(int.from_bytes(seed, "big")),
        labels,
        secret=int(spec.get("secret", 0)),
        copies=1 if dp else int(spec.get("copies", 1)),
        audit=int(spec.get("audit", 0)),
    )


def is_default_learner(config: Any, adapter: Any) -> bool:
    """Whether a head was fitted the way the platform's default learner fits one: the
    membership gate's baseline is then the candidate itself."""
    return bool(
        config.tuning == "auto"
        and adapter.hidden == 0
        and config.l2_choice == "best"
        and config.max_c is None
        and config.objective == "auto"
    )


def _can_warm_start(parent: dict[str, Any], kind: str, dp: Any, trunk: Any) -> bool:
    """Whether a round may start from its parent's weights: same adapter kind, same shared
    trunk (or none), and under DP only from a parent that was itself trained under DP."""
    if parent.get("kind", kind) != kind:
        return False
    if dp is not None and not parent.get("dp"):
        return False
    parent_trunk = parent.get("trunk") or {}
    return parent_trunk.get("sha256") == (None if trunk is None else trunk.sha256)


def _trunk(spec: dict[str, Any] | None) -> Any:
    """The pinned shared trunk a head is trained on, checked against its digest."""
    from silolearn.learning.adapters import Trunk, read_artefact

    if spec is None:
        return None
    data: bytes = spec["artefact"]
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise IntegrityError("the shared trunk does not match its SHA-256")
    _, tensors = read_artefact(data)
    return Trunk(
        int(spec["version"]), str(spec["sha256"]), tensors["trunk.weight"], tensors["trunk.bias"]
    )


def _fit_dp(
    adapter: Any,
    features: Any,
    labels: list[str],
    answer: dict[str, Any],
    dp: dict[str, Any],
    config: Any,
    send: Send,
) -> tuple[Any, dict[str, Any]]:
    """DP-SGD with exactly the plan the coordinator charged to the ledger."""
    import torch

    from silolearn.learning.adapters import FitReport, HeadAdapter
    from silolearn.learning.dp import ClipMonitor, DpPlan, dp_fit_head, dp_fit_lora

    plan = DpPlan.from_dict(answer["plan"])
    y = torch.from_numpy(adapter.label_index(labels))
    monitor = ClipMonitor(plan.max_grad_norm)
    t0 = time.perf_counter()
    if isinstance(adapter, HeadAdapter):
        engine = "fused"
        losses = dp_fit_head(
            adapter.head,
            adapter.inputs(features.embeddings),
            y,
            plan,
            weight_decay=config.weight_decay,
            monitor=monitor,
            progress=send,
        )
    else:
        engine = "opacus"
        losses = dp_fit_lora(
            adapter,
            list(features.texts),
            y,
            plan,
            lora_learning_rate=config.lora_learning_rate,
            weight_decay=config.weight_decay,
            monitor=monitor,
            progress=send,
        )
    clipping = monitor.summary(high=float(dp["clipped_high"]), low=float(dp["clipped_low"]))
    fit = FitReport(plan.steps, 0, len(labels), losses[-1] if losses else 0.0, tuple(losses))
    privacy = {
        "mode": "dp",
        "engine": engine,
        "plan": plan.to_dict(),
        "charge": answer.get("charge"),
        "clipping": clipping,
        "warnings": clipping["warnings"],
        "sampling": "Poisson",
        "noise_source": "operating-system randomness (not the run seed)",
        "loss": "unweighted cross-entropy (class weights from the data would leak counts)",
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return fit, privacy
