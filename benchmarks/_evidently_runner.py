"""Evidently's embedding drift on windows, run by a Python that has evidently==0.7.23
(benchmarks/requirements-evidently.txt): ``python _evidently_runner.py windows.npz``.

Reads ``reference`` (rows) and ``windows`` (windows x rows x dims), prints JSON with, per
window, the verdict of Evidently's domain-classifier method at its defaults (``model()``:
ROC AUC > 0.55) and as ``EmbeddingsDriftMetric`` picks it for a reference under 1,000 rows
(``model(bootstrap=True)``: AUC above the 95th percentile of random scores). The method is
called as the metric calls it, without the metric's t-SNE plot."""

import json
import sys

import numpy as np
import pandas as pd
from evidently.metrics.embeddings import ModelDriftMethod


def main() -> None:
    with np.load(sys.argv[1], allow_pickle=False) as data:
        reference, windows = data["reference"], data["windows"]
    columns = [f"e{i}" for i in range(reference.shape[1])]
    out: dict[str, list[object]] = {"threshold": [], "bootstrap": [], "auc": []}
    for window in windows:
        for name, method in (
            ("threshold", ModelDriftMethod()),
            ("bootstrap", ModelDriftMethod(bootstrap=True)),
        ):
            score, drift, _ = method(
                pd.DataFrame(window, columns=columns), pd.DataFrame(reference, columns=columns)
            )
            out[name].append(bool(drift))
        out["auc"].append(float(score))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
