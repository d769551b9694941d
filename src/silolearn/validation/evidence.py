"""The numbers behind the gates, computed inside one tenant's gate worker.

The gate worker holds an ``AUDIT`` scope of one tenant: it reads the tenant's training
records (the members of a membership-inference attack), its eval records (non-members, the
quality window, the probe set) and its golden suite, and the candidate's sealed canaries. It
returns numbers only, never the text of a record; ``silolearn.validation.gates`` turns them
into verdicts in the coordinator.

Non-members are the tenant's eval records up to the candidate's cutoff. They are the right
population: the gateway routes each record to eval by a keyed hash of its id, so eval and
training records are drawn from the same distribution, and I5 (with the contamination
filter) guarantees that no eval record, nor a near-duplicate of one, was ever trained on.
Reference adapters for the LiRA-offline attack are trained on them too, by two-fold cross-
fitting: the references that score a non-member never saw it, so every score is an OUT score.
Reference adapters exist only in this worker's memory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

# -- bootstrap of macro-F1 -------------------------------------------------------------------


def macro_f1_replicates(
    truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], idx: npt.NDArray[np.int64]
) -> FloatArray:
    """Macro-F1 on each row of ``idx`` (indices into the examples), averaged over the labels
    that occur in that replicate's truth or predictions, as ``classification_metrics`` does."""
    n_labels = int(max(truth.max(initial=0), predicted.max(initial=0))) + 1
    reps = idx.shape[0]
    t = truth[idx]
    p = predicted[idx]
    offset = (np.arange(reps) * n_labels)[:, None]
    size = reps * n_labels
    hit = t == p
    tp = np.bincount((t + offset)[hit], minlength=size).reshape(reps, n_labels)
    t_count = np.bincount((t + offset).ravel(), minlength=size).reshape(reps, n_labels)
    p_count = np.bincount((p + offset).ravel(), minlength=size).reshape(reps, n_labels)
    fp, fn = p_count - tp, t_count - tp
    denominator = 2 * tp + fp + fn
    occurs = denominator > 0
    f1 = np.where(occurs, 2 * tp / np.maximum(denominator, 1), 0.0)
    return np.asarray(f1.sum(axis=1) / np.maximum(occurs.sum(axis=1), 1), dtype=np.float64)


def paired_bootstrap(
    truth: Sequence[str],
    candidate: Sequence[str],
    active: Sequence[str] | None,
    *,
    replicates: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Macro-F1 and accuracy of the candidate with percentile intervals, and their paired
    differences (the same resampled records) against a yardstick: the active version, or,
    when there is none, the constant answer (``against``).

    The constant answers the most frequent label of these records (ties: the first name).
    It is the strongest constant on them for both metrics, so a candidate shown better
    than it is better than any constant; it needs no training record. ``*_sd`` is the
    bootstrap standard deviation of a difference, from which the gate estimates how many
    records would settle an interval that does not."""
    n = len(truth)
    if n == 0:
        return {"n": 0}
    names = sorted(set(truth) | set(candidate) | set(active or []))
    code = {name: i for i, name in enumerate(names)}
    t = np.array([code[x] for x in truth], dtype=np.int64)
    c = np.array([code[x] for x in candidate], dtype=np.int64)
    against = "active"
    if active is not None:
        y = np.array([code[x] for x in active], dtype=np.int64)
    else:
        against = "constant"
        y = np.full(n, int(np.bincount(t).argmax()), dtype=np.int64)
    full = np.arange(n, dtype=np.int64)[None, :]
    idx = rng.integers(0, n, size=(replicates, n), dtype=np.int64)
    tail = (1 - confidence) / 2
    cand_point = float(macro_f1_replicates(t, c, full)[0])
    other_point = float(macro_f1_replicates(t, y, full)[0])
    cand_reps = macro_f1_replicates(t, c, idx)
    diff = cand_reps - macro_f1_replicates(t, y, idx)
    hit_c, hit_y = (t == c).astype(np.float64), (t == y).astype(np.float64)
    acc_diff = (hit_c - hit_y)[idx].mean(axis=1)
    return {
        "n": n,
        "against": against,
        "macro_f1": round(cand_point, 6),
        "macro_f1_ci": _interval(cand_reps, tail),
        "accuracy": round(float(hit_c.mean()), 6),
        f"{against}_macro_f1": round(other_point, 6),
        f"{against}_accuracy": round(float(hit_y.mean()), 6),
        "difference": round(cand_point - other_point, 6),
        "difference_ci": _interval(diff, tail),
        "difference_sd": round(float(diff.std()), 6),
        "accuracy_difference": round(float(hit_c.mean() - hit_y.mean()), 6),
        "accuracy_difference_ci": _interval(acc_diff, tail),
        "accuracy_difference_sd": round(float(acc_diff.std()), 6),
    }


def _interval(values: FloatArray, tail: float) -> list[float]:
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return [round(float(lo), 6), round(float(hi), 6)]


# -- predictions ---------------------------------------------------------------------------


@dataclass
class Model:
    """An adapter loaded in the gate worker, with a log-probability function."""

    adapter: Any
    version: int

    @property
    def labels(self) -> list[str]:
        return list(self.adapter.labels)

    def log_proba(self, features: Any) -> FloatArray:
        """Per-example log-probabilities, in float64 from the logits where the adapter is a
        head (no float32 underflow of a confident prediction)."""
        import torch

        from silolearn.learning.adapters import HeadAdapter

        if isinstance(self.adapter, HeadAdapter):
            if len(features) == 0:
                return np.zeros((0, len(self.labels)))
            x = self.adapter.inputs(features.embeddings)
            with torch.inference_mode():
                logits = self.adapter.head(x).double()
                return np.asarray(torch.log_softmax(logits, dim=1).numpy(), dtype=np.float64)
        proba = np.asarray(self.adapter.predict_proba(features), dtype=np.float64)
        return np.log(np.clip(proba, 1e-300, 1.0))

    def label_codes(self, labels: Sequence[str]) -> npt.NDArray[np.int64]:
        """Index of each label in this model's label space; -1 for a label it never saw."""
        index = {name: i for i, name in enumerate(self.labels)}
        return np.array([index.get(y, -1) for y in labels], dtype=np.int64)


def losses_of(log_proba: FloatArray, codes: npt.NDArray[np.int64]) -> FloatArray:
    return np.asarray(-log_proba[np.arange(len(codes)), codes], dtype=np.float64)


# -- membership inference ----------------------------------------------------------------


def membership(
    model: Model,
    members: tuple[Any, list[str]],
    nonmembers: tuple[Any, list[str]],
    *,
    train_reference: Callable[[Any, list[str], int], Model] | None,
    references: int,
    replicates: int,
    confidence: float,
    rng: np.random.Generator,
    subset: Callable[[Any, npt.NDArray[np.int64]], Any],
    baseline: Callable[[], tuple[Model, str]] | None = None,
) -> dict[str, Any]:
    """The loss-threshold attack and LiRA offline against ``model``: AUC and TPR at 1% and
    0.1% FPR with bootstrap intervals, for members (a sample of its training records) against
    non-members (eval records). ``train_reference(features, labels, seed)`` trains one
    reference adapter; ``subset(features, rows)`` selects rows of features."""
    from silolearn.validation.attacks import (
        attack_metrics,
        lira_offline_scores,
        logit_confidence,
        loss_threshold_scores,
    )

    t0 = time.perf_counter()
    m_feats, m_labels = members
    n_feats, n_labels = nonmembers
    m_codes, n_codes = model.label_codes(m_labels), model.label_codes(n_labels)
    # a non-member whose label the model cannot predict is not comparable: left out, counted
    m_keep = np.flatnonzero(m_codes >= 0)
    n_keep = np.flatnonzero(n_codes >= 0)
    m_feats, m_codes = subset(m_feats, m_keep), m_codes[m_keep]
    n_feats, n_codes = subset(n_feats, n_keep), n_codes[n_keep]
    out: dict[str, Any] = {
        "members": len(m_codes),
        "nonmembers": len(n_codes),
        "nonmember_source": "eval records up to the cutoff (never trained on, I5)",
        "left_out_unseen_label": int(len(m_labels) - len(m_keep) + len(n_labels) - len(n_keep)),
        "attacks": {},
    }
    if len(m_codes) < 2 or len(n_codes) < 2:
        out["reason"] = "fewer than 2 members or non-members"
        return out
    m_lp, n_lp = model.log_proba(m_feats), model.log_proba(n_feats)
    m_loss, n_loss = losses_of(m_lp, m_codes), losses_of(n_lp, n_codes)
    loss_attack = attack_metrics(
        loss_threshold_scores(m_loss),
        loss_threshold_scores(n_loss),
        n_bootstrap=replicates,
        confidence=confidence,
        rng=rng,
    ).to_dict()
    out["attacks"]["loss"] = loss_attack
    out["mean_loss"] = {"members": float(m_loss.mean()), "nonmembers": float(n_loss.mean())}
    if baseline is not None:
        # the same attack on the platform's default learner fitted to the same records: the
        # generalisation gap any well-regularised model of this data shows
        from silolearn.validation.attacks import roc_auc

        reference, learner = baseline()
        b_m = _reference_losses(reference, model, m_feats, m_codes)
        b_n = _reference_losses(reference, model, n_feats, n_codes)
        base_auc = roc_auc(loss_threshold_scores(b_m), loss_threshold_scores(b_n))
        out["baseline"] = {
            "learner": learner,
            "auc": round(base_auc, 6),
            "excess": round(float(loss_attack["auc"]) - base_auc, 6),
        }
    if train_reference is not None and references >= 2 and len(n_codes) >= 8:
        # two folds of the non-members; each fold's references score the other fold, and
        # every member is scored by all of them (no reference trained on any member)
        order = rng.permutation(len(n_codes))
        folds = [np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])]
        per_fold = max(1, references // 2)
        m_phi_refs: list[FloatArray] = []
        n_phi_refs = np.zeros((per_fold, len(n_codes)))
        names = [model.labels[int(i)] for i in n_codes]
        for f, fold in enumerate(folds):
            other = folds[1 - f]
            for r in range(per_fold):
                boot = fold[rng.integers(0, len(fold), size=len(fold))]
                ref = train_reference(
                    subset(n_feats, boot), [names[int(i)] for i in boot], 1000 * f + r
                )
                ref_m = _phi(ref, model, m_feats, m_codes)
                m_phi_refs.append(ref_m)
                n_phi_refs[r, other] = _phi(ref, model, subset(n_feats, other), n_codes[other])
        m_phi = logit_confidence(m_lp, m_codes)
        n_phi = logit_confidence(n_lp, n_codes)
        lira = attack_metrics(
            lira_offline_scores(m_phi, np.stack(m_phi_refs), global_variance=True),
            lira_offline_scores(n_phi, n_phi_refs, global_variance=True),
            n_bootstrap=replicates,
            confidence=confidence,
            rng=rng,
        ).to_dict()
        lira["references"] = 2 * per_fold
        out["attacks"]["lira_offline"] = lira
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def _reference_losses(
    ref: Model, model: Model, feats: Any, codes: npt.NDArray[np.int64]
) -> FloatArray:
    """The reference's loss on the target model's labels (a label it never saw: the
    largest loss, 30 nats)."""
    lp = ref.log_proba(feats)
    mapped = ref.label_codes([model.labels[int(i)] for i in codes])
    out = np.full(len(codes), 30.0)
    seen = mapped >= 0
    if seen.any():
        out[seen] = losses_of(lp[seen], mapped[seen])
    return out


def _phi(ref: Model, model: Model, feats: Any, codes: npt.NDArray[np.int64]) -> FloatArray:
    """Logit-scaled confidence of the reference on the target model's labels (a label the
    reference never saw gets its lowest confidence)."""
    from silolearn.validation.attacks import logit_confidence

    lp = ref.log_proba(feats)
    mapped = ref.label_codes([model.labels[int(i)] for i in codes])
    out = np.full(len(codes), -30.0)
    seen = mapped >= 0
    if seen.any():
        out[seen] = logit_confidence(lp[seen], mapped[seen])
    return out


# -- canaries -------------------------------------------------------------------------------


def canary_exposure(
    model: Model,
    embed: Callable[[list[str]], Any],
    canaries: Any,
    *,
    alternatives: int,
    rng: np.random.Generator,
    pool: Sequence[str] | None = None,
    embed_pool: Callable[[list[str]], Any] | None = None,
    baseline: Callable[[], tuple[Model, str]] | None = None,
) -> dict[str, Any]:
    """Secret Sharer exposure of each inserted canary: its confidence in its label ranked
    among ``alternatives`` sequences sampled uniformly from the same template space (scored
    with the canary's label) and extrapolated to the whole space by a fitted tail; whether it
    outranks every sampled alternative; the same for as many never-inserted control
    sequences with the same labels, which show what no memorisation looks like in this very
    run (the gate tests the inserted canaries against them).

    ``pool``: a fixed uniform sample of the space to use as the alternatives (its first
    ``alternatives`` sequences that are not among this run's canaries), featurised by
    ``embed_pool`` (which may cache); otherwise a fresh sample is drawn from ``rng``.
    ``baseline()``: the platform's default learner fitted to the same training rows, canaries
    included; its inserted canaries' exposure against the same alternatives is what any
    normal model of this data shows (``baseline`` in the result)."""
    from silolearn.validation.canaries import SPACE_SIZE, sample_texts

    t0 = time.perf_counter()
    inserted = list(canaries.secret_texts)
    taken = set(inserted) | set(canaries.audit_texts)
    if pool is None:
        controls = sample_texts(rng, len(inserted), exclude=taken)
        alts = sample_texts(rng, alternatives, exclude=taken | set(controls))
    else:
        alts = [t for t in pool if t not in taken][:alternatives]
        controls = sample_texts(rng, len(inserted), exclude=taken | set(pool))
    # each control carries the label of one inserted canary: both are scored against the
    # same label's alternatives, so what the label space does to a random sequence (one
    # label's region may hold most of the template's sequences) is the same on both sides
    control_labels = list(canaries.secret_labels)
    k = len(inserted)
    lp = model.log_proba(embed(inserted + controls))
    alt_feats = (embed_pool or embed)(alts)
    alt_lp = model.log_proba(alt_feats)
    secret = _exposures(model, lp[:k], alt_lp, list(canaries.secret_labels))
    control = _exposures(model, lp[k:], alt_lp, control_labels)
    out: dict[str, Any] = {
        "canaries": k,
        "copies": canaries.copies,
        "alternatives": len(alts),
        "space_bits": round(float(np.log2(float(SPACE_SIZE))), 3),
        "score": "logit-scaled confidence of the canary's label, skew-normal tail fit",
        "exposure": [round(float(r["max"]), 4) for r in secret],
        "exposure_empirical": [round(float(r["max_empirical"]), 4) for r in secret],
        "outranks_all": [r["outranks_all"] for r in secret],
        "max_exposure": _top(secret),
        "max_exposure_outranking": _top(secret, outranking=True),
        "control_exposure": [round(float(r["max"]), 4) for r in control],
        "max_control_exposure": _top(control),
        "max_control_exposure_outranking": _top(control, outranking=True),
    }
    if baseline is not None and k:
        reference, learner = baseline()
        found = _exposures(
            reference,
            reference.log_proba(embed(inserted)),
            reference.log_proba(alt_feats),
            list(canaries.secret_labels),
        )
        out["baseline"] = {
            "learner": learner,
            "exposure": [round(float(r["max"]), 4) for r in found],
            "max_exposure": _top(found),
            "excess": round(out["max_exposure"] - _top(found), 4),
        }
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def _exposures(
    model: Model, rows: FloatArray, alt_lp: FloatArray, labels: list[str]
) -> list[dict[str, Any]]:
    """Each row's exposure in its label against the alternatives' (``rows`` and ``alt_lp``
    are log-probabilities of ``model``); one tail fit per label: the alternatives are scored
    with the canary's label, so canaries sharing a label share the fitted distribution."""
    from silolearn.validation.attacks import exposure, logit_confidence
    from silolearn.validation.canaries import SPACE_SIZE

    codes = model.label_codes(labels)
    found: list[dict[str, Any]] = [{} for _ in codes]
    for code in np.unique(codes):
        rows_of = np.flatnonzero(codes == code)
        # ranked and fitted on the logit-scaled confidence phi = log(p / (1 - p)) of the
        # canary's label (LiRA's transform: close to normal across sequences). The rank is
        # the loss rank; the fit is not: on raw losses or their logarithms the fitted tail
        # let never-inserted controls reach 14-21 bits in some runs
        phi = logit_confidence(rows[rows_of], np.full(len(rows_of), code))
        alt_phi = logit_confidence(alt_lp, np.full(len(alt_lp), code))
        report = exposure(-phi, -alt_phi, SPACE_SIZE)
        for j, i in enumerate(rows_of):
            found[int(i)] = {
                "max": report.extrapolated[j],
                "max_empirical": report.empirical[j],
                "outranks_all": bool(phi[j] > alt_phi.max()),
            }
    return found


def _top(rows: list[dict[str, Any]], *, outranking: bool = False) -> float:
    values = [float(r["max"]) for r in rows if r["outranks_all"] or not outranking]
    return round(max(values, default=0.0), 4)


def one_run_audit(
    model: Model,
    embed: Callable[[list[str]], Any],
    canaries: Any,
    *,
    guess_fraction: float,
    delta: float,
    confidence: float,
) -> dict[str, Any]:
    """The one-run audit of Steinke, Nasr and Jagielski (2023): score each audit canary by
    the model's log-probability of its label, guess the top share as included and the bottom
    share as excluded, and bound epsilon from below by the correct guesses."""
    from silolearn.validation.attacks import one_run_audit as audit

    t0 = time.perf_counter()
    m = len(canaries.audit_texts)
    lp = model.log_proba(embed(list(canaries.audit_texts)))
    codes = model.label_codes(list(canaries.audit_labels))
    scores = lp[np.arange(m), codes]
    k = max(1, round(guess_fraction * m))
    result = audit(
        scores,
        np.array(canaries.included, dtype=bool),
        k_plus=k,
        k_minus=k,
        delta=delta,
        confidence=confidence,
    ).to_dict()
    result["seconds"] = round(time.perf_counter() - t0, 4)
    return result


def probe_digest(proba: npt.NDArray[np.float32]) -> str:
    return hashlib.sha256(np.ascontiguousarray(proba, dtype=np.float32).tobytes()).hexdigest()
