"""The performance monitor: feedback on served predictions and the served probabilities in,
per-version running statistics, signals and incidents out.

Per tenant and version it keeps only what monitoring needs, in the tenant's scope and
sealed under its metadata key (``performance_state``, schema 0015): from feedback the
counts, the confusion matrix (served label x right label), daily tallies, the control chart
(``monitoring.performance``) and the slices' charts (``monitoring.slices``); from serving
the sums of served probabilities that estimate performance without labels
(``monitoring.estimate``). Never a record's text, never one prediction.

A chart's alarm is a confirmed signal (``performance``, or ``slice.performance`` for a
slice that degrades while the aggregate holds), audited by ``Signals``; a confirmed
aggregate degradation opens an incident of the configured severity (one open per version),
which the scheduler may turn into a round by the tenant's policy.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.clock import SYSTEM, Clock
from silolearn.config import PerformanceConfig
from silolearn.errors import MetadataSealed, NotFoundError
from silolearn.monitoring.estimate import ServedProbabilities, version_ece
from silolearn.monitoring.incidents import Incidents
from silolearn.monitoring.performance import AccuracyChart
from silolearn.monitoring.signals import Signal, Signals
from silolearn.monitoring.slices import SliceAlarm, SliceCharts
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.metadata import PERFORMANCE
from silolearn.storage.scope import Purpose

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

FEEDBACK, SERVED = "feedback", "served"


def chart_factory(settings: PerformanceConfig, *, slices: bool) -> Any:
    """How a chart of the aggregate (or of a slice) is made: the false-alarm budget
    ``1 / arl0`` per feedback item is shared equally between the aggregate and each slice
    field (an item falls in at most one slice of a field)."""
    families = 1 + len(settings.slice_fields)

    def make(state: dict[str, Any] | None) -> AccuracyChart:
        return AccuracyChart(
            burn_in=settings.slice_burn_in if slices else settings.burn_in,
            shift=settings.shift,
            arl0=settings.arl0 * families,
            guarantee=settings.guarantee,
            state=state,
        )

    return make


class VersionPerformance:
    """One version's feedback statistics: what ``observe`` has been told so far."""

    def __init__(self, settings: PerformanceConfig, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.settings = settings
        self.confusion: dict[str, dict[str, int]] = {
            k: dict(v) for k, v in state.get("confusion", {}).items()
        }
        """served label -> right label -> count."""
        self.days: dict[str, list[int]] = {k: list(v) for k, v in state.get("days", {}).items()}
        """day -> [right, items]."""
        self.chart = chart_factory(settings, slices=False)(state.get("chart"))
        self.slices = SliceCharts(
            settings.slice_fields,
            max_values=settings.slice_max_values,
            chart=chart_factory(settings, slices=True),
            state=state.get("slices"),
        )

    def observe(
        self, served: str, label: str, meta: Mapping[str, Any], *, day: str
    ) -> tuple[bool, list[SliceAlarm]]:
        """Count one piece of feedback; (the aggregate alarmed, the slices that alarmed)."""
        correct = served == label
        row = self.confusion.setdefault(served, {})
        row[label] = row.get(label, 0) + 1
        tally = self.days.setdefault(day, [0, 0])
        tally[0] += int(correct)
        tally[1] += 1
        alarmed = self.chart.update(correct)
        return alarmed, self.slices.update(meta, correct)

    @property
    def items(self) -> int:
        return sum(sum(row.values()) for row in self.confusion.values())

    def state(self) -> dict[str, Any]:
        return {
            "confusion": self.confusion,
            "days": dict(sorted(self.days.items())[-self.settings.keep_days :]),
            "chart": self.chart.state(),
            "slices": self.slices.state(),
        }

    def summary(self) -> dict[str, Any]:
        items = self.items
        right = sum(row.get(served, 0) for served, row in self.confusion.items())
        return {
            "items": items,
            "accuracy": right / items if items else None,
            "macro_f1": macro_f1(self.confusion),
            "daily": [
                {"day": day, "items": n, "accuracy": r / n}
                for day, (r, n) in sorted(self.days.items())
                if n
            ],
            "chart": self.chart.summary(),
            "slices": self.slices.summary(),
        }


def macro_f1(confusion: Mapping[str, Mapping[str, int]]) -> float | None:
    """Macro-F1 over every label served or given as right."""
    labels = sorted(set(confusion) | {k for row in confusion.values() for k in row})
    if not labels:
        return None
    scores = []
    for label in labels:
        tp = confusion.get(label, {}).get(label, 0)
        served = sum(confusion.get(label, {}).values())
        right = sum(row.get(label, 0) for row in confusion.values())
        scores.append(2.0 * tp / (served + right) if served + right else 0.0)
    return sum(scores) / len(scores)


class PerformanceMonitor:
    """The performance monitor of one opened workspace (the coordinator's: it holds the
    metadata keys), deciding by ``clock``."""

    def __init__(self, ws: Workspace, *, clock: Clock = SYSTEM) -> None:
        self.ws = ws
        self.settings = ws.settings.performance
        self.clock = clock

    # -- rows -------------------------------------------------------------------------------

    def _load(
        self, conn: sqlite3.Connection, tenant_id: str, version: int, part: str
    ) -> dict[str, Any] | None:
        row_key = f"{version}/{part}"
        row = conn.execute(
            "SELECT sealed, dek_version FROM performance_state WHERE tenant_id = ? AND id = ?",
            (tenant_id, row_key),
        ).fetchone()
        if row is None:
            return None
        fields = self.ws.metadata.open(PERFORMANCE, tenant_id, row_key, row[0], row[1], conn=conn)
        state: dict[str, Any] = fields["state"]
        return state

    def _save(
        self,
        conn: sqlite3.Connection,
        tenant_id: str,
        version: int,
        part: str,
        *,
        items: int,
        state: dict[str, Any],
    ) -> None:
        row_key = f"{version}/{part}"
        sealed, dek_version = self.ws.metadata.seal(
            conn, PERFORMANCE, tenant_id, row_key, {"state": state}
        )
        conn.execute(
            "INSERT INTO performance_state (tenant_id, id, version, part, items, updated_at, "
            "sealed, dek_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, id) DO UPDATE SET items = excluded.items, "
            "updated_at = excluded.updated_at, sealed = excluded.sealed, "
            "dek_version = excluded.dek_version",
            (tenant_id, row_key, version, part, items, utcnow(), sealed, dek_version),
        )

    # -- in ---------------------------------------------------------------------------------

    def served_in(
        self,
        conn: sqlite3.Connection,
        tenant_id: str,
        version: int,
        probabilities: Sequence[Mapping[str, float]],
    ) -> None:
        """Add what a version just served to its sums, inside the caller's write
        transaction (the one that keeps and audits the prediction); nothing when
        ``[performance] estimate`` is off."""
        if not self.settings.estimate:
            return
        served = ServedProbabilities(self._load(conn, tenant_id, version, SERVED))
        served.add(probabilities, day=self._day())
        state = served.state(keep_days=self.settings.keep_days)
        self._save(conn, tenant_id, version, SERVED, items=served.count, state=state)

    def feedback(
        self,
        tenant: str,
        *,
        version: int,
        served: str,
        label: str,
        meta: Mapping[str, Any] | None = None,
    ) -> list[Signal]:
        """Count feedback on a prediction ``version`` served (``served`` was answered,
        ``label`` is right); the signals its charts raised, recorded."""
        info = self.ws.tenants.get(tenant)
        with self.ws.audit.write() as conn:
            stats = VersionPerformance(self.settings, self._load(conn, info.id, version, FEEDBACK))
            alarmed, slice_alarms = stats.observe(served, label, meta or {}, day=self._day())
            self._save(conn, info.id, version, FEEDBACK, items=stats.items, state=stats.state())
        if not alarmed and not slice_alarms:
            return []
        return self._signal(tenant, version, stats, alarmed, slice_alarms)

    def _day(self) -> str:
        return self.clock.now().date().isoformat()

    # -- out --------------------------------------------------------------------------------

    def _signal(
        self,
        tenant: str,
        version: int,
        stats: VersionPerformance,
        alarmed: bool,
        slice_alarms: list[SliceAlarm],
    ) -> list[Signal]:
        now: datetime = self.clock.now()
        signals = Signals(self.ws)
        chart = stats.chart
        design = chart.design
        recorded = []
        if alarmed and design is not None:
            summary = stats.summary()
            evidence = {
                "items": summary["items"],
                "accuracy": summary["accuracy"],
                "macro_f1": summary["macro_f1"],
                "chart": chart.summary(),
                "slices_alarmed": [{"field": a.field, "value": a.value} for a in slice_alarms],
            }
            recorded.append(
                signals.record(
                    Signal(
                        tenant=tenant,
                        kind="performance",
                        version=version,
                        at=now,
                        statistic=float(chart.alarm_statistic),
                        threshold=float(design.limit),
                        confirmed=True,
                        evidence=evidence,
                    )
                )
            )
            self._incident(tenant, version, evidence)
        for alarm in slice_alarms:
            # a slice that degrades while the aggregate holds (armed, not alarming) is its
            # own alarm; with the aggregate it is evidence of the aggregate's. A degraded
            # slice pulls the aggregate's statistic up too: how far is no test of "holds"
            holds = not alarmed and chart.armed
            recorded.append(
                signals.record(
                    Signal(
                        tenant=tenant,
                        kind="slice.performance",
                        version=version,
                        at=now,
                        statistic=float(alarm.chart["alarm_statistic"]),
                        threshold=float(alarm.chart["limit"]),
                        confirmed=holds,
                        evidence={
                            "field": alarm.field,
                            "value": alarm.value,
                            "items": alarm.items,
                            "accuracy": alarm.accuracy,
                            "chart": alarm.chart,
                            "aggregate": chart.summary(),
                        },
                    )
                )
            )
        return recorded

    def _incident(self, tenant: str, version: int, evidence: dict[str, Any]) -> None:
        severity = self.settings.incident
        if severity == "none":
            return
        incidents = Incidents(self.ws)
        for open_one in incidents.list(tenant=tenant, status="open"):
            if open_one["kind"] == "performance" and open_one["version"] == version:
                return
        reference = evidence["chart"].get("reference_accuracy")
        incidents.open(
            tenant,
            severity=severity,
            kind="performance",
            version=version,
            summary=(
                f"accuracy of version {version} on feedback dropped below its reference "
                f"{reference} (control chart alarm)"
            ),
            evidence=evidence,
            actions=["signal performance"],
        )

    def report(self, tenant: str) -> dict[str, Any]:
        """Every version's performance from feedback and its estimate from what it served,
        newest version first, with the tenant's latest performance signals."""
        info = self.ws.tenants.get(tenant)
        rows = self.ws.conn.execute(
            "SELECT DISTINCT version FROM performance_state WHERE tenant_id = ? "
            "ORDER BY version DESC",
            (info.id,),
        ).fetchall()
        registry = AdapterRegistry(self.ws.scope(tenant, purpose=Purpose.SERVING)) if rows else None
        versions = []
        for (stored,) in rows:
            version = int(stored)
            try:
                ece = version_ece(registry.get(version).lineage) if registry else None
            except NotFoundError:
                ece = None
            fed = self._load(self.ws.conn, info.id, version, FEEDBACK)
            served = self._load(self.ws.conn, info.id, version, SERVED)
            versions.append(
                {
                    "version": version,
                    "feedback": VersionPerformance(self.settings, fed).summary(),
                    "estimate": ServedProbabilities(served).estimate(
                        ece=ece, max_ece=self.settings.max_ece
                    ),
                }
            )
        signals = Signals(self.ws)
        latest = [signals.latest(tenant, kind) for kind in ("performance", "slice.performance")]
        return {
            "tenant": tenant,
            "settings": json.loads(self.settings.model_dump_json()),
            "versions": versions,
            "signals": [s.to_dict() for s in latest if s is not None],
        }


def gauges(ws: Workspace) -> list[dict[str, Any]]:
    """Per tenant id and version: accuracy from feedback, the chart's level (its statistic
    over its limit, 0 while burning in) and the accuracy estimated from what it served
    (``/metrics``); a row whose tenant's key is gone is skipped."""
    settings = ws.settings.performance
    rows = ws.conn.execute(
        "SELECT tenant_id, id, version, part, sealed, dek_version FROM performance_state "
        "ORDER BY tenant_id, version"
    ).fetchall()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for tenant_id, row_key, version, part, sealed, dek_version in rows:
        try:
            state = ws.metadata.open(PERFORMANCE, tenant_id, row_key, sealed, dek_version)["state"]
        except MetadataSealed:
            continue
        entry = out.setdefault((str(tenant_id), int(version)), {})
        if part == FEEDBACK:
            stats = VersionPerformance(settings, state)
            entry["accuracy"] = stats.summary()["accuracy"]
            entry["level"] = stats.chart.level()
        else:
            entry["estimate"] = (
                ServedProbabilities(state).estimate(ece=None, max_ece=0.0).get("accuracy")
            )
    return [{"tenant_id": t, "version": v, **values} for (t, v), values in out.items()]
