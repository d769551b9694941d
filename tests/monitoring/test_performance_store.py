"""The performance monitor's stored state (I1, I6): sealed under the tenant's metadata key
(no label or slice value in clear in the database file), kept per tenant and version, never
read for another tenant, re-sealed when the tenant's data key rotates and deleted with the
tenant when it is shredded."""

from __future__ import annotations

import random

import pytest

from silolearn import Workspace
from silolearn.config import PerformanceConfig
from silolearn.errors import TenantNotFound
from silolearn.monitoring.estimate import expected_macro_f1
from silolearn.monitoring.feedback import PerformanceMonitor, VersionPerformance, gauges
from silolearn.workspace import DB_FILE


def _feed(monitor: PerformanceMonitor, tenant: str, version: int, items: int) -> None:
    for i in range(items):
        label = "sealed-label-north" if i % 3 else "sealed-label-south"
        served = label if i % 4 else "sealed-label-east"
        monitor.feedback(
            tenant, version=version, served=served, label=label, meta={"region": "hidden-region"}
        )


def test_state_is_sealed_per_tenant_and_version_and_survives_a_key_rotation(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws.create_tenant("alpha")
    ws.create_tenant("beta")
    monitor = PerformanceMonitor(ws)
    _feed(monitor, "alpha", 1, 40)
    _feed(monitor, "alpha", 2, 8)
    with ws.audit.write() as conn:
        info = ws.tenants.get("alpha")
        monitor.served_in(
            conn, info.id, 2, [{"sealed-label-north": 0.8, "sealed-label-south": 0.2}]
        )

    report = monitor.report("alpha")
    assert [v["version"] for v in report["versions"]] == [2, 1]
    v1 = report["versions"][1]["feedback"]
    assert v1["items"] == 40 and v1["accuracy"] == pytest.approx(30 / 40)
    assert report["versions"][0]["estimate"]["served"] == 1
    assert report["versions"][0]["estimate"]["accuracy"] == pytest.approx(0.8)
    assert monitor.report("beta")["versions"] == []
    with pytest.raises(TenantNotFound):
        monitor.report("gamma")

    raw = (ws.path / DB_FILE).read_bytes()
    for secret in (b"sealed-label-north", b"sealed-label-east", b"hidden-region"):
        assert secret not in raw

    ws.tenants.rotate_data_key("alpha")
    assert monitor.report("alpha")["versions"][1]["feedback"]["items"] == 40
    measured = sorted((g["version"], g["accuracy"], g.get("estimate")) for g in gauges(ws))
    assert measured == [(1, 0.75, None), (2, 0.75, pytest.approx(0.8))]


def test_state_is_deleted_with_its_tenant(ws: Workspace) -> None:
    ws.create_tenant("alpha")
    _feed(PerformanceMonitor(ws), "alpha", 1, 5)
    deleted = ws.tenants.shred("alpha")["deleted"]
    assert deleted["performance_state"] == 1
    assert ws.conn.execute("SELECT COUNT(*) FROM performance_state").fetchone()[0] == 0


def test_accuracy_and_macro_f1_are_sklearns_and_certain_probabilities_estimate_them() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(3)
    labels = ["north", "south", "east", "west"]
    truth = [rng.choice(labels[:3]) for _ in range(500)]
    served = [t if rng.random() < 0.7 else rng.choice(labels) for t in truth]
    stats = VersionPerformance(PerformanceConfig())
    for s, t in zip(served, truth, strict=True):
        stats.observe(s, t, {}, day="2026-01-01")
    summary = stats.summary()
    assert summary["accuracy"] == pytest.approx(accuracy_score(truth, served))
    assert summary["macro_f1"] == pytest.approx(f1_score(truth, served, average="macro"))
    # probabilities that put all their mass on the right label make the expected confusion
    # matrix the measured one: the estimate is then exactly what feedback measures
    matrix: dict[str, dict[str, float]] = {}
    for s, t in zip(served, truth, strict=True):
        matrix.setdefault(s, {})[t] = matrix.get(s, {}).get(t, 0.0) + 1.0
    assert expected_macro_f1(matrix) == pytest.approx(f1_score(truth, served, average="macro"))
