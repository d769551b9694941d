"""The ``gates`` action: the evidence the gates judge a candidate by, served from an
``AUDIT`` scope of the tenant: quality and forgetting (paired bootstrap against the active
version, or the constant answer when there is none), the golden suite, membership
inference, canary exposure (inserted canaries and never-inserted controls of the same
labels) and the one-run privacy audit. Numbers only."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.errors import AccessDenied, IntegrityError
from silolearn.worker.job import WorkerJob
from silolearn.worker.process import SANDBOX, WARM, embed_through, encoder_for
from silolearn.worker.remote import RemoteScope, Send, Stored
from silolearn.worker.train import is_default_learner

if TYPE_CHECKING:
    from collections.abc import Callable

    from silolearn.learning.adapters import Features
    from silolearn.learning.encoder import EmbeddingCache
    from silolearn.validation import evidence


def gates(job: WorkerJob, send: Send) -> dict[str, Any]:
    t_load = time.perf_counter()
    encoder = encoder_for(job)
    process = {
        "warm": bool(WARM.get("used")),
        "warm_seconds": WARM.get("seconds"),
        "warm_error": WARM.get("error"),
        "load_seconds": round(time.perf_counter() - t_load, 4),
        "threads_at_sandbox": SANDBOX.get("threads"),
    }
    run = _GateRun(job, send, encoder)
    out: dict[str, Any] = {"candidate": run.candidate.version, "process": process}
    stored, eval_feats, truth = run.quality(out)
    run.golden(out)
    policy = run.policy
    if policy.membership and len(stored) < policy.membership_min_nonmembers:
        out["membership"] = {"members": None, "nonmembers": len(stored), "attacks": {}}
    elif policy.membership:
        run.membership(out, eval_feats, truth)
    run.canaries(out)
    out["timings"] = {k: round(v, 4) for k, v in run.timings.items()}
    return out


class _GateRun:
    """One candidate's gate evidence: its models, caches and features."""

    def __init__(self, job: WorkerJob, send: Send, encoder: Any) -> None:
        from silolearn.config import GatePolicy, TrainingConfig
        from silolearn.learning.encoder import EmbeddingCache

        self.job, self.send, self.encoder = job, send, encoder
        self.params = job.params
        self.config = TrainingConfig.model_validate(job.training)
        # the settings the candidate was fitted with (its run's, or the round's)
        self.candidate_config = TrainingConfig.model_validate(
            self.params["candidate"].get("config") or job.training
        )
        self.policy = GatePolicy.model_validate(self.params["policy"])
        self.cutoff, self.split = str(self.params["cutoff"]), self.params.get("split")
        self.scope = RemoteScope(send, job.tenant_name)
        self.rng = np.random.default_rng(int(self.params["seed"]))
        self.timings: dict[str, float] = {}
        tokens = self.config.max_tokens
        self.eval_cache = EmbeddingCache(
            self.scope, encoder.sha256, namespace="eval/embeddings", max_tokens=tokens
        )
        self.train_cache = EmbeddingCache(self.scope, encoder.sha256, max_tokens=tokens)
        # the canary alternatives are a fixed sample per tenant: embedded once, kept with
        # the evaluator's cache (synthetic sequences, none of them the tenant's data)
        self.pool_cache = EmbeddingCache(
            self.scope, encoder.sha256, namespace="eval/canary-alternatives", max_tokens=tokens
        )
        self.candidate = self.load(self.params["candidate"])
        self._trained: list[Stored] | None = None
        self._refitted: evidence.Model | None = None
        active = self.params.get("active")
        self.active = None if active is None else self.load(active)
        # a LoRA candidate reads texts while the head it is compared with reads embeddings:
        # features carry both whenever either model needs texts
        self.needs_text = any(
            m.adapter.needs_text for m in (self.candidate, self.active) if m is not None
        )

    # -- models and features ---------------------------------------------------------------

    def load(self, meta: dict[str, Any]) -> evidence.Model:
        from silolearn.learning.adapters import load_adapter
        from silolearn.validation import evidence

        data = self.scope.blobs.get(f"run/{meta['run_id']}/adapter")
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise IntegrityError(f"adapter v{meta['version']} does not match its SHA-256")
        return evidence.Model(load_adapter(data, encoder=self.encoder), int(meta["version"]))

    def features(self, stored: list[Stored], cache: EmbeddingCache) -> Features:
        from silolearn.learning.adapters import Features

        texts = [s.record.text for s in stored]
        if not stored:
            empty = np.zeros((0, 384), dtype=np.float32)
            return Features(texts=texts if self.needs_text else None, embeddings=empty)
        keys = [self.scope.record_id_hash(s.record) for s in stored]
        tokens = self.config.max_tokens
        matrix, _ = embed_through(cache, keys, texts, self.encoder, tokens, self.send)
        return Features(texts=texts if self.needs_text else None, embeddings=matrix)

    def synthetic(self, texts: list[str]) -> Features:
        from silolearn.learning.adapters import Features

        return Features(
            texts=texts if self.needs_text else None,
            embeddings=self.encoder.embed(texts, max_length=self.config.max_tokens),
        )

    def pool_features(self, texts: list[str]) -> Features:
        from silolearn.learning.adapters import Features

        keys = [hashlib.sha256(t.encode()).digest() for t in texts]
        tokens = self.config.max_tokens
        matrix, _ = embed_through(self.pool_cache, keys, texts, self.encoder, tokens, self.send)
        self.pool_cache.save()
        return Features(embeddings=matrix)

    @staticmethod
    def subset(feats: Features, rows: npt.NDArray[np.int64]) -> Features:
        from silolearn.learning.adapters import Features

        return Features(
            texts=None if feats.texts is None else [feats.texts[int(i)] for i in rows],
            embeddings=None if feats.embeddings is None else feats.embeddings[rows],
        )

    @staticmethod
    def predict(model: evidence.Model, feats: Features) -> list[str]:
        if len(feats) == 0:
            return []
        return [model.labels[int(i)] for i in model.log_proba(feats).argmax(axis=1)]

    # -- the evidence --------------------------------------------------------------------

    def quality(self, out: dict[str, Any]) -> tuple[list[Stored], Features, list[str]]:
        """Metrics of candidate and active on the eval records, and the paired bootstrap of
        quality (all of them) and forgetting (those at or before the split)."""
        from silolearn.learning.metrics import classification_metrics
        from silolearn.validation import evidence

        t0 = time.perf_counter()
        stored = [s for s in self.scope.eval.read(until=self.cutoff) if s.record.label is not None]
        eval_feats = self.features(stored, self.eval_cache)
        truth = [str(s.record.label) for s in stored]
        cand_pred = self.predict(self.candidate, eval_feats)
        act_pred = None if self.active is None else self.predict(self.active, eval_feats)
        windows = {"all": list(range(len(stored)))}
        if self.split is not None:
            split = self.split
            windows["earlier"] = [i for i, s in enumerate(stored) if s.record.timestamp <= split]
            windows["new"] = [i for i, s in enumerate(stored) if s.record.timestamp > split]
        versions: dict[str, Any] = {}
        for model, pred in ((self.candidate, cand_pred), (self.active, act_pred)):
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
            "cutoff": self.cutoff,
            "split": self.split,
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
                replicates=self.policy.bootstrap,
                confidence=self.policy.confidence,
                rng=self.rng,
            )
        self.timings["quality"] = time.perf_counter() - t0
        return stored, eval_feats, truth

    def golden(self, out: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        golden = [s for s in self.scope.eval.golden() if s.record.label is not None]
        golden_pred = self.predict(self.candidate, self.features(golden, self.eval_cache))
        wrong = [
            s.seq for s, p in zip(golden, golden_pred, strict=True) if p != str(s.record.label)
        ]
        out["golden"] = {"n": len(golden), "failed": len(wrong), "failed_seqs": wrong[:100]}
        self.timings["golden"] = time.perf_counter() - t0
        # a quarantined tenant is judged without growing its cache
        with contextlib.suppress(AccessDenied):
            self.eval_cache.save()

    def membership(self, out: dict[str, Any], eval_feats: Features, truth: list[str]) -> None:
        """Membership inference: the records the candidate trained on (members) against the
        eval records (non-members), with a reference model and a baseline attack."""
        from silolearn.validation import evidence

        t0 = time.perf_counter()
        policy, rng = self.policy, self.rng
        pool = self.trained_records()
        cap = (
            policy.membership_members
            if not self.needs_text
            else min(policy.membership_members, 200)
        )
        if len(pool) > cap:
            pool = [pool[int(i)] for i in np.sort(rng.choice(len(pool), cap, replace=False))]
        reference, baseline = self._references()
        out["membership"] = evidence.membership(
            self.candidate,
            (self.features(pool, self.train_cache), [str(s.record.label) for s in pool]),
            (eval_feats, truth),
            train_reference=reference,
            references=policy.membership_references,
            replicates=policy.bootstrap,
            confidence=policy.confidence,
            rng=rng,
            subset=self.subset,
            baseline=baseline,
        )
        self.timings["membership"] = time.perf_counter() - t0

    def trained_records(self) -> list[Stored]:
        """The labelled training records the candidate was fitted on (its run's record
        list), read once."""
        if self._trained is None:
            run_id = self.params["candidate"]["run_id"]
            blob = self.scope.blobs.get(f"run/{run_id}/records")
            trained = {str(pair[1]) for pair in json.loads(blob)}
            self._trained = [
                s
                for s in self.scope.train.read(until=self.cutoff)
                if s.record.id in trained and s.record.label is not None
            ]
        return self._trained

    def _references(self) -> tuple[Any, Any]:
        """The attack's reference trainer (a head like the candidate's, refitted) and its
        baseline (``baseline``); neither for a LoRA candidate."""
        from silolearn.learning.adapters import HeadAdapter
        from silolearn.validation import evidence

        if not isinstance(self.candidate.adapter, HeadAdapter):
            return None, None
        head = self.candidate.adapter
        ref_config = self.candidate_config

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

        return reference, self.baseline()

    def baseline(self) -> Callable[[], tuple[evidence.Model, str]] | None:
        """What the leakage gates compare a candidate with: the platform's default learner
        fitted to the same training rows (records and canaries). The candidate itself when
        it is that learner; otherwise a tuned linear head refitted here, once for both
        gates. None for a LoRA candidate."""
        from silolearn.config import TrainingConfig
        from silolearn.learning.adapters import Features, HeadAdapter
        from silolearn.validation import evidence

        if not isinstance(self.candidate.adapter, HeadAdapter):
            return None
        head = self.candidate.adapter
        if is_default_learner(self.candidate_config, head):

            def itself() -> tuple[evidence.Model, str]:
                return self.candidate, "the candidate itself"

            return itself

        def refitted() -> tuple[evidence.Model, str]:
            if self._refitted is None:
                t0 = time.perf_counter()
                records = self.trained_records()
                extra_texts, extra_labels = self.canary_rows()
                labels = [str(s.record.label) for s in records] + extra_labels
                feats = self.features(records, self.train_cache)
                embeddings = feats.embeddings
                if extra_texts and embeddings is not None:
                    added = self.synthetic(extra_texts).embeddings
                    embeddings = np.vstack([embeddings, np.asarray(added)])
                ref = HeadAdapter(sorted(set(labels)), hidden=0, dim=head.dim, trunk=head.trunk)
                ref.fit(
                    Features(
                        texts=[s.record.text for s in records] + extra_texts,
                        embeddings=embeddings,
                    ),
                    labels,
                    config=TrainingConfig(),
                    seed=0,
                )
                self._refitted = evidence.Model(ref, -1)
                self.timings["baseline"] = time.perf_counter() - t0
            return self._refitted, "tuned linear head refitted"

        return refitted

    def canary_rows(self) -> tuple[list[str], list[str]]:
        """The rows the run's canaries added to training (texts, labels); none without."""
        canaries = self.run_canaries()
        return ([], []) if canaries is None else canaries.training_rows()

    def run_canaries(self) -> Any:
        """The run's sealed canaries, or None when it has none."""
        from silolearn.validation.canaries import Canaries

        with contextlib.suppress(Exception):
            return Canaries.from_bytes(
                self.scope.blobs.get(f"run/{self.params['candidate']['run_id']}/canaries")
            )
        return None

    def canaries(self, out: dict[str, Any]) -> None:
        """Canary exposure of the secret canaries, and the one-run audit of the audit ones."""
        from silolearn.validation import evidence
        from silolearn.validation.canaries import alternatives_pool

        policy = self.policy
        canaries = self.run_canaries()
        if canaries is not None and canaries.secret_texts:
            t0 = time.perf_counter()
            yardstick = alternatives_pool(self.job.tenant_id, policy.canary_alternatives)
            out["canaries"] = evidence.canary_exposure(
                self.candidate,
                self.synthetic,
                canaries,
                alternatives=policy.canary_alternatives,
                rng=self.rng,
                pool=yardstick,
                embed_pool=None if self.needs_text else self.pool_features,
                baseline=self.baseline(),
            )
            self.timings["canaries"] = time.perf_counter() - t0
        if canaries is not None and canaries.audit_texts:
            t0 = time.perf_counter()
            out["audit"] = evidence.one_run_audit(
                self.candidate,
                self.synthetic,
                canaries,
                guess_fraction=policy.audit_guess_fraction,
                delta=float(self.params.get("delta") or 1e-5),
                confidence=policy.confidence,
            )
            self.timings["audit"] = time.perf_counter() - t0
