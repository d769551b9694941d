"""``GET /metrics``: the service's figures in the Prometheus text format, one registry per app.

Two kinds of series. What the process sees go by is counted as it happens (predictions and
their latency, feedback that names a served prediction, ingested records by outcome): they
start from zero when the service starts, as Prometheus counters do. What the workspace holds
is read from it at each scrape (rounds and their outcomes, gate failures, privacy budgets,
open incidents), so they hold across restarts and include what the command line did.

Labels are tenant names, version numbers and fixed vocabularies (outcomes, gate names,
severities): never a record's text and never a tenant's label names. Tenant names are
themselves workspace-level knowledge, so only a workspace-wide token with the ``auditor`` or
``admin`` role reads ``/metrics``; any other token is refused (403) and the refusal audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from silolearn.errors import AccessDenied
from silolearn.monitoring.feedback import gauges
from silolearn.pipeline import list_gate_runs
from silolearn.service.auth import allow
from silolearn.service.pool import WorkspacePool
from silolearn.tenancy.access import Principal

router = APIRouter(tags=["metrics"])

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SEVERITIES = ("SEV1", "SEV2", "SEV3")
INGEST_OUTCOMES = ("accepted", "rejected", "duplicates", "quarantined")
"""The gateway report's counts that ``silolearn_ingest_records_total`` carries."""


class ServiceMetrics:
    """The series of one service, in a registry of its own (several apps in one process, as
    in tests, never share one)."""

    def __init__(self, pool: WorkspacePool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.predictions = Counter(
            "silolearn_predictions",
            "Texts answered by predict, per tenant and serving version.",
            ("tenant", "version"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "silolearn_predict_latency_seconds",
            "Time to answer a predict request (all its texts), per tenant and version.",
            ("tenant", "version"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.deadline_misses = Counter(
            "silolearn_predict_deadline_misses",
            "Predict requests answered after their release deadline (tick plus the release "
            "delay), per tenant: the micro-batcher was above capacity, and the latency of "
            "these answers depended on the load of every tenant.",
            ("tenant",),
            registry=self.registry,
        )
        self.feedback = Counter(
            "silolearn_feedback",
            "Feedback naming a served prediction, per tenant, version that served it and "
            "whether its label was the one served (correct: true or false).",
            ("tenant", "version", "correct"),
            registry=self.registry,
        )
        self.ingested = Counter(
            "silolearn_ingest_records",
            "Records through the gateway over the API (ingest and feedback), per tenant and "
            "outcome: accepted, rejected, duplicates, quarantined.",
            ("tenant", "outcome"),
            registry=self.registry,
        )
        self.registry.register(WorkspaceCollector(pool, self))

    def record_ingest(self, tenant: str, report: dict[str, Any]) -> None:
        for outcome in INGEST_OUTCOMES:
            count = report.get(outcome)
            if isinstance(count, int) and count > 0:
                self.ingested.labels(tenant, outcome).inc(count)

    def feedback_accuracy(self) -> dict[tuple[str, str], float]:
        """(tenant, version) -> the share of feedback whose label was the one served."""
        tallies: dict[tuple[str, str], list[float]] = {}
        for metric in self.feedback.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = (sample.labels["tenant"], sample.labels["version"])
                tally = tallies.setdefault(key, [0.0, 0.0])
                tally[1] += sample.value
                if sample.labels["correct"] == "true":
                    tally[0] += sample.value
        return {key: right / total for key, (right, total) in tallies.items() if total}

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WorkspaceCollector(Collector):
    """The series read from the workspace at each scrape."""

    def __init__(self, pool: WorkspacePool, metrics: ServiceMetrics) -> None:
        self._pool = pool
        self._metrics = metrics

    def describe(self) -> list[Any]:
        # nothing to describe ahead of a scrape: registering must not open the workspace
        return []

    def collect(self) -> Iterator[Any]:
        accuracy = GaugeMetricFamily(
            "silolearn_feedback_accuracy",
            "Share of feedback whose label was the one served, per tenant and version.",
            labels=("tenant", "version"),
        )
        for (tenant, version), value in sorted(self._metrics.feedback_accuracy().items()):
            accuracy.add_metric((tenant, version), value)
        yield accuracy
        with self._pool.borrow() as ws:
            names = {t.id: t.name for t in ws.tenants.list()}
            yield _rounds(ws.conn, names)
            yield _gate_failures(ws, names)
            yield _privacy_remaining(ws, names)
            yield _open_incidents(ws.conn)
            yield from _performance(ws, names)


ROUND_OUTCOME = """
SELECT r.tenant_id,
       CASE WHEN r.status IN ('running', 'failed', 'abandoned') THEN r.status
            WHEN v.status IS NULL THEN 'no_version'
            WHEN v.status IN ('active', 'retired') THEN 'promoted'
            ELSE v.status END AS outcome,
       COUNT(*)
FROM training_runs r
LEFT JOIN adapter_versions v ON v.tenant_id = r.tenant_id AND v.run_id = r.run_id
GROUP BY r.tenant_id, outcome
"""


def _rounds(conn: Any, names: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "silolearn_rounds",
        "Training runs of rounds, per tenant and outcome: promoted (its version served), "
        "rejected, candidate, no_version, running, failed, abandoned.",
        labels=("tenant", "outcome"),
    )
    for tenant_id, outcome, count in conn.execute(ROUND_OUTCOME).fetchall():
        if tenant_id in names:
            family.add_metric((names[tenant_id], str(outcome)), float(count))
    return family


def _gate_failures(ws: Any, names: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "silolearn_gate_failures",
        "Applicable gate verdicts that failed, per tenant and gate.",
        labels=("tenant", "gate"),
    )
    with_runs = {
        str(r[0]) for r in ws.conn.execute("SELECT DISTINCT tenant_id FROM gate_runs").fetchall()
    }
    for tenant_id in sorted(with_runs & names.keys()):
        failures: dict[str, int] = {}
        for run in list_gate_runs(ws, names[tenant_id]):
            for verdict in run["verdicts"]:
                gate = str(verdict.get("gate"))
                failures.setdefault(gate, 0)
                if verdict.get("applicable", True) and not verdict.get("passed"):
                    failures[gate] += 1
        for gate, count in sorted(failures.items()):
            family.add_metric((names[tenant_id], gate), float(count))
    return family


def _privacy_remaining(ws: Any, names: dict[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "silolearn_privacy_epsilon_remaining",
        "Epsilon left in a privacy ledger's budget, per scope (tenant:<name> for a "
        "tenant's own model, the scope's name for a shared one).",
        labels=("scope",),
    )
    ledger = ws.ledger()
    scopes = {str(r[0]) for r in ws.conn.execute("SELECT scope FROM privacy_scopes")}
    scopes |= {str(r[0]) for r in ws.conn.execute("SELECT DISTINCT scope FROM privacy_events")}
    for scope in sorted(scopes):
        kind, _, ident = scope.partition(":")
        if kind == "tenant":
            if ident not in names:
                continue  # a shredded tenant's ledger
            label = f"tenant:{names[ident]}"
        else:
            label = scope
        family.add_metric((label,), float(ledger.summary(scope)["epsilon_remaining"]))
    return family


def _open_incidents(conn: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "silolearn_open_incidents",
        "Incidents not resolved, per severity (SEV1 is the gravest).",
        labels=("severity",),
    )
    counts = dict(
        conn.execute(
            "SELECT severity, COUNT(*) FROM incidents WHERE status = 'open' GROUP BY severity"
        ).fetchall()
    )
    for severity in SEVERITIES:
        family.add_metric((severity,), float(counts.get(severity, 0)))
    return family


def _performance(ws: Any, names: dict[str, str]) -> Iterator[GaugeMetricFamily]:
    """Performance monitoring per tenant and version (docs/monitoring.md)."""
    families = {
        "accuracy": GaugeMetricFamily(
            "silolearn_performance_accuracy",
            "Accuracy measured from feedback on served predictions, per tenant and version.",
            labels=("tenant", "version"),
        ),
        "level": GaugeMetricFamily(
            "silolearn_performance_chart_level",
            "The control chart's statistic over its limit (an alarm at 1; 0 while its "
            "burn-in sets the reference), per tenant and version.",
            labels=("tenant", "version"),
        ),
        "estimate": GaugeMetricFamily(
            "silolearn_performance_estimated_accuracy",
            "Accuracy estimated without labels from the probabilities served (an estimate), "
            "per tenant and version.",
            labels=("tenant", "version"),
        ),
    }
    for entry in gauges(ws):
        if entry["tenant_id"] not in names:
            continue
        labels = (names[entry["tenant_id"]], str(entry["version"]))
        for key, family in families.items():
            if entry.get(key) is not None:
                family.add_metric(labels, float(entry[key]))
    yield from families.values()


MetricsReader = allow("auditor", "admin")


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, principal: Principal = MetricsReader) -> Response:
    """The Prometheus exposition (a workspace-wide ``auditor`` or ``admin`` token)."""
    service = request.app.state.service
    if not principal.workspace_wide:
        service.gate.deny(request, principal, "metrics need a workspace-wide token", 403)
        raise AccessDenied(
            "/metrics names every tenant: it needs a workspace-wide auditor or admin token",
            roles=["auditor", "admin"],
        )
    body: bytes = service.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
