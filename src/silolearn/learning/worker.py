"""The isolated worker process (invariant I2): one tenant, one purpose, one process.

``silolearn.learning.runner`` starts ``python -m silolearn.learning.worker --fd N`` as a new
interpreter (spawned, never forked: no memory of the coordinator, which holds every
tenant's keys, is inherited) with a scrubbed environment (no keyring passphrase), and sends
the job over the socket ``N`` as typed data (``silolearn.learning.protocol``: JSON and raw
frames, never a pickle, either way, I11). The job carries only:

- the tenant's id and name, its unwrapped training key and its token key; its evaluation
  key only for the actions in ``EVAL_KEY_ACTIONS`` (never for one that trains, I5);
- the workspace database path and the tenant's own blob directory;
- the read-only base model path and its recorded digest;
- the action (``train``, ``evaluate`` or ``probe``) and its parameters.

Before it reads any tenant data the worker restricts its own filesystem access with
Landlock where the kernel has it: the Python installation and the base model read-only, the
database files and the tenant's blob directory read-write; the keyring, the audit head and
other tenants' blob directories become unreadable. A training worker opens a ``TRAINING``
scope (no eval access); an evaluation worker an ``EVALUATION`` scope. Whatever it does is
audited under the actor ``worker:<action>:<tenant>``; it cannot sign checkpoints.

The worker never writes a version: it returns its artefact to the coordinator, which
registers it. A worker that dies leaves nothing in the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.errors import (
    AccessDenied,
    DecryptionError,
    IntegrityError,
    InvalidInput,
    ProtocolViolation,
    SiloError,
)
from silolearn.learning.protocol import (
    Channel,
    ErrorMessage,
    JobMessage,
    ProgressMessage,
    RefusalMessage,
    ReplyMessage,
    RequestMessage,
    ResultMessage,
    read_job,
)

if TYPE_CHECKING:
    from silolearn.learning.encoder import EmbeddingCache, FrozenEncoder

ACTIONS = ("train", "evaluate", "gates", "probe", "shared")
EVAL_KEY_ACTIONS = frozenset({"evaluate", "gates"})
"""The actions whose worker is sent the tenant's evaluation key: evaluation reads eval
records, the gates read eval records as non-members. ``train``, ``shared`` and ``probe``
(a training worker's view) never hold it, so their eval reads fail by cryptography too."""


class Refused(SiloError):
    """The coordinator refused what the worker asked (e.g. the privacy ledger said no)."""


class Link:
    """The worker's side of its socket: progress events, and questions to the coordinator
    (``ask``) that block until it answers."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        self._channel.send(ProgressMessage(event=event, details=details))

    def ask(self, name: str, details: dict[str, Any]) -> dict[str, Any]:
        self._channel.send(RequestMessage(name=name, details=details))
        message = self._channel.receive()
        if isinstance(message, ReplyMessage):
            return message.answer
        if isinstance(message, RefusalMessage):
            raise Refused(f"the coordinator refused {name!r}: {message.message}", code=message.code)
        got = "nothing" if message is None else f"a {message.type} message"
        raise ProtocolViolation(
            f"the coordinator answered {name!r} with {got}", reason="unexpected"
        )


Send = Link


@dataclass(frozen=True)
class WorkerJob:
    action: str
    workspace: str
    db_file: str
    blob_dir: str
    tenant_id: str
    tenant_name: str
    dek_version: int
    data_key: bytes = field(repr=False)
    token_key: bytes = field(repr=False)
    base_path: str
    base_sha256: str
    actor: str
    training: dict[str, Any]
    params: dict[str, Any]
    sandbox: bool = True
    tmp_dir: str | None = None
    eval_key: bytes | None = field(default=None, repr=False)
    """The tenant's evaluation key: sent only for ``EVAL_KEY_ACTIONS``."""


def records_digest(tenant_id: str, ids: list[str]) -> str:
    """The lineage digest of the exact records a run used, in the order it used them.

    Each line is ``tenant_id NUL record_id LF``: two tenants' records can share an id, never
    a tenant id, so a run that mixed tenants could not reproduce this digest from one
    tenant's records."""
    digest = hashlib.sha256()
    for record_id in ids:
        digest.update(f"{tenant_id}\x00{record_id}\n".encode())
    return digest.hexdigest()


def code_version() -> str:
    """The package version and a digest of its source files."""
    root = Path(__file__).resolve().parents[1]  # the silolearn package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes())
    from silolearn.version import __version__

    return f"{__version__}+{digest.hexdigest()[:12]}"


class WorkerContext:
    """What the worker holds: one tenant's scope for the job's purpose, and nothing else."""

    def __init__(self, job: WorkerJob, purpose: Any) -> None:
        from silolearn import db
        from silolearn.audit.log import AuditLog
        from silolearn.security.envelope import DataKey
        from silolearn.storage.scope import TenantRef, TenantScope

        self.job = job
        self.conn = db.connect(Path(job.db_file))
        self.audit = AuditLog(
            self.conn,
            actor=job.actor,
            head_file=Path(job.workspace) / "audit" / "head.json",
            signing_key=None,
            checkpoint_every=10**12,
        )
        self.tenant = TenantRef(job.tenant_id, job.tenant_name)
        eval_key = None
        if job.eval_key is not None and purpose.holds_eval_key:
            eval_key = DataKey(job.tenant_id, job.dek_version, job.eval_key)
        self.scope = TenantScope(
            conn=self.conn,
            audit=self.audit,
            tenant=self.tenant,
            data_key=DataKey(job.tenant_id, job.dek_version, job.data_key),
            eval_key=eval_key,
            token_key=job.token_key,
            blob_dir=Path(job.blob_dir),
            purpose=purpose,
        )

    def close(self) -> None:
        self.conn.close()


_WARM: dict[str, Any] = {}
"""What the process loaded before its job (``--warm``): the encoder, or why it could not."""


_WARM_MODULES = (
    "silolearn.learning.adapters",
    "silolearn.learning.metrics",
    "silolearn.storage.scope",
    "silolearn.validation.attacks",
    "silolearn.validation.canaries",
    "silolearn.validation.evidence",
)


def _warm(base: Path) -> None:
    """Before the job arrives: import torch, transformers and the modules the jobs use, and
    load the encoder from ``base``, its digest taken as it is read. The process knows no
    tenant yet and reads nothing but the interpreter's files and the base model (both
    readable under the sandbox too); it embeds nothing, so it starts no thread the sandbox
    would not confine."""
    import importlib

    from silolearn.learning.encoder import FrozenEncoder

    t0 = time.perf_counter()
    try:
        for module in _WARM_MODULES:  # code only: scipy.stats alone takes ~0.3 s
            importlib.import_module(module)
        _WARM["encoder"] = FrozenEncoder.load(base, expected_sha256=None)
    except Exception as exc:  # the job loads the model itself and reports what is wrong
        _WARM["error"] = f"{type(exc).__name__}: {exc}"
    _WARM["seconds"] = round(time.perf_counter() - t0, 4)


def _encoder(job: WorkerJob) -> FrozenEncoder:
    """The base model for ``job``, checked against the digest the coordinator recorded: the
    encoder loaded ahead of the job when it came from the job's path and hashed to that
    digest, otherwise loaded (and checked) now."""
    from silolearn.learning.encoder import FrozenEncoder

    warm: FrozenEncoder | None = _WARM.pop("encoder", None)
    if (
        warm is not None
        and str(warm.model_dir) == str(Path(job.base_path))
        and warm.sha256 == job.base_sha256
    ):
        _WARM["used"] = True
        return warm
    # load() hashes the files and refuses a digest other than the recorded one
    return FrozenEncoder.load(Path(job.base_path), expected_sha256=job.base_sha256)


def _check_base(job: WorkerJob) -> None:
    from silolearn.learning.encoder import BaseModelTampered, model_digest

    actual = model_digest(Path(job.base_path))
    if actual != job.base_sha256:
        raise BaseModelTampered(
            f"the base model at {job.base_path} changed: expected sha256 "
            f"{job.base_sha256[:12]}..., found {actual[:12]}...",
            expected=job.base_sha256,
            actual=actual,
        )


_SANDBOX: dict[str, Any] = {"abi": 0, "reason": "not applied"}


def _sandbox(job: WorkerJob) -> dict[str, Any]:
    """Confine this process before it reads anything of the tenant: the interpreter and the
    base model read-only; the database files, the tenant's blob directory and a private
    temporary directory read-write. Nothing else, so not the keyring, the audit head or any
    other tenant's blobs. Landlock confines the calling thread and what it starts later, so
    the report counts the process's threads at that moment (1: nothing escapes)."""
    from silolearn.security.sandbox import default_read_paths, restrict_filesystem

    if job.tmp_dir:
        os.environ["TMPDIR"] = job.tmp_dir
        tempfile.tempdir = job.tmp_dir  # a warm process already asked for one
    if not job.sandbox:
        return {"abi": 0, "reason": "disabled"}
    db_file = Path(job.db_file)
    write = [db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm"), Path(job.blob_dir)]
    if job.tmp_dir:
        write.append(Path(job.tmp_dir))
    threads = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").is_dir() else None
    report = restrict_filesystem(read=[*default_read_paths(), Path(job.base_path)], write=write)
    workspace = Path(job.workspace).resolve()
    exposed = [p for p in report.read if workspace.is_relative_to(p)]
    return {**report.to_dict(), "workspace_exposed": exposed, "threads": threads}


# -- training ------------------------------------------------------------------------------


def _train(job: WorkerJob, send: Send) -> dict[str, Any]:
    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import Features, load_adapter, new_adapter
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.learning.replay import ReplayBuffer, ReplayItem
    from silolearn.storage.scope import Purpose

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    config = TrainingConfig.model_validate(job.training)
    params = job.params
    kind, seed, cutoff = str(params["kind"]), int(params["seed"]), str(params["cutoff"])
    parent: dict[str, Any] | None = params.get("parent")
    encoder = _encoder(job)
    sandbox = _SANDBOX
    timings["load"] = time.perf_counter() - t0

    ctx = WorkerContext(job, Purpose.TRAINING)
    try:
        scope = ctx.scope
        t0 = time.perf_counter()
        stored = scope.train.read(until=cutoff)
        max_seq = max((s.seq for s in stored), default=0)
        if parent is not None:
            p_cutoff, p_seq = str(parent["cutoff"]), int(parent["max_seq"])
            new = [s for s in stored if s.seq > p_seq or s.record.timestamp > p_cutoff]
        else:
            new = list(stored)
        new = [s for s in new if s.record.label is not None]
        by_id = {s.record.id: s for s in stored if s.record.label is not None}

        rng = np.random.default_rng([seed, int(params["version_hint"])])
        dp: dict[str, Any] | None = params.get("dp")
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
        replay: list[Any] = []
        trunk = _trunk(params.get("trunk"))
        warm = parent is not None and _can_warm_start(parent, kind, dp, trunk)
        if dp is not None or (parent is not None and not warm):
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
        labels_seen = {str(s.record.label) for s in training}
        canaries = _draw_canaries(job, params, sorted(labels_seen), dp is not None)
        canary_texts, canary_labels = canaries.training_rows()
        granted: dict[str, Any] | None = None
        if dp is not None:
            # the ledger is asked before any computation on the data: a refused run stops here
            granted = send.ask("plan", {"records": len(training) + len(canary_texts), "kind": kind})
        parent_adapter = None
        if parent is not None and warm:
            parent_bytes = scope.blobs.get(f"run/{parent['run_id']}/adapter")
            if hashlib.sha256(parent_bytes).hexdigest() != parent["sha256"]:
                raise IntegrityError("the parent adapter does not match its SHA-256")
            parent_adapter = load_adapter(parent_bytes, encoder=encoder)
            labels_seen |= set(parent_adapter.labels)
        labels = sorted(labels_seen)
        timings["read"] = time.perf_counter() - t0
        send("data", {"new": len(new), "replay": len(replay), "labels": len(labels)})

        t0 = time.perf_counter()
        texts = [s.record.text for s in training]
        # the frozen embeddings serve both kinds: a head trains on them, a LoRA fit starts
        # its head from a tuned fit on them; texts group copies for cross-validation
        cache = EmbeddingCache(scope, encoder.sha256, max_tokens=config.max_tokens)
        keys = [scope.record_id_hash(s.record) for s in training]
        matrix, embedded = _embed_through(cache, keys, texts, encoder, config.max_tokens, send)
        cache.save()
        if canary_texts:
            # synthetic rows: embedded here, never cached with the tenant's records
            extra = encoder.embed(canary_texts, max_length=config.max_tokens)
            matrix = np.concatenate([matrix, extra.astype(matrix.dtype)])
        features = Features(texts=texts + canary_texts, embeddings=matrix)
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        adapter = new_adapter(
            kind,
            labels,
            config=config,
            seed=seed,
            encoder=encoder,
            parent=parent_adapter,
            trunk=trunk,
        )
        train_labels = [str(s.record.label) for s in training] + canary_labels
        privacy: dict[str, Any] | None = None
        if dp is None:
            fit = adapter.fit(features, train_labels, config=config, seed=seed, progress=send)
        else:
            assert granted is not None
            fit, privacy = _fit_dp(adapter, features, train_labels, granted, dp, config, send)
        artefact = adapter.to_bytes()
        timings["train"] = time.perf_counter() - t0

        buffer.offer(
            (ReplayItem(s.record.id, str(s.record.label), s.record.timestamp) for s in new), rng
        )
        ids = [s.record.id for s in training]
        _check_base(job)
        lineage = {
            "parent": None if parent is None else parent["version"],
            "kind": kind,
            "seed": seed,
            "cutoff": cutoff,
            "max_seq": max_seq,
            "records": len(training),
            "new_records": len(new),
            "replay_records": len(replay),
            "records_digest": records_digest(job.tenant_id, ids),
            "max_record_timestamp": max(s.record.timestamp for s in training),
            "min_record_timestamp": min(s.record.timestamp for s in training),
            "labels": labels,
            "label_counts": dict(sorted(Counter(str(s.record.label) for s in training).items())),
            "new_label_counts": dict(sorted(Counter(str(s.record.label) for s in new).items())),
            "replay_buffer": {"size": len(buffer), "per_class": buffer.counts()},
            "config": config.model_dump(),
            "code_version": code_version(),
            "base_sha256": job.base_sha256,
            "fit": fit.to_dict(),
            "embedded": embedded,
            "privacy": privacy or {"mode": "off"},
            "canaries": canaries.summary(),
            "trunk": None if trunk is None else {"version": trunk.version, "sha256": trunk.sha256},
            "warm_start": parent_adapter is not None,
            "all_records": dp is not None or (parent is not None and not warm),
            "sandbox": sandbox,
            "worker_pid": os.getpid(),
        }
        return {
            "artefact": artefact,
            "replay": buffer.to_bytes(),
            "records": json.dumps([[job.tenant_id, i] for i in ids]).encode(),
            "canaries": canaries.to_bytes(),
            "lineage": lineage,
            "timings": {k: round(v, 4) for k, v in timings.items()},
        }
    finally:
        ctx.close()


def _draw_canaries(job: WorkerJob, params: dict[str, Any], labels: list[str], dp: bool) -> Any:
    """The run's canaries, keyed by the tenant's token key, the seed and the version: the
    same run draws the same ones (I4); nobody without the key can predict them. Under DP a
    secret canary is inserted once (copies would be a group, not a record)."""
    from silolearn.validation.canaries import Canaries, keyed_rng

    spec = params.get("canaries") or {}
    rng = keyed_rng(job.token_key, "canaries", params["seed"], params["version_hint"])
    return Canaries.draw(
        rng,
        labels,
        secret=int(spec.get("secret", 0)),
        copies=1 if dp else int(spec.get("copies", 1)),
        audit=int(spec.get("audit", 0)),
    )


def _is_default_learner(config: Any, adapter: Any) -> bool:
    """Whether a head was fitted the way the platform's default learner fits one: the
    membership gate's baseline is then the candidate itself."""
    return bool(
        config.tuning == "auto"
        and adapter.hidden == 0
        and config.l2_choice == "best"
        and config.max_c is None
        and config.objective == "log_loss"
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


def _embed_through(
    cache: EmbeddingCache,
    keys: list[bytes],
    texts: list[str],
    encoder: FrozenEncoder,
    max_tokens: int,
    send: Send,
) -> tuple[npt.NDArray[np.float32], int]:
    """Embeddings of ``texts`` (one per key, in order), computing and caching only those the
    cache lacks; returns the matrix and how many were computed. The caller saves the cache."""
    cached = cache.get_many(keys)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    for start in range(0, len(missing), 256):
        rows = missing[start : start + 256]
        vectors = encoder.embed([texts[i] for i in rows], max_length=max_tokens)
        cache.put_many([keys[i] for i in rows], vectors)
        send("embed", {"done": start + len(rows), "of": len(missing)})
    cached = cache.get_many(keys)
    return np.stack([cached[k] for k in keys]), len(missing)


class _NothingToTry(Exception):
    """A probe found nothing to attack: reported as not blocked, never as a pass."""


class NothingToLearn(InvalidInput):
    """A round found no labelled training record new since its parent."""


# -- evaluation ----------------------------------------------------------------------------


def _evaluate(job: WorkerJob, send: Send) -> dict[str, Any]:
    """Metrics of each given version on the tenant's labelled eval records up to the cutoff,
    overall and per window (``earlier``: at or before ``split``; ``new``: after it)."""
    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import Features, load_adapter
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.learning.metrics import classification_metrics
    from silolearn.storage.scope import Purpose

    config = TrainingConfig.model_validate(job.training)
    params = job.params
    cutoff, split = str(params["cutoff"]), params.get("split")
    encoder = _encoder(job)
    ctx = WorkerContext(job, Purpose.EVALUATION)
    try:
        scope = ctx.scope
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
            embeddings, _ = _embed_through(cache, keys, texts, encoder, config.max_tokens, send)
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
    finally:
        ctx.close()


# -- the gates --------------------------------------------------------------------------


def _gates(job: WorkerJob, send: Send) -> dict[str, Any]:
    """The evidence the gates judge a version by, from an ``AUDIT`` scope of the tenant:
    quality and forgetting (paired bootstrap against the active version, or the constant
    answer when there is none), the golden suite, membership inference, canary exposure
    (inserted canaries and never-inserted controls of the same labels) and the one-run
    privacy audit. Numbers only."""
    from silolearn.config import GatePolicy, TrainingConfig
    from silolearn.learning.adapters import Features, HeadAdapter, load_adapter
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.learning.metrics import classification_metrics
    from silolearn.storage.scope import Purpose
    from silolearn.validation import evidence
    from silolearn.validation.canaries import Canaries, alternatives_pool

    config = TrainingConfig.model_validate(job.training)
    params = job.params
    policy = GatePolicy.model_validate(params["policy"])
    cutoff, split = str(params["cutoff"]), params.get("split")
    t_load = time.perf_counter()
    encoder = _encoder(job)
    process = {
        "warm": bool(_WARM.get("used")),
        "warm_seconds": _WARM.get("seconds"),
        "warm_error": _WARM.get("error"),
        "load_seconds": round(time.perf_counter() - t_load, 4),
        "threads_at_sandbox": _SANDBOX.get("threads"),
    }
    ctx = WorkerContext(job, Purpose.AUDIT)
    timings: dict[str, float] = {}
    try:
        scope = ctx.scope
        rng = np.random.default_rng(int(params["seed"]))
        eval_cache = EmbeddingCache(
            scope, encoder.sha256, namespace="eval/embeddings", max_tokens=config.max_tokens
        )
        train_cache = EmbeddingCache(scope, encoder.sha256, max_tokens=config.max_tokens)

        def load(meta: dict[str, Any]) -> evidence.Model:
            data = scope.blobs.get(f"run/{meta['run_id']}/adapter")
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise IntegrityError(f"adapter v{meta['version']} does not match its SHA-256")
            return evidence.Model(load_adapter(data, encoder=encoder), int(meta["version"]))

        candidate = load(params["candidate"])
        active = None if params.get("active") is None else load(params["active"])
        needs_text = any(m.adapter.needs_text for m in (candidate, active) if m is not None)

        # a LoRA candidate reads texts while the head it is compared with reads embeddings:
        # features carry both whenever either model needs texts
        def features(stored: list[Any], cache: EmbeddingCache) -> Features:
            texts = [s.record.text for s in stored]
            if not stored:
                empty = np.zeros((0, 384), dtype=np.float32)
                return Features(texts=texts if needs_text else None, embeddings=empty)
            keys = [scope.record_id_hash(s.record) for s in stored]
            matrix, _ = _embed_through(cache, keys, texts, encoder, config.max_tokens, send)
            return Features(texts=texts if needs_text else None, embeddings=matrix)

        def synthetic(texts: list[str]) -> Features:
            return Features(
                texts=texts if needs_text else None,
                embeddings=encoder.embed(texts, max_length=config.max_tokens),
            )

        # the canary alternatives are a fixed sample per tenant: embedded once, kept with
        # the evaluator's cache (synthetic sequences, none of them the tenant's data)
        pool_cache = EmbeddingCache(
            scope,
            encoder.sha256,
            namespace="eval/canary-alternatives",
            max_tokens=config.max_tokens,
        )

        def pool_features(texts: list[str]) -> Features:
            keys = [hashlib.sha256(t.encode()).digest() for t in texts]
            matrix, _ = _embed_through(pool_cache, keys, texts, encoder, config.max_tokens, send)
            pool_cache.save()
            return Features(embeddings=matrix)

        def subset(feats: Features, rows: npt.NDArray[np.int64]) -> Features:
            return Features(
                texts=None if feats.texts is None else [feats.texts[int(i)] for i in rows],
                embeddings=None if feats.embeddings is None else feats.embeddings[rows],
            )

        def predict(model: evidence.Model, feats: Features) -> list[str]:
            if len(feats) == 0:
                return []
            return [model.labels[int(i)] for i in model.log_proba(feats).argmax(axis=1)]

        out: dict[str, Any] = {"candidate": candidate.version, "process": process}
        t0 = time.perf_counter()
        stored = [s for s in scope.eval.read(until=cutoff) if s.record.label is not None]
        eval_feats = features(stored, eval_cache)
        truth = [str(s.record.label) for s in stored]
        cand_pred = predict(candidate, eval_feats)
        act_pred = None if active is None else predict(active, eval_feats)
        windows = {"all": list(range(len(stored)))}
        if split is not None:
            windows["earlier"] = [i for i, s in enumerate(stored) if s.record.timestamp <= split]
            windows["new"] = [i for i, s in enumerate(stored) if s.record.timestamp > split]
        versions: dict[str, Any] = {}
        for model, pred in ((candidate, cand_pred), (active, act_pred)):
            if model is None or pred is None:
                continue
            metrics = {
                name: classification_metrics([truth[i] for i in rows], [pred[i] for i in rows])
                for name, rows in windows.items()
            }
            versions[str(model.version)] = {
                **metrics["all"],
                "windows": {k: v for k, v in metrics.items() if k != "all"},
            }
        out["versions"] = versions
        out["eval_records"] = len(stored)
        out["window"] = {
            "cutoff": cutoff,
            "split": split,
            "first": min((s.record.timestamp for s in stored), default=None),
            "last": max((s.record.timestamp for s in stored), default=None),
        }
        for name, rows in (("quality", windows["all"]), ("forgetting", windows.get("earlier"))):
            if rows is None:
                continue
            out[name] = evidence.paired_bootstrap(
                [truth[i] for i in rows],
                [cand_pred[i] for i in rows],
                None if act_pred is None else [act_pred[i] for i in rows],
                replicates=policy.bootstrap,
                confidence=policy.confidence,
                rng=rng,
            )
        timings["quality"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        golden = [s for s in scope.eval.golden() if s.record.label is not None]
        golden_pred = predict(candidate, features(golden, eval_cache))
        wrong = [
            s.seq for s, p in zip(golden, golden_pred, strict=True) if p != str(s.record.label)
        ]
        out["golden"] = {"n": len(golden), "failed": len(wrong), "failed_seqs": wrong[:100]}
        timings["golden"] = time.perf_counter() - t0
        with contextlib.suppress(AccessDenied):
            eval_cache.save()

        if policy.membership and len(stored) < policy.membership_min_nonmembers:
            out["membership"] = {"members": None, "nonmembers": len(stored), "attacks": {}}
        elif policy.membership:
            t0 = time.perf_counter()
            trained = {
                str(pair[1])
                for pair in json.loads(
                    scope.blobs.get(f"run/{params['candidate']['run_id']}/records")
                )
            }
            pool = [
                s
                for s in scope.train.read(until=cutoff)
                if s.record.id in trained and s.record.label is not None
            ]
            cap = (
                policy.membership_members if not needs_text else min(policy.membership_members, 200)
            )
            trained_pool = pool
            if len(pool) > cap:
                pool = [pool[int(i)] for i in np.sort(rng.choice(len(pool), cap, replace=False))]
            reference = None
            baseline = None
            if isinstance(candidate.adapter, HeadAdapter):
                head = candidate.adapter
                ref_config = TrainingConfig.model_validate(
                    params["candidate"].get("config") or job.training
                )

                def reference(feats: Features, labels: list[str], seed: int) -> evidence.Model:
                    ref = HeadAdapter(
                        sorted(set(labels)),
                        hidden=ref_config.head_hidden,
                        dim=head.dim,
                        seed=seed,
                        trunk=head.trunk,
                    )
                    ref.fit(feats, labels, config=ref_config, seed=seed)
                    return evidence.Model(ref, -1)

                default = TrainingConfig()
                if _is_default_learner(ref_config, head):
                    # the candidate is the default learner: its own attack is the baseline
                    def baseline() -> tuple[evidence.Model, str]:
                        return candidate, "the candidate itself"
                else:

                    def baseline() -> tuple[evidence.Model, str]:
                        labels = [str(s.record.label) for s in trained_pool]
                        ref = HeadAdapter(
                            sorted(set(labels)), hidden=0, dim=head.dim, trunk=head.trunk
                        )
                        texts = [s.record.text for s in trained_pool]
                        feats = features(trained_pool, train_cache)
                        ref.fit(
                            Features(texts=texts, embeddings=feats.embeddings),
                            labels,
                            config=default,
                            seed=0,
                        )
                        return evidence.Model(ref, -1), "tuned linear head refitted"

            out["membership"] = evidence.membership(
                candidate,
                (features(pool, train_cache), [str(s.record.label) for s in pool]),
                (eval_feats, truth),
                train_reference=reference,
                references=policy.membership_references,
                replicates=policy.bootstrap,
                confidence=policy.confidence,
                rng=rng,
                subset=subset,
                baseline=baseline,
            )
            timings["membership"] = time.perf_counter() - t0

        canaries = None
        with contextlib.suppress(Exception):
            canaries = Canaries.from_bytes(
                scope.blobs.get(f"run/{params['candidate']['run_id']}/canaries")
            )
        if canaries is not None and canaries.secret_texts:
            t0 = time.perf_counter()
            yardstick = alternatives_pool(job.tenant_id, policy.canary_alternatives)
            out["canaries"] = evidence.canary_exposure(
                candidate,
                synthetic,
                canaries,
                alternatives=policy.canary_alternatives,
                rng=rng,
                pool=yardstick,
                embed_pool=None if needs_text else pool_features,
            )
            timings["canaries"] = time.perf_counter() - t0
        if canaries is not None and canaries.audit_texts:
            t0 = time.perf_counter()
            out["audit"] = evidence.one_run_audit(
                candidate,
                synthetic,
                canaries,
                guess_fraction=policy.audit_guess_fraction,
                delta=float(params.get("delta") or 1e-5),
                confidence=policy.confidence,
            )
            timings["audit"] = time.perf_counter() - t0
        out["timings"] = {k: round(v, 4) for k, v in timings.items()}
        return out
    finally:
        ctx.close()


# -- the shared layer ---------------------------------------------------------------------


def _shared(job: WorkerJob, send: Send) -> dict[str, Any]:
    """One member's part of a shared-layer DP-SGD round: read and embed only this tenant's
    records, then for each step sample them (Poisson), and return the clipped gradient sum
    of the trunk and this tenant's own output rows. No noise here: the coordinator adds it
    once to the total."""
    import torch

    from silolearn.config import TrainingConfig
    from silolearn.learning.adapters import INPUT_SCALE
    from silolearn.learning.dp import DpPlan, clip_and_sum, secret_generator, softmax_xent_grad
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.storage.scope import Purpose

    config = TrainingConfig.model_validate(job.training)
    cutoff = str(job.params["cutoff"])
    encoder = _encoder(job)
    ctx = WorkerContext(job, Purpose.TRAINING)
    try:
        scope = ctx.scope
        stored = [s for s in scope.train.read(until=cutoff) if s.record.label is not None]
        labels = sorted({str(s.record.label) for s in stored})
        digests = [scope.keyed_hash("shared-label", label).hex() for label in labels]
        answer = send.ask("ready", {"records": len(stored), "labels": digests})
        plan = DpPlan.from_dict(answer["plan"])
        cache = EmbeddingCache(scope, encoder.sha256, max_tokens=config.max_tokens)
        keys = [scope.record_id_hash(s.record) for s in stored]
        texts = [s.record.text for s in stored]
        matrix, embedded = _embed_through(cache, keys, texts, encoder, config.max_tokens, send)
        cache.save()
        x = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)) * INPUT_SCALE
        index = {label: i for i, label in enumerate(labels)}
        y = torch.tensor([index[str(s.record.label)] for s in stored], dtype=torch.int64)
        params = {k: torch.from_numpy(np.asarray(v)) for k, v in answer["params"].items()}
        sampler = secret_generator()
        n = len(stored)
        C = plan.max_grad_norm
        dim = x.shape[1]
        steps = 0
        for step in range(plan.steps):
            rows = (torch.rand(n, generator=sampler) < plan.sampling_rate).nonzero().squeeze(1)
            if len(rows):
                xb = x[rows]
                with torch.no_grad():
                    pre = torch.addmm(params["trunk.bias"], xb, params["trunk.weight"].T)
                    f = torch.cat([xb, torch.relu(pre)], dim=1)
                    logits = torch.addmm(params["rows.bias"], f, params["rows.weight"].T)
                    g = softmax_xent_grad(logits, y[rows])
                    delta = (g @ params["rows.weight"][:, dim:]) * (pre > 0)
                    sums, norms = clip_and_sum([("rows", g, f), ("trunk", delta, xb)], C)
                clipped = int((norms > C).sum())
            else:
                sums = {k: torch.zeros_like(v) for k, v in params.items()}
                clipped = 0
            reply = send.ask(
                "step",
                {
                    "step": step,
                    "sums": {k: v.numpy() for k, v in sums.items()},
                    "sampled": len(rows),
                    "clipped": clipped,
                },
            )
            steps += 1
            if reply.get("done"):
                break
            params = {k: torch.from_numpy(np.asarray(v)) for k, v in reply["params"].items()}
        ids = [s.record.id for s in stored]
        ctx.audit.append(
            "shared.contribute",
            tenant=job.tenant_name,
            obj="shared",
            details={
                "records": n,
                "steps": steps,
                "records_digest": records_digest(job.tenant_id, ids),
            },
        )
        return {
            "records_digest": records_digest(job.tenant_id, ids),
            "worker_pid": os.getpid(),
            "steps": steps,
            "embedded": embedded,
            "sandbox": _SANDBOX,
        }
    finally:
        ctx.close()


# -- the isolation probe -------------------------------------------------------------------


def open_with_held_keys(job: WorkerJob, box: bytes, *, kind: str, object_id: str) -> bytes:
    """Try every key ``job`` carries on one of its tenant's ciphertexts, as a worker reading
    the database behind its scope's back would: the plaintext if one opens it, else
    ``DecryptionError`` naming the keys tried. The keys are the job's byte fields, so a
    key added to a job later is tried too."""
    from silolearn.security.envelope import binding, open_sealed

    held = {f.name: getattr(job, f.name) for f in fields(job)}
    keys = {name: value for name, value in held.items() if isinstance(value, bytes)}
    aad = binding(job.tenant_id, kind, object_id)
    for material in keys.values():
        if len(material) in (16, 24, 32):  # the AES key sizes
            with contextlib.suppress(DecryptionError):
                return open_sealed(material, box, aad, what=object_id)
    raise DecryptionError(
        f"none of the keys the worker holds ({', '.join(keys)}) opens its {kind} record",
        object=object_id,
    )


def _probe(job: WorkerJob, send: Send) -> dict[str, Any]:
    """Try, from inside a training worker of tenant A, everything I2 forbids; report and
    audit each attempt. Used by ``silolearn verify isolation`` and the I2 tests."""
    from silolearn.security.envelope import DataKey
    from silolearn.storage.scope import Purpose

    _check_base(job)
    sandbox = _SANDBOX
    ctx = WorkerContext(job, Purpose.TRAINING)
    attempts: list[dict[str, Any]] = []

    def attempt(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except _NothingToTry as exc:
            attempts.append({"attempt": name, "blocked": False, "how": f"not tried: {exc}"})
            return
        except PermissionError as exc:
            how = f"operating system: {exc.strerror}"
        except DecryptionError as exc:
            how = f"cryptography: {exc.message}"
        except AccessDenied as exc:
            how = f"capability: {exc.message}"
        except SiloError as exc:
            how = f"{exc.code}: {exc.message}"
        except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
            how = f"{type(exc).__name__}: {exc}"
        else:
            attempts.append({"attempt": name, "blocked": False, "how": "it succeeded"})
            ctx.audit.append(
                "isolation.breach", tenant=job.tenant_name, obj=name, details={"worker": True}
            )
            return
        attempts.append({"attempt": name, "blocked": True, "how": how})
        ctx.audit.append(
            "access.denied",
            tenant=job.tenant_name,
            obj=name,
            details={"worker": True, "refused_by": how.split(":")[0]},
        )

    key = DataKey(job.tenant_id, job.dek_version, job.data_key)
    conn = ctx.conn
    try:
        for other in job.params["others"]:
            other_id = str(other["id"])

            def read_records(other_id: str = other_id) -> None:
                rows = conn.execute(
                    "SELECT rid, box FROM train_records WHERE tenant_id = ? LIMIT 5", (other_id,)
                ).fetchall()
                if not rows:
                    raise _NothingToTry("the other tenant has no records")
                for rid, box in rows:
                    key.open(bytes(box), kind="train", object_id=bytes(rid).hex())

            def read_blobs(other_dir: str = str(other["blob_dir"])) -> None:
                try:
                    files = sorted(Path(other_dir).iterdir())
                except FileNotFoundError:
                    raise _NothingToTry("the other tenant has no blobs") from None
                if not files:
                    raise _NothingToTry("the other tenant has no blobs")
                row = conn.execute(
                    "SELECT object_id FROM blobs WHERE file = ?", (files[0].name,)
                ).fetchone()
                key.open(files[0].read_bytes(), kind="blob", object_id=str(row[0]))

            def open_scope(other_id: str = other_id, name: str = str(other["name"])) -> None:
                from silolearn.storage.scope import TenantRef, TenantScope

                TenantScope(
                    conn=conn,
                    audit=ctx.audit,
                    tenant=TenantRef(other_id, name),
                    data_key=key,
                    token_key=job.token_key,
                    blob_dir=Path(job.blob_dir),
                    purpose=Purpose.TRAINING,
                )

            attempt(f"read records of {other['name']}", read_records)
            attempt(f"read blobs of {other['name']}", read_blobs)
            attempt(f"open a scope of {other['name']}", open_scope)

        def read_keyring() -> None:
            from silolearn.security.keys import LocalKeyring

            ring = LocalKeyring(
                Path(job.workspace) / "keys" / "keyring.json", sealed=bool(job.params["sealed"])
            )
            for other in job.params["others"]:
                ring.token_key(str(other["id"]))

        def decrypt_own_eval_record() -> None:
            # not through the scope: a connection of its own, as any code in the worker could
            os.close(os.open(job.db_file, os.O_RDONLY))  # Landlock refuses it once it can
            raw = sqlite3.connect(job.db_file)
            try:
                row = raw.execute(
                    "SELECT rid, box FROM eval_records WHERE tenant_id = ? LIMIT 1",
                    (job.tenant_id,),
                ).fetchone()
            finally:
                raw.close()
            if row is None:
                raise _NothingToTry("the tenant has no eval records")
            open_with_held_keys(job, bytes(row[1]), kind="eval", object_id=bytes(row[0]).hex())

        attempt("read the keyring", read_keyring)
        attempt("decrypt its own eval record with the keys it holds", decrypt_own_eval_record)
        attempt("read its own eval store", lambda: ctx.scope.eval.read(limit=1))
        attempt(
            "read its own eval embeddings",
            lambda: ctx.scope.blobs.get(f"eval/embeddings/{job.base_sha256}"),
        )
    finally:
        ctx.close()
    return {"sandbox": sandbox, "attempts": attempts}


_HANDLERS: dict[str, Callable[[WorkerJob, Send], dict[str, Any]]] = {
    "train": _train,
    "evaluate": _evaluate,
    "gates": _gates,
    "probe": _probe,
    "shared": _shared,
}


def serve(channel: Channel, *, warm: Path | None = None) -> None:
    """Receive one job, run it, send its result (or the error that stopped it); with
    ``warm`` (the base model's directory), load the encoder while waiting for it."""
    if warm is not None:
        _warm(warm)
    try:
        message = channel.receive()
    except EOFError:
        return
    except ProtocolViolation as exc:
        channel.send(ErrorMessage(code=exc.code, message=exc.message, details=_plain(exc.details)))
        return
    if message is None:  # started ahead of a job that never came (its round failed first)
        return
    from silolearn.learning.adapters import deterministic_torch

    send = Link(channel)
    try:
        if not isinstance(message, JobMessage):
            raise ProtocolViolation(f"the coordinator sent a {message.type} message, not a job")
        job = read_job(message, WorkerJob)
        if job.action not in _HANDLERS:
            raise ValueError(f"unknown worker action {job.action!r}")
        _SANDBOX.clear()
        _SANDBOX.update(_sandbox(job))
        deterministic_torch()
        send("started", {"pid": os.getpid(), "warm": "encoder" in _WARM})
        result = _HANDLERS[job.action](job, send)
        channel.send(ResultMessage(action=job.action, result=result))  # type: ignore[arg-type]
    except SiloError as exc:
        channel.send(ErrorMessage(code=exc.code, message=exc.message, details=_plain(exc.details)))
    except BaseException as exc:
        channel.send(
            ErrorMessage(
                code="TrainingFailed",
                message=f"{type(exc).__name__}: {exc}",
                details={"traceback": traceback.format_exc(limit=8)},
            )
        )


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """An error's details as plain data: what JSON cannot hold becomes its ``str``."""
    plain: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(prog="silolearn-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--warm", type=Path, default=None, help="base model to load ahead")
    args = parser.parse_args()
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        serve(channel, warm=args.warm)
    finally:
        channel.close()
    # the result (or error) is sent and every store the job wrote is committed and closed:
    # skip the interpreter's teardown of torch and transformers, ~0.8 s the coordinator
    # would wait for
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
