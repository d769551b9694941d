"""The prediction-drift test's reference, before and after (issue 17): false alarms on
in-control traffic and detection of a real shift, on the demo's health-wire data.

The tenant learns its first version, through the product path, from the demo's 400
health-news tweets of the first half of 2013 (``demo.days.streams``); the version then
answers ``--served`` held-out tweets of the same period, in random order (in-control
traffic), and ``--shifted`` tweets of mid-2014 on (a later period: outlets come and go).
Each window of predicted labels is tested by ``monitoring.drift.label_test`` against two
references, on the same windows:

- before: the version's answers on a seeded sample of its own training texts (what the
  drift monitor used to keep);
- after: its round's out-of-fold predictions (what ``DriftMonitor.reference`` keeps now).

A correct test alarms on at most its level's share of the in-control windows.

    python benchmarks/drift_reference.py [--served 6000] [--shifted 1000] [--workspace DIR]

(2,000 permutations per test by default.)
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silolearn import Workspace
from silolearn.demo.days import WIRE, streams
from silolearn.ingest.gateway import Gateway
from silolearn.monitoring.drift import label_test
from silolearn.monitoring.watch import DriftMonitor
from silolearn.storage.scope import Purpose

WINDOWS = (100, 200, 400)
LEVELS = (0.01, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--served", type=int, default=6000)
    parser.add_argument("--shifted", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=2000)
    parser.add_argument("--workspace", type=Path, default=None)
    args = parser.parse_args()
    path = args.workspace or Path(tempfile.mkdtemp()) / "ws"
    data = streams()
    if not path.exists():
        with Workspace.init(path, actor="benchmark") as ws:
            ws.create_tenant(WIRE)
            Gateway(ws).ingest(WIRE, data["wire_train"])
            assert ws.tenant(WIRE).train(seed=0).status == "active"
    with Workspace.open(path, actor="benchmark") as ws:
        predictor = ws.predictor()

        def answer(
            tenant: str, version: int, texts: Sequence[str]
        ) -> tuple[int, npt.NDArray[np.float32], list[str]]:
            out = []
            for i in range(0, len(texts), 64):
                batch = predictor.answer_batch([((tenant, version), list(texts[i : i + 64]))])[0]
                assert not isinstance(batch, Exception)
                out += batch
            embeddings = np.stack([p.embedding for p in out])  # type: ignore[misc]
            return out[0].version, embeddings, [p.label for p in out]

        after = DriftMonitor(ws, answer).reference(WIRE, 1)
        scope = ws.scope(WIRE, purpose=Purpose.INGEST)
        trained = [s.record for s in scope.train.read(until=after.cutoff or None)]
        picked = random.Random(f"{WIRE}/1").sample(trained, min(600, len(trained)))
        before = answer(WIRE, 1, [r.text for r in picked])[2]
        same = random.Random(5).sample(data["wire_day1"], args.served)
        later = random.Random(6).sample(data["wire_later"], args.shifted)
        served = {
            "in-control": answer(WIRE, 1, [r["text"] for r in same])[2],
            "later period": answer(WIRE, 1, [r["text"] for r in later])[2],
        }
    print(f"reference: {len(before)} answers on training texts, {len(after.predicted)} out of fold")
    print("| traffic | window | level | reference | alarms / windows | median p |")
    print("|---|---|---|---|---|---|")
    for traffic, labels in served.items():
        for window in WINDOWS:
            for alpha in LEVELS:
                for name, reference in (("before", before), ("after", after.predicted)):
                    ps = [
                        label_test(
                            reference,
                            labels[i : i + window],
                            alpha=alpha,
                            permutations=args.permutations,
                            seed=1,
                        ).p_value
                        for i in range(0, len(labels) - window + 1, window)
                    ]
                    alarms = sum(p <= alpha for p in ps)
                    print(
                        f"| {traffic} | {window} | {alpha} | {name} | {alarms} / {len(ps)} | "
                        f"{np.median(ps):.3f} |"
                    )


if __name__ == "__main__":
    main()
