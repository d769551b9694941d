"""Drift per slice: what each value of a chosen ``meta`` field of predict requests (region,
channel, product) serves, tested window by window against the version's training window.

A slice is tested only once it has served a full window (``[drift] window``: the minimum
count), and at most ``slice_max_values`` values per field are followed (the first seen).
Each full window of a slice gets the aggregate's window tests: its embeddings by the MMD
with a permutation p-value (``drift.mmd_test``; the aggregate's online test needs a
calibration per reference and sees every item, a slice's items come apart) and its
predicted labels by the chi-square permutation test (``drift.label_test``), each at level
``window / (ert x families)``: the budget of each test is shared equally between the
aggregate and each slice field, and an item falls in at most one slice of a field, so
slices do not multiply false alarms.

What a slice is compared with: the reference records of the same slice (the training
records sampled for the reference whose ``meta`` has the same value) when they are at least
a window, so a region that always differed from the whole is compared with itself; else
the whole reference, and the evidence says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from silolearn.monitoring.drift import WindowTest, label_test, level, mmd_test, permutations_for
from silolearn.monitoring.signals import Signals
from silolearn.monitoring.slices import slice_value

SLICE_REFERENCE, WHOLE_REFERENCE = "slice", "training window"


@dataclass
class _Pending:
    """One slice's items not yet tested."""

    rows: list[npt.NDArray[np.float32]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    items: int = 0
    windows: int = 0
    started: int = 0
    """The aggregate's items served when this window began."""


@dataclass(frozen=True, slots=True)
class SliceWindow:
    """A full window of one slice, ready for the tests."""

    field: str
    value: str
    embeddings: npt.NDArray[np.float32] | None
    labels: list[str]
    started: int


class SliceWindows:
    """The windows of every followed slice of one version, filled as it serves.

    >>> windows = SliceWindows(("region",), max_values=2, window=3)
    >>> full = windows.add([{"region": "north"}] * 4 + [{"region": "south"}], None, list("aaaab"),
    ...                    served=0)
    >>> [(w.value, w.labels) for w in full]
    [('north', ['a', 'a', 'a'])]
    >>> _ = windows.add([{"region": "east"}], None, ["a"], served=5)  # a third value: not followed
    >>> sorted(windows.pending["region"])
    ['north', 'south']
    """

    def __init__(self, fields: Sequence[str], *, max_values: int, window: int) -> None:
        self.fields = tuple(fields)
        self.max_values = max_values
        self.window = window
        self.pending: dict[str, dict[str, _Pending]] = {f: {} for f in self.fields}

    def add(
        self,
        metas: Sequence[Mapping[str, Any]],
        embeddings: npt.NDArray[np.float32] | None,
        labels: Sequence[str],
        *,
        served: int,
    ) -> list[SliceWindow]:
        """Add a batch (``served``: the aggregate's items before it); the windows it fills."""
        full = []
        for i, (meta, label) in enumerate(zip(metas, labels, strict=True)):
            for name in self.fields:
                value = slice_value(meta, name)
                if value is None:
                    continue
                values = self.pending[name]
                if value not in values:
                    if len(values) >= self.max_values:
                        continue
                    values[value] = _Pending()
                slot = values[value]
                if not slot.labels:
                    slot.started = served + i
                slot.labels.append(label)
                slot.items += 1
                if embeddings is not None:
                    slot.rows.append(embeddings[i])
                if len(slot.labels) == self.window:
                    rows = np.stack(slot.rows) if len(slot.rows) == self.window else None
                    full.append(SliceWindow(name, value, rows, slot.labels, slot.started))
                    slot.rows, slot.labels = [], []
                    slot.windows += 1
        return full


@dataclass(frozen=True, slots=True)
class SliceReference:
    """What a slice's windows are compared with."""

    embeddings: npt.NDArray[np.float32] | None
    predicted: list[str]
    source: str


def slice_reference(
    embeddings: npt.NDArray[np.float32] | None,
    predicted: list[str],
    metas: Sequence[Mapping[str, Any]],
    predicted_rows: Sequence[str | None],
    *,
    name: str,
    value: str,
    window: int,
) -> SliceReference:
    """The reference rows of the slice when they are at least a window (their embeddings,
    and the out-of-fold predicted labels of those of them the round predicted out of fold),
    else the whole reference.

    >>> rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    >>> metas = [{"region": "north"}, {"region": "north"}, {"region": "south"}, {}]
    >>> own = slice_reference(rows, list("abcd"), metas, ["x", "y", "z", None],
    ...                       name="region", value="north", window=2)
    >>> own.source, own.embeddings.tolist(), own.predicted
    ('slice', [[0.0, 1.0], [2.0, 3.0]], ['x', 'y'])
    >>> slice_reference(rows, list("abcd"), metas, ["x", "y", "z", None],
    ...                 name="region", value="south", window=2).source
    'training window'
    """
    rows = [i for i, meta in enumerate(metas) if slice_value(meta, name) == value]
    if len(rows) < window:
        return SliceReference(embeddings, predicted, WHOLE_REFERENCE)
    own = [p for i in rows if (p := predicted_rows[i]) is not None]
    return SliceReference(
        None if embeddings is None else embeddings[rows],
        own if len(own) >= window else predicted,
        SLICE_REFERENCE,
    )


def window_tests(
    reference: SliceReference,
    window: SliceWindow,
    *,
    ert: float,
    permutations: int,
    seed: int,
) -> list[tuple[str, WindowTest]]:
    """The slice window's tests, ``("embedding" | "prediction", result)``, each at level
    ``window / ert`` (the caller's ``ert`` is already the slice family's share). A window's
    p-value far above the level is not refined further: only the decision needs all the
    permutations."""
    alpha = level(len(window.labels), ert)
    count = permutations_for(alpha, permutations)
    tests = []
    if reference.embeddings is not None and window.embeddings is not None:
        tests.append(
            (
                "embedding",
                mmd_test(
                    reference.embeddings,
                    window.embeddings,
                    alpha=alpha,
                    permutations=count,
                    seed=seed,
                    decide_only=True,
                ),
            )
        )
    if reference.predicted:
        result = label_test(
            reference.predicted,
            window.labels,
            alpha=alpha,
            permutations=count,
            seed=seed,
            decide_only=True,
        )
        tests.append(("prediction", result))
    return tests


SLICE_SCAN = 500
"""Newest slice signals read for the view's latest result per slice and test."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def slice_view(signals: Signals, tenant: str) -> list[dict[str, Any]]:
    """The newest result of each slice's tests (of the newest version that tested it), with
    the windows tested and alarms among the newest ``SLICE_SCAN`` slice signals."""
    found = signals.since(
        tenant, _EPOCH, confirmed=False, kinds=frozenset({"slice.drift"}), newest=SLICE_SCAN
    )
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for signal in found:  # oldest first: the newest ends up kept
        e = signal.evidence
        key = (str(e["field"]), str(e["value"]), str(e["test"]))
        row = rows.get(key, {"windows": 0, "alarms": 0})
        rows[key] = {
            "field": key[0],
            "value": key[1],
            "test": key[2],
            "version": signal.version,
            "at": signal.to_dict()["at"],
            "p_value": e["p_value"],
            "alpha": e["alpha"],
            "drift": e["drift"],
            "confirmed": signal.confirmed,
            "aggregate_holds": e["aggregate_holds"],
            "reference": e["reference"],
            "windows": row["windows"] + 1,
            "alarms": row["alarms"] + int(signal.confirmed),
        }
    return [rows[key] for key in sorted(rows)]
