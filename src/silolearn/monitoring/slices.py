"""Slices: performance per value of chosen ``meta`` fields (region, channel, product).

Each value of each field the tenant's settings name gets its own accuracy chart
(``monitoring.performance.AccuracyChart``), armed only after its own burn-in of at least
``min_items`` feedback, so a small slice stays silent instead of noisy. A slice that
degrades while the aggregate holds raises its own alarm (signal ``slice.performance``);
when the aggregate is alarming too, the slice is evidence of the aggregate's alarm, not a
separate one. Only text-like values (strings, integers, booleans) name a slice, and at most
``max_values`` per field are followed (the first seen): a field of unbounded values (an
id, a timestamp) would make a chart per record.

The drift monitor's functions take any subset of a tenant's served items; ``select``
gives the items of one slice for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from silolearn.monitoring.performance import AccuracyChart

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SliceAlarm:
    """A slice's chart raised an alarm."""

    field: str
    value: str
    items: int
    accuracy: float
    chart: dict[str, Any]


def slice_value(meta: Mapping[str, Any], field: str) -> str | None:
    """The slice an item belongs to on ``field``: its value as text, None for a missing or
    non-categorical value."""
    value = meta.get(field)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    return None


def select(
    items: Sequence[T], metas: Sequence[Mapping[str, Any]], field: str, value: str
) -> list[T]:
    """The items whose ``meta[field]`` is ``value`` (for the drift monitor's tests)."""
    return [
        item for item, meta in zip(items, metas, strict=True) if slice_value(meta, field) == value
    ]


class SliceCharts:
    """The charts of every followed slice of one version.

    >>> charts = SliceCharts(("region",), max_values=10, chart=lambda s: AccuracyChart(
    ...     burn_in=100, shift=0.1, arl0=200, guarantee=0.9, state=s))
    >>> for i in range(300):
    ...     _ = charts.update({"region": "north"}, True if i % 5 else False)
    ...     _ = charts.update({"region": "south"}, i % 5 != 0)
    >>> alarms = [a for i in range(300) for a in charts.update({"region": "south"}, i % 2 == 0)]
    >>> {a.value for a in alarms}
    {'south'}
    """

    def __init__(
        self,
        fields: Sequence[str],
        *,
        max_values: int,
        chart: Callable[[dict[str, Any] | None], AccuracyChart],
        state: dict[str, Any] | None = None,
    ) -> None:
        self.fields = tuple(fields)
        self.max_values = max_values
        self._chart = chart
        state = state or {}
        self.slices: dict[str, dict[str, tuple[list[int], AccuracyChart]]] = {
            field: {
                value: (list(entry["tally"]), chart(entry["chart"]))
                for value, entry in state.get(field, {}).items()
            }
            for field in self.fields
        }
        """field -> value -> ([right, items], chart)."""

    def update(self, meta: Mapping[str, Any], correct: bool) -> list[SliceAlarm]:
        alarms = []
        for field in self.fields:
            value = slice_value(meta, field)
            if value is None:
                continue
            values = self.slices.setdefault(field, {})
            if value not in values:
                if len(values) >= self.max_values:
                    continue
                values[value] = ([0, 0], self._chart(None))
            tally, chart = values[value]
            tally[0] += int(correct)
            tally[1] += 1
            if chart.update(correct):
                alarms.append(
                    SliceAlarm(field, value, tally[1], tally[0] / tally[1], chart.summary())
                )
        return alarms

    def state(self) -> dict[str, Any]:
        return {
            field: {
                value: {"tally": tally, "chart": chart.state()}
                for value, (tally, chart) in values.items()
            }
            for field, values in self.slices.items()
        }

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "field": field,
                "value": value,
                "items": tally[1],
                "accuracy": tally[0] / tally[1] if tally[1] else None,
                "chart": chart.summary(),
            }
            for field, values in sorted(self.slices.items())
            for value, (tally, chart) in sorted(values.items())
        ]
