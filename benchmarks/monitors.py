"""Monitors on real streams, with planted changes and without (issue 17, acceptance 6).

The streams are real served traffic as a tenant's monitor sees it: health-news tweets of
2012 as the version's training window (its reference: 600 tweets) and as the traffic that
does not change; the planted changes switch, at item 300, to tweets of 2015 (a later
period of the same time-ordered dataset) or to film-review snippets (another source). Each
item carries the frozen encoder's embedding (silolearn's encoder, one thread, cached), the
label a classifier of the reference predicts (logistic regression on the embeddings, the
tenant's head as a stand-in), whether that was right (feedback) and its confidence.

Detectors, each at its defaults or calibrated by its own rule, none tuned to these streams:

- silolearn online MMD (``monitoring.drift.OnlineMMD``): window 50, threshold calibrated to
  ``--ert-hours`` of traffic between false alarms;
- silolearn window MMD (``monitoring.drift.mmd_test``): windows of 100, permutation p-value
  at level window / ert;
- silolearn performance CUSUM (``monitoring.performance.AccuracyChart``, when present):
  feedback right/wrong, burn-in on the reference's held-out answers, arl0 = the same ert;
- Evidently 0.7.23's embedding drift at its defaults (domain classifier, drift when its
  ROC AUC > 0.55) on the same windows of 100, run in its own environment
  (``--evidently-python``: Evidently pins plotly < 6, the project plotly 7);
- river 0.26.1's ADWIN and PageHinkley at their defaults, on the error stream (feedback) and
  on the confidence stream (no label needed).

Reported per detector: false alarms per hour of traffic on the streams without change (and
before the change of the others), detections and the median delay in items and minutes
after the change. ``--per-hour`` sets the traffic rate (served predictions per hour).

    make bench-monitors    # builds .venv-evidently first, then runs this
    python benchmarks/monitors.py [--json | --markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import _common

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import numpy as np

CHANGE_AT = 300
STREAM = 500
REFERENCE = 600
WINDOW = 100
PERIOD, LATER = "2012", "2015"


@dataclass(frozen=True)
class Stream:
    name: str
    kind: str
    """``none``, ``later`` or ``other``."""
    embeddings: np.ndarray
    predicted: list[str]
    correct: np.ndarray
    confidence: np.ndarray
    change_at: int | None


@dataclass
class Reference:
    embeddings: np.ndarray
    predicted: list[str]
    correct_held_out: np.ndarray


class Online(Protocol):
    name: str

    def start(self, reference: Reference) -> None: ...

    def update(self, stream: Stream, i: int) -> bool: ...


class Windowed(Protocol):
    name: str

    def judge(self, reference: Reference, windows: list[np.ndarray]) -> list[bool]: ...


# -- the data ----------------------------------------------------------------------------------


def _cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = root / "silolearn" / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_data(seed: int) -> dict[str, Any]:
    """The tweets of both periods and the snippets, embedded once and cached."""
    from silolearn.datasets import health_tweets, rotten_tomatoes

    tweets = health_tweets()
    early = random.Random(seed).sample([r for r in tweets if r["timestamp"][:4] == PERIOD], 1600)
    later = random.Random(seed + 1).sample([r for r in tweets if r["timestamp"][:4] == LATER], 400)
    other = random.Random(seed + 2).sample(rotten_tomatoes(), 400)
    parts = {"early": early, "later": later, "other": other}
    digest = hashlib.sha256(
        json.dumps({k: [r["id"] for r in v] for k, v in parts.items()}).encode()
    ).hexdigest()[:16]
    cached = _cache_dir() / f"monitors-{digest}.npz"
    if not cached.exists():
        import torch

        from silolearn.learning.encoder import FrozenEncoder, default_model_dir

        torch.set_num_threads(1)
        encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)
        arrays = {
            k: encoder.embed([r["text"] for r in v], max_length=128) for k, v in parts.items()
        }
        np.savez(cached, **arrays)
    with np.load(cached, allow_pickle=False) as loaded:
        return {
            k: (loaded[k].astype(np.float64), [r["label"] for r in v]) for k, v in parts.items()
        }


def build_streams(
    data: dict[str, Any], *, streams: int, seed: int
) -> tuple[Reference, list[Stream]]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    early, early_labels = data["early"]
    order = rng.permutation(len(early))
    ref_rows, pool = order[:REFERENCE], order[REFERENCE:]
    head = LogisticRegression(max_iter=2000)
    fit_rows = ref_rows[: REFERENCE // 2]
    head.fit(early[fit_rows], [early_labels[i] for i in fit_rows])
    held = ref_rows[REFERENCE // 2 :]
    reference = Reference(
        embeddings=early[ref_rows],
        predicted=list(head.predict(early[ref_rows])),
        correct_held_out=head.predict(early[held]) == np.array([early_labels[i] for i in held]),
    )

    def stream(
        name: str, kind: str, rows: np.ndarray, labels: list[str], change: int | None
    ) -> Stream:
        proba = head.predict_proba(rows)
        predicted = head.classes_[proba.argmax(1)]
        return Stream(
            name,
            kind,
            rows,
            list(predicted),
            predicted == np.array(labels),
            proba.max(1),
            change,
        )

    out = []
    for s in range(streams):
        pick = rng.permutation(pool)[:STREAM]
        out.append(stream(f"none-{s}", "none", early[pick], [early_labels[i] for i in pick], None))
    for kind in ("later", "other"):
        rows, labels = data[kind]
        for s in range(streams):
            before = rng.permutation(pool)[:CHANGE_AT]
            after = rng.permutation(len(rows))[: STREAM - CHANGE_AT]
            out.append(
                stream(
                    f"{kind}-{s}",
                    kind,
                    np.vstack([early[before], rows[after]]),
                    [early_labels[i] for i in before] + [labels[i] for i in after],
                    CHANGE_AT,
                )
            )
    return reference, out


# -- the detectors -----------------------------------------------------------------------------


@dataclass
class SiloOnlineMMD:
    ert: float
    name: str = "silolearn online MMD (window 50)"
    _detector: Any = None

    def start(self, reference: Reference) -> None:
        from silolearn.monitoring.drift import OnlineMMD

        if self._detector is None:  # calibrated once per reference, restarted per stream
            self._detector = OnlineMMD(window=50, ert=self.ert, bootstraps=400).fit(
                reference.embeddings
            )
        self._detector._restart()

    def update(self, stream: Stream, i: int) -> bool:
        return bool(self._detector.update(stream.embeddings[i]))


@dataclass
class SiloWindowMMD:
    ert: float
    name: str = "silolearn window MMD (100)"

    def judge(self, reference: Reference, windows: list[np.ndarray]) -> list[bool]:
        from silolearn.monitoring.drift import level, mmd_test

        alpha = level(WINDOW, self.ert)
        return [
            mmd_test(reference.embeddings, w, alpha=alpha, permutations=1000, seed=i).drift
            for i, w in enumerate(windows)
        ]


@dataclass
class SiloPerformance:
    ert: float
    name: str = "silolearn performance CUSUM (feedback)"
    _chart: Any = None

    def start(self, reference: Reference) -> None:
        from silolearn.config import PerformanceConfig
        from silolearn.monitoring.performance import AccuracyChart

        defaults = PerformanceConfig()  # [performance] at its defaults, arl0 the same ert
        held = reference.correct_held_out
        self._chart = AccuracyChart(
            burn_in=len(held), shift=defaults.shift, arl0=self.ert, guarantee=defaults.guarantee
        )
        for right in held:
            self._chart.update(bool(right))

    def update(self, stream: Stream, i: int) -> bool:
        return bool(self._chart.update(bool(stream.correct[i])))


@dataclass
class River:
    kind: str
    """``ADWIN`` or ``PageHinkley``."""
    signal: str
    """``errors`` or ``confidence``."""
    name: str = ""
    _detector: Any = None

    def __post_init__(self) -> None:
        self.name = f"river {self.kind} ({self.signal})"

    def start(self, reference: Reference) -> None:
        from river import drift

        self._detector = getattr(drift, self.kind)()

    def update(self, stream: Stream, i: int) -> bool:
        x = 1.0 - float(stream.correct[i]) if self.signal == "errors" else stream.confidence[i]
        self._detector.update(x)
        return bool(self._detector.drift_detected)


_EVIDENTLY: dict[str, dict[str, list[Any]]] = {}
"""The runner's verdicts on windows (by their digest): one run serves both variants."""


@dataclass
class Evidently:
    python: Path
    variant: str
    """``threshold`` (``model()``: ROC AUC > 0.55) or ``bootstrap`` (the metric's own pick
    for a reference under 1,000 rows)."""
    name: str = ""

    def __post_init__(self) -> None:
        self.name = {
            "threshold": "Evidently embeddings, model() defaults (AUC > 0.55)",
            "bootstrap": "Evidently embeddings, metric default (bootstrap)",
        }[self.variant]

    def judge(self, reference: Reference, windows: list[np.ndarray]) -> list[bool]:
        key = hashlib.sha256(np.stack(windows).tobytes()).hexdigest()
        if key not in _EVIDENTLY:
            runner = Path(__file__).with_name("_evidently_runner.py")
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "windows.npz"
                np.savez(data, reference=reference.embeddings, windows=np.stack(windows))
                done = subprocess.run(
                    [str(self.python), str(runner), str(data)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
            _EVIDENTLY[key] = json.loads(done.stdout)
        return [bool(v) for v in _EVIDENTLY[key][self.variant]]


# -- the harness -------------------------------------------------------------------------------


@dataclass
class Tally:
    name: str
    false_alarms: int = 0
    items_watched: int = 0
    detected: dict[str, int] = field(default_factory=dict)
    planted: dict[str, int] = field(default_factory=dict)
    delays: dict[str, list[int]] = field(default_factory=dict)

    def alarms(self, stream: Stream, fired: list[int]) -> None:
        """``fired``: the item indexes at which the detector alarmed."""
        end = stream.change_at if stream.change_at is not None else len(stream.embeddings)
        self.false_alarms += sum(1 for f in fired if f < end)
        self.items_watched += end
        if stream.change_at is None:
            return
        self.planted[stream.kind] = self.planted.get(stream.kind, 0) + 1
        after = [f for f in fired if f >= stream.change_at]
        if after:
            self.detected[stream.kind] = self.detected.get(stream.kind, 0) + 1
            self.delays.setdefault(stream.kind, []).append(after[0] - stream.change_at + 1)


def run_online(detector: Online, reference: Reference, streams: list[Stream]) -> Tally:
    tally = Tally(detector.name)
    for stream in streams:
        detector.start(reference)
        fired = [i for i in range(len(stream.embeddings)) if detector.update(stream, i)]
        tally.alarms(stream, fired)
    return tally


def run_windowed(detector: Windowed, reference: Reference, streams: list[Stream]) -> Tally:
    """Non-overlapping windows of ``WINDOW`` items; an alarm counts at a window's last item
    (the change, at a window boundary, is never inside a window)."""
    windows, where = [], []
    for s, stream in enumerate(streams):
        for start in range(0, len(stream.embeddings) - WINDOW + 1, WINDOW):
            windows.append(stream.embeddings[start : start + WINDOW])
            where.append((s, start + WINDOW - 1))
    verdicts = detector.judge(reference, windows)
    tally = Tally(detector.name)
    for s, stream in enumerate(streams):
        fired = [end for (t, end), v in zip(where, verdicts, strict=True) if t == s and v]
        tally.alarms(stream, fired)
    return tally


def detectors(args: argparse.Namespace) -> list[Online | Windowed]:
    ert = args.ert_hours * args.per_hour
    chosen: list[Online | Windowed] = [SiloOnlineMMD(ert), SiloWindowMMD(ert)]
    try:
        import silolearn.monitoring.performance  # noqa: F401

        chosen.append(SiloPerformance(ert))
    except ImportError:
        pass
    if Path(args.evidently_python).exists():
        chosen += [Evidently(Path(args.evidently_python), v) for v in ("threshold", "bootstrap")]
    else:
        print(
            f"no Evidently environment at {args.evidently_python}: skipped "
            "(`make bench-monitors` builds it from benchmarks/requirements-evidently.txt)",
            file=sys.stderr,
        )
    chosen += [River(k, s) for k in ("ADWIN", "PageHinkley") for s in ("errors", "confidence")]
    return chosen


def row(tally: Tally, per_hour: float) -> dict[str, Any]:
    hours = tally.items_watched / per_hour
    out: dict[str, Any] = {
        "detector": tally.name,
        "false_alarms": tally.false_alarms,
        "hours_without_change": round(hours, 1),
        "false_alarms_per_hour": round(tally.false_alarms / hours, 3),
    }
    for kind in ("later", "other"):
        delays = tally.delays.get(kind, [])
        out[f"{kind}_detected"] = f"{tally.detected.get(kind, 0)}/{tally.planted.get(kind, 0)}"
        out[f"{kind}_median_delay_items"] = float(np.median(delays)) if delays else None
        out[f"{kind}_median_delay_minutes"] = (
            round(float(np.median(delays)) / per_hour * 60, 1) if delays else None
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="streams of each kind")
    parser.add_argument("--per-hour", type=float, default=1000.0, help="served per hour")
    parser.add_argument(
        "--ert-hours", type=float, default=10.0, help="hours between false alarms (silolearn)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evidently-python",
        default=str(Path(__file__).resolve().parents[1] / ".venv-evidently" / "bin" / "python"),
        help="a Python with evidently==0.7.23 (benchmarks/requirements-evidently.txt)",
    )
    _common.add_output_flags(parser)
    args = parser.parse_args(argv)
    _common.limit_threads()
    data = embedded_data(args.seed)
    reference, streams = build_streams(data, streams=args.streams, seed=args.seed)
    rows = []
    for detector in detectors(args):
        if hasattr(detector, "judge"):
            tally = run_windowed(detector, reference, streams)  # type: ignore[arg-type]
        else:
            tally = run_online(detector, reference, streams)  # type: ignore[arg-type]
        rows.append(row(tally, args.per_hour))
        print(f"{tally.name}: done", file=sys.stderr, flush=True)
    title = (
        f"monitors on {args.streams} streams of each kind ({STREAM} items, change at "
        f"{CHANGE_AT}; {args.per_hour:g} served per hour; silolearn calibrated to one false "
        f"alarm per {args.ert_hours:g} h)"
    )
    if args.json:
        _common.print_json(
            {"title": title, "rows": rows, "machine": _common.machine(), "args": vars(args)}
        )
        return
    table = _common.Table(
        title,
        [
            "detector",
            "false alarms / h",
            "later: detected",
            "later: delay (items)",
            "other: detected",
            "other: delay (items)",
        ],
        note=(
            f"false alarms over {rows[0]['hours_without_change']} h of traffic without change "
            "(streams without change, and before the change); delay: median items from the "
            "change to the first alarm after it"
        ),
    )
    for r in rows:
        table.add(
            r["detector"],
            f"{r['false_alarms_per_hour']:.3f} ({r['false_alarms']})",
            r["later_detected"],
            _items(r["later_median_delay_items"]),
            r["other_detected"],
            _items(r["other_median_delay_items"]),
        )
    _common.render([table], markdown=args.markdown)


def _items(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    main()
