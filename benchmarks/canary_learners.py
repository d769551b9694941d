"""Canary exposure by learner: does the canary gate reject the yardstick too, and can a
stronger L2 penalty mend what it finds?

For each zoo tenant (``silolearn.datasets.ZOO``, the sample and 80/20 split of
``benchmarks/tenants.py``) and each of ``--draws`` canary draws, 8 secret canaries (one copy
each, ``Canaries.draw`` as the training worker draws them) are added to the training
records, and each learner is fitted on the same embeddings (all-MiniLM-L6-v2 through
``FrozenEncoder``, 128 tokens):

* ``default head``: silolearn's default learner (``fit_tuned_head`` with ``TrainingConfig()``:
  L2 and class weighting chosen by grouped cross-validation);
* ``head, one SE``: the same with the strongest L2 within one standard error of the best
  (what the first remediation asks for);
* ``head, C <= 0.1``: the same with C bounded at 0.1, ten times stronger than the grid's
  strongest usual value (a remediation's deeper step);
* ``sklearn LRCV`` (``--sklearn``): ``LogisticRegressionCV(max_iter=1000)`` with
  scikit-learn's defaults, the MiniLM yardstick's learner.

Each model is judged by the product's own code: ``evidence.canary_exposure`` (the tenant's
256 fixed alternatives, 8 never-inserted controls with the canaries' labels) and
``gates.canary_gate`` at the default bound; the held-out 20% gives accuracy and macro-F1.
The canaries' labels are drawn as the product draws them, uniformly over the tenant's
labels; ``--by-frequency`` also draws them in proportion to the labels' training records
(a canary then stands for a record of the tenant, not for a label). The table gives, per
learner and draw, the top inserted canary's exposure against the top control's, the test's
p, the gate's verdict, the smallest training share of a canary's label, and the held-out
scores. Quick run: ``python benchmarks/canary_learners.py --tenants helpdesk-chat --draws 2``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from _common import Table, fmt_float, limit_threads, machine, render

# isort: split
import numpy as np
import torch

from silolearn import datasets
from silolearn.config import GatePolicy, TrainingConfig
from silolearn.learning.adapters import Features, HeadAdapter, fit_tuned_head
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.learning.tuning import content_key
from silolearn.validation import evidence
from silolearn.validation.canaries import Canaries, alternatives_pool
from silolearn.validation.gates import canary_gate
from tenants import scores, split

LEARNERS = {
    "default head": {},
    "head, one SE": {"l2_choice": "one_standard_error"},
    "head, C <= 0.1": {"max_c": 0.1},
}


class SklearnAdapter:
    """LogisticRegressionCV as ``evidence.Model`` reads an adapter: labels and probabilities."""

    def __init__(self, labels: list[str], x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]):
        from sklearn.linear_model import LogisticRegressionCV

        self.labels = labels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = LogisticRegressionCV(max_iter=1000).fit(x, y)
        self.c = float(np.ravel(self.model.C_)[0])

    def predict_proba(self, features: Features) -> np.ndarray[Any, Any]:
        return np.asarray(self.model.predict_proba(features.embeddings))


def fit(
    name: str,
    labels: list[str],
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    groups: list[str],
) -> tuple[Any, float | None]:
    if name == "sklearn LRCV":
        adapter = SklearnAdapter(labels, x, y)
        return adapter, adapter.c
    head = HeadAdapter(labels, hidden=0)
    tuned, _, _ = fit_tuned_head(
        head.head,
        head.inputs(x),
        y,
        groups,
        n_labels=len(labels),
        prior=None,
        config=TrainingConfig(**LEARNERS[name]),
        seed=0,
    )
    return head, None if tuned is None else tuned.c


def run_tenant(
    tenant: str, args: argparse.Namespace, encoder: FrozenEncoder
) -> list[dict[str, Any]]:
    rows = datasets.sample(datasets.ZOO[tenant](), args.max_records, seed=args.seed)
    train, held = split(rows, args.seed)
    labels = sorted({str(r["label"]) for r in train})
    index = {label: i for i, label in enumerate(labels)}

    def embed(texts: list[str]) -> Features:
        return Features(texts=texts, embeddings=encoder.embed(texts, max_length=128))

    base = embed([r["text"] for r in train])
    base_y = [index[str(r["label"])] for r in train]
    held_x = embed([r["text"] for r in held])
    truth = [str(r["label"]) for r in held]
    pool = alternatives_pool(f"bench-{tenant}", 256)
    pool_x = embed(pool)
    counts = np.bincount(base_y, minlength=len(labels))
    learners = [*LEARNERS, *(["sklearn LRCV"] if args.sklearn else [])]
    draws = ["uniform", *(["by frequency"] if args.by_frequency else [])]
    out = []
    for d in range(args.draws):
        for how in draws:
            rng = np.random.default_rng([args.seed, d])
            source = labels if how == "uniform" else sorted(labels[i] for i in base_y)
            canaries = Canaries.draw(rng, source, secret=8, copies=1, audit=0)
            texts, canary_labels = canaries.training_rows()
            x = np.vstack([base.embeddings, embed(texts).embeddings])
            y = np.array(base_y + [index[label] for label in canary_labels])
            groups = [content_key(r["text"]) for r in train] + [content_key(t) for t in texts]
            share = min(int(counts[index[label]]) for label in canaries.secret_labels)
            for name in learners:
                t0 = time.perf_counter()
                adapter, c = fit(name, labels, x, y, groups)
                seconds = time.perf_counter() - t0
                model = evidence.Model(adapter, -1)
                found = evidence.canary_exposure(
                    model,
                    embed,
                    canaries,
                    alternatives=256,
                    rng=rng,
                    pool=pool,
                    embed_pool=lambda _texts: pool_x,
                )
                verdict = canary_gate(found, bound=GatePolicy().canary_max_exposure)
                predicted = [labels[i] for i in model.log_proba(held_x).argmax(axis=1)]
                out.append(
                    {
                        "tenant": tenant,
                        "draw": d,
                        "labels_drawn": how,
                        "learner": name,
                        "c": c,
                        "fit_seconds": round(seconds, 2),
                        "smallest_label_records": share,
                        "max_exposure": found["max_exposure"],
                        "max_control_exposure": found["max_control_exposure"],
                        "exposure": found["exposure"],
                        "p_value": verdict.metrics["p_value"],
                        "passed": verdict.passed,
                        **scores(truth, predicted),
                    }
                )
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def table(results: list[dict[str, Any]]) -> Table:
    t = Table(
        "canary gate by learner (8 canaries, one copy each; default bound)",
        [
            "tenant",
            "draw",
            "labels",
            "learner",
            "C",
            "smallest label",
            "top canary vs control, bits",
            "p",
            "gate",
            "held-out acc / macro-F1",
        ],
        note="smallest label: training records of the rarest label a canary was given.",
    )
    for r in results:
        t.add(
            r["tenant"],
            str(r["draw"]),
            r["labels_drawn"],
            r["learner"],
            "-" if r["c"] is None else f"{r['c']:.3g}",
            str(r["smallest_label_records"]),
            f"{r['max_exposure']:.1f} vs {r['max_control_exposure']:.1f}",
            f"{r['p_value']:.2g}",
            "pass" if r["passed"] else "reject",
            f"{fmt_float(r['accuracy'], 3)} / {fmt_float(r['macro_f1'], 3)}",
        )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="helpdesk-chat,kaomoji")
    parser.add_argument("--max-records", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sklearn", action="store_true", help="also LogisticRegressionCV")
    parser.add_argument(
        "--by-frequency",
        action="store_true",
        help="also draw canary labels in proportion to training records",
    )
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    torch.set_num_threads(1)
    limit_threads()
    encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)
    results = [r for t in args.tenants.split(",") for r in run_tenant(t, args, encoder)]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    render([table(results)], markdown=args.markdown)


if __name__ == "__main__":
    main()
