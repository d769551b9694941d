"""The drift monitor of a workspace's tenants: it receives what each tenant's version served
(embeddings and predicted labels, never texts), keeps it sealed in the tenant's scope, tests
it against the version's training window and records what it finds as signals.

The reference of a version is built the first time it serves: a seeded sample of the
training records up to its cutoff, read through the tenant's ingest scope and answered by
the version itself (``Answer``: the service passes its micro-batcher, asked for that
version, so a canary's reference is its own), which gives their embeddings; the true
labels are kept beside them for label drift. Its predicted labels are not the version's
answers on those texts, which it trained on (more often right and more confident than on
anything it serves), but its round's out-of-fold predictions (``run/<id>/oof``): what it
answers on texts of its period it did not train on. A version without them (LoRA, DP, a
fixed fit, or older) gets no prediction test, and each window's signal says so. The
reference, and the online test's calibrated threshold keyed by what it depends on, are
cached as blobs sealed under the tenant's training key. The texts are never kept.

Per tenant and version: the online MMD detector takes every served embedding (a confirmed
``drift.embedding`` signal when it fires, an unconfirmed one with its statistic at the end
of each window); each full window of predicted labels is tested against the reference's
(``drift.prediction``), and each full window of new labelled records after the cutoff
(feedback) against the training window's labels (``drift.label``). A confirmed signal opens
an incident by policy (``[drift] incident``), one open per version and kind.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.clock import SYSTEM, Clock
from silolearn.config import DriftPolicy
from silolearn.errors import InvalidInput, NotFoundError, SiloError
from silolearn.monitoring.drift import (
    OnlineMMD,
    label_shares,
    label_test,
    level,
    permutations_for,
)
from silolearn.monitoring.incidents import Incidents
from silolearn.monitoring.signals import Signal, Signals
from silolearn.monitoring.slice_drift import (
    SliceWindows,
    slice_reference,
    slice_view,
    window_tests,
)
from silolearn.monitoring.slices import slice_value
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose
from silolearn.storage.served_embeddings import ServedBatch, ServedEmbeddings

if TYPE_CHECKING:
    from silolearn.storage.scope import TenantScope
    from silolearn.workspace import Workspace

Answer = Callable[[str, int, Sequence[str]], tuple[int, npt.NDArray[np.float32] | None, list[str]]]
"""A tenant's version answering texts: ``(version that answered, embeddings or None,
labels)``; asked for a version, a canary's included, while it serves."""

_log = logging.getLogger("silolearn.monitoring")

REFERENCE_BLOB = "monitoring/reference-v{version}"
LABELS_BLOB = "monitoring/reference-labels-v{version}"
CALIBRATION_BLOB = "monitoring/reference-calibration-v{version}"
OOF_BLOB = "run/{run_id}/oof"
REFERENCE_FORMAT = 3
"""2: the reference's predicted labels are the round's out-of-fold predictions (a reference
cached in an older format, the version's answers on its own training texts, is built
again); 3: with each sampled record's slice values and out-of-fold label, for slices."""
OUT_OF_FOLD = "out-of-fold"


@dataclass(frozen=True, slots=True)
class Reference:
    """A version's training window as drift monitoring keeps it."""

    version: int
    embeddings: npt.NDArray[np.float32] | None
    predicted: list[str]
    """What the version answers on texts of its period it did not train on: its round's
    out-of-fold predictions; empty when the round kept none (no prediction test)."""
    labels: list[str]
    cutoff: str
    predicted_from: str | None = None
    """``out-of-fold``, or None: the version has no honest reference for its predictions."""
    metas: list[dict[str, str]] = field(default_factory=list)
    """Each sampled record's slice values (``meta`` fields that can name a slice), by row."""
    predicted_rows: list[str | None] = field(default_factory=list)
    """Each sampled record's out-of-fold predicted label, None when the round has none."""


@dataclass
class _Watch:
    """What the monitor holds of one tenant's version between batches."""

    reference: Reference
    detector: OnlineMMD | None
    predicted: list[str] = field(default_factory=list)
    served: int = 0
    labels_seen: str = ""
    """The newest timestamp of labelled records already tested for label drift."""
    pending_labels: list[str] = field(default_factory=list)
    train_count: int = -1
    """The tenant's training records when labels were last read (unchanged: nothing new)."""
    unsaved: list[tuple[npt.NDArray[np.float32], list[str]]] = field(default_factory=list)
    """Served batches not yet kept: they are kept a window at a time, one write for many
    requests."""
    unsaved_since: str = ""
    slices: SliceWindows | None = None
    items: int = 0
    """Predictions served so far (every batch, embedded or not)."""
    alarmed_at: dict[str, int] = field(default_factory=dict)
    """``embedding`` / ``prediction`` -> ``items`` when the aggregate's test last alarmed."""


class DriftMonitor:
    """Drift of every tenant of one opened workspace; used from one thread."""

    def __init__(self, ws: Workspace, answer: Answer, *, clock: Clock = SYSTEM) -> None:
        self.ws = ws
        self.answer = answer
        self.clock = clock
        self.signals = Signals(ws)
        self.calibrations = 0
        """Online thresholds calibrated by this monitor (a cached one is not counted)."""
        self._watches: dict[tuple[str, int], _Watch] = {}

    def policy(self, tenant: str) -> DriftPolicy:
        return self.ws.settings.drift.for_tenant(tenant)

    def slice_fields(self, tenant: str) -> tuple[str, ...]:
        """The ``meta`` fields whose values the tenant's drift is watched per."""
        fields = self.policy(tenant).slice_fields
        return tuple(self.ws.settings.performance.slice_fields if fields is None else fields)

    def shared_ert(self, tenant: str) -> float:
        """The ``ert`` each family of the embedding and prediction tests is run at: the
        budget shared equally between the aggregate and each slice field."""
        return self.policy(tenant).ert * (1 + len(self.slice_fields(tenant)))

    # -- the reference ----------------------------------------------------------------------

    def reference(self, tenant: str, version: int) -> Reference:
        """The version's reference, from its cached blob or built now."""
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        try:
            meta = json.loads(scope.blobs.get(LABELS_BLOB.format(version=version)))
            if meta.get("format") != REFERENCE_FORMAT:
                return self._build_reference(tenant, version)
            blob = scope.blobs.get(REFERENCE_BLOB.format(version=version))
        except NotFoundError:
            return self._build_reference(tenant, version)
        embeddings = np.load(io.BytesIO(blob), allow_pickle=False)
        return Reference(
            version,
            embeddings if meta["embedded"] else None,
            list(meta["predicted"]),
            list(meta["labels"]),
            str(meta["cutoff"]),
            meta["predicted_from"],
            list(meta["metas"]),
            list(meta["predicted_rows"]),
        )

    def _build_reference(self, tenant: str, version: int) -> Reference:
        """Embeddings and true labels of a seeded sample of the training window (the
        version answers the texts: the embedding of a text does not depend on whether it
        was trained on), and the predicted labels of its round's out-of-fold predictions
        (what it answers on texts it did not train on: its answers on its own training
        texts are more often right and more confident than on any served text)."""
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        entry = AdapterRegistry(scope).get(version)
        cutoff = str(entry.lineage.get("cutoff") or "")
        records = [s.record for s in scope.train.read(until=cutoff or None)]
        policy = self.policy(tenant)
        size = policy.reference_size
        picked = random.Random(f"{tenant}/{version}").sample(records, min(size, len(records)))
        if len(picked) < 2:
            raise InvalidInput(f"tenant {tenant!r} v{version} has no training window to watch")
        answered, embeddings, _ = self.answer(tenant, version, [r.text for r in picked])
        if answered != version:
            raise InvalidInput(f"tenant {tenant!r} serves v{answered}, not v{version}")
        oof = _oof(scope, entry.run_id)
        predicted = _out_of_fold(oof, entry.lineage, policy, f"{tenant}/{version}")
        by_id = dict(zip(oof["ids"], oof["predicted"], strict=True)) if oof else {}
        metas = [_slice_values(r.meta) for r in picked]
        predicted_rows = [by_id.get(r.id) for r in picked]
        rows = embeddings if embeddings is not None else np.zeros((len(picked), 0), np.float32)
        labels = [r.label for r in picked if r.label is not None]
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(rows, dtype="<f4"), allow_pickle=False)
        scope.blobs.put(REFERENCE_BLOB.format(version=version), buffer.getvalue())
        meta = {
            "format": REFERENCE_FORMAT,
            "labels": labels,
            "predicted": predicted,
            "predicted_from": OUT_OF_FOLD if predicted else None,
            "cutoff": cutoff,
            "embedded": embeddings is not None,
            "metas": metas,
            "predicted_rows": predicted_rows,
        }
        scope.blobs.put(LABELS_BLOB.format(version=version), json.dumps(meta).encode())
        return Reference(
            version,
            embeddings,
            predicted,
            labels,
            cutoff,
            OUT_OF_FOLD if predicted else None,
            metas,
            predicted_rows,
        )

    def detector(self, tenant: str, version: int) -> OnlineMMD | None:
        """The version's online embedding detector as this monitor holds it, its threshold
        read from the cached calibration or calibrated on first use; None when the reference
        is too small for one (fewer than two windows of embeddings)."""
        return self._watch(tenant, version).detector

    def _watch(self, tenant: str, version: int) -> _Watch:
        watch = self._watches.get((tenant, version))
        if watch is None:
            policy = self.policy(tenant)
            reference = self.reference(tenant, version)
            detector = None
            if reference.embeddings is not None and len(reference.embeddings) >= 2 * policy.window:
                detector = self._detector(tenant, version, reference.embeddings, policy)
            fields = self.slice_fields(tenant)
            slices = (
                SliceWindows(fields, max_values=policy.slice_max_values, window=policy.window)
                if fields
                else None
            )
            watch = _Watch(reference, detector, labels_seen=reference.cutoff, slices=slices)
            self._watches[(tenant, version)] = watch
        return watch

    def _detector(
        self, tenant: str, version: int, embeddings: npt.NDArray[np.float32], policy: DriftPolicy
    ) -> OnlineMMD:
        """The version's online MMD detector, its threshold taken from the sealed calibration
        cached beside the reference when that was calibrated under the same key (settings,
        reference, method), else calibrated now and cached: a restart does not pay for it
        again, a policy change does."""
        detector = OnlineMMD(
            window=policy.window,
            ert=self.shared_ert(tenant),
            bootstraps=policy.bootstraps,
            seed=version,
        )
        key = detector.calibration_key(embeddings)
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        name = CALIBRATION_BLOB.format(version=version)
        try:
            cached = json.loads(scope.blobs.get(name))
        except NotFoundError:
            cached = {}
        threshold = float(cached["threshold"]) if cached.get("key") == key else None
        detector.fit(embeddings, threshold=threshold)
        if detector.calibrated_:
            self.calibrations += 1
            calibration = {"key": key, "threshold": detector.threshold_}
            scope.blobs.put(name, json.dumps(calibration).encode())
        return detector

    # -- what was served --------------------------------------------------------------------

    def observe(
        self,
        tenant: str,
        version: int,
        embeddings: npt.ArrayLike | None,
        labels: list[str],
        metas: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Signal]:
        """Keep and test one batch the version served (``metas``: each item's ``meta``, for
        slices); the signals it raised."""
        policy = self.policy(tenant)
        if not policy.enabled or not labels:
            return []
        if metas is not None and len(metas) != len(labels):
            raise InvalidInput(f"{len(metas)} metas for {len(labels)} served predictions")
        watch = self._watch(tenant, version)
        rows = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        if rows is not None:
            self._keep(tenant, version, watch, rows, labels, policy)
        raised: list[Signal] = []
        before = watch.items
        watch.items += len(labels)
        if watch.detector is not None and rows is not None:
            found = self._embedding(tenant, version, watch, rows, policy)
            if any(s.confirmed for s in found):
                watch.alarmed_at["embedding"] = watch.items
            raised += found
        watch.predicted += labels
        while len(watch.predicted) >= policy.window:
            window, watch.predicted = (
                watch.predicted[: policy.window],
                watch.predicted[policy.window :],
            )
            tested = self._predictions(tenant, version, watch.reference, window)
            if tested.confirmed:
                watch.alarmed_at["prediction"] = watch.items
            raised.append(tested)
            raised += self.check_labels(tenant, version)
        if metas is not None and watch.slices is not None:
            raised += self._slices(tenant, version, watch, metas, rows, labels, before)
        return raised

    def _slices(
        self,
        tenant: str,
        version: int,
        watch: _Watch,
        metas: Sequence[Mapping[str, Any]],
        rows: npt.NDArray[np.float32] | None,
        labels: list[str],
        before: int,
    ) -> list[Signal]:
        """Test each slice window this batch filled; a slice that drifts while the
        aggregate's same test holds (it has not alarmed since the slice's window began) is
        a confirmed ``slice.drift``; with the aggregate alarming too, the slice's signal is
        recorded unconfirmed, as evidence of the aggregate's."""
        assert watch.slices is not None
        policy, ert, ref = self.policy(tenant), self.shared_ert(tenant), watch.reference
        raised = []
        for window in watch.slices.add(metas, rows, labels, served=before):
            reference = slice_reference(
                ref.embeddings,
                ref.predicted,
                ref.metas,
                ref.predicted_rows,
                name=window.field,
                value=window.value,
                window=policy.window,
            )
            tests = window_tests(
                reference, window, ert=ert, permutations=policy.permutations, seed=version
            )
            for test, result in tests:
                holds = watch.alarmed_at.get(test, -1) < window.started
                evidence: dict[str, Any] = {
                    "field": window.field,
                    "value": window.value,
                    "test": _SLICE_TESTS[test],
                    "reference": reference.source,
                    "ert": ert,
                    "aggregate_holds": holds,
                    **result.to_dict(),
                }
                if test == "prediction":
                    evidence["window_shares"] = label_shares(window.labels)
                    evidence["reference_shares"] = label_shares(reference.predicted)
                raised.append(
                    self._record(
                        tenant,
                        version,
                        "slice.drift",
                        1.0 - result.p_value,
                        1.0 - result.alpha,
                        result.drift and holds,
                        evidence,
                    )
                )
        return raised

    def _keep(
        self,
        tenant: str,
        version: int,
        watch: _Watch,
        rows: npt.NDArray[np.float32],
        labels: list[str],
        policy: DriftPolicy,
    ) -> None:
        """Keep what was served, sealed, once a window of it has come."""
        if not watch.unsaved:
            watch.unsaved_since = _stamp(self.clock.now())
        watch.unsaved.append((rows, list(labels)))
        if sum(len(b[1]) for b in watch.unsaved) >= policy.window:
            self._save(tenant, version, watch, policy)

    def _save(self, tenant: str, version: int, watch: _Watch, policy: DriftPolicy) -> None:
        batch = ServedBatch(
            version,
            np.vstack([b[0] for b in watch.unsaved]),
            [label for b in watch.unsaved for label in b[1]],
            watch.unsaved_since,
        )
        watch.unsaved = []
        ServedEmbeddings(self.ws.scope(tenant, purpose=Purpose.SERVING)).keep(
            batch, now=self.clock.now(), retention=timedelta(hours=policy.retention_hours)
        )

    def flush(self) -> None:
        """Keep what was served and not yet kept (less than a window per version): called
        when the monitor stops, so nothing it received is lost."""
        for (tenant, version), watch in self._watches.items():
            if not watch.unsaved:
                continue
            try:
                self._save(tenant, version, watch, self.policy(tenant))
            except SiloError as exc:  # a tenant shredded meanwhile: the others are kept
                _log.warning("served predictions of %s not kept: %s", tenant, exc)

    def _embedding(
        self, tenant: str, version: int, watch: _Watch, rows: Any, policy: DriftPolicy
    ) -> list[Signal]:
        detector = watch.detector
        assert detector is not None
        raised = []
        for row in rows:
            watch.served += 1
            fired = detector.update(row)
            if fired or watch.served % policy.window == 0:
                evidence = {
                    "test": "online-mmd",
                    "window": policy.window,
                    "ert": policy.ert,
                    "served": watch.served,
                    "sigma": detector.sigma_,
                    "reference": len(detector.reference_),
                }
                raised.append(
                    self._record(
                        tenant,
                        version,
                        "drift.embedding",
                        detector.statistic,
                        detector.threshold_,
                        fired,
                        evidence,
                    )
                )
        return raised

    def _predictions(
        self, tenant: str, version: int, reference: Reference, window: list[str]
    ) -> Signal:
        """A window of predicted labels against the out-of-fold ones; without them (a LoRA,
        DP or fixed fit, or a version trained before they were kept) an unconfirmed signal
        that says the test was not run: answers on its own training texts would be no
        honest reference, and a test against them alarms on in-control traffic."""
        if reference.predicted:
            ert = self.shared_ert(tenant)
            kind = "drift.prediction"
            return self._labels(tenant, version, kind, reference.predicted, window, ert=ert)
        evidence = {
            "test": "none",
            "size": len(window),
            "reason": (
                f"v{version} kept no out-of-fold predictions (a LoRA, DP or fixed fit, or "
                "trained before they were kept): its predicted labels are not tested"
            ),
            "window_shares": label_shares(window),
        }
        return self._record(tenant, version, "drift.prediction", 0.0, 1.0, False, evidence)

    def _labels(
        self,
        tenant: str,
        version: int,
        kind: str,
        reference: list[str],
        window: list[str],
        *,
        ert: float,
    ) -> Signal:
        policy = self.policy(tenant)
        alpha = level(policy.window, ert)
        test = label_test(
            reference,
            window,
            alpha=alpha,
            permutations=permutations_for(alpha, policy.permutations),
            seed=version,
        )
        evidence = {
            "test": "chi-square, permutation p-value",
            **test.to_dict(),
            "reference_shares": label_shares(reference),
            "window_shares": label_shares(window),
        }
        # the p-value against its level, as a signal's statistic against its threshold
        return self._record(
            tenant, version, kind, 1.0 - test.p_value, 1.0 - test.alpha, test.drift, evidence
        )

    def check_labels(self, tenant: str, version: int) -> list[Signal]:
        """Test each full window of labelled records newer than the last tested (feedback
        and new data after the version's cutoff) against its training window's labels."""
        policy = self.policy(tenant)
        watch = self._watch(tenant, version)
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        count = scope.train.count()
        if count == watch.train_count:
            return []
        watch.train_count = count
        newer = sorted(
            (s.record for s in scope.train.read() if s.record.timestamp > watch.labels_seen),
            key=lambda r: r.timestamp,
        )
        if newer:
            watch.labels_seen = newer[-1].timestamp
        watch.pending_labels += [r.label for r in newer if r.label is not None]
        raised = []
        while len(watch.pending_labels) >= policy.window:
            window = watch.pending_labels[: policy.window]
            watch.pending_labels = watch.pending_labels[policy.window :]
            raised.append(
                self._labels(
                    tenant, version, "drift.label", watch.reference.labels, window, ert=policy.ert
                )
            )
        return raised

    # -- signals and incidents --------------------------------------------------------------

    def _record(
        self,
        tenant: str,
        version: int,
        kind: str,
        statistic: float,
        threshold: float,
        confirmed: bool,
        evidence: dict[str, Any],
    ) -> Signal:
        signal = self.signals.record(
            Signal(
                tenant=tenant,
                kind=kind,
                version=version,
                at=self.clock.now(),
                statistic=float(statistic),
                threshold=float(threshold),
                confirmed=bool(confirmed),
                evidence=evidence,
            )
        )
        if confirmed:
            self._incident(signal)
        return signal

    def _incident(self, signal: Signal) -> None:
        severity = self.policy(signal.tenant).incident
        if severity == "none":
            return
        incidents = Incidents(self.ws)
        for open_one in incidents.list(tenant=signal.tenant, status="open"):
            if open_one["kind"] == signal.kind and open_one["version"] == signal.version:
                return
        incidents.open(
            signal.tenant,
            severity=severity,
            kind=signal.kind,
            summary=(
                f"{signal.kind} of v{signal.version}: statistic {signal.statistic:.4g} over "
                f"its calibrated threshold {signal.threshold:.4g}"
            ),
            evidence={"signal": signal.id, **signal.evidence},
            actions=["reported"],
            version=signal.version,
        )


DRIFT_KINDS = frozenset({"drift.embedding", "drift.prediction", "drift.label"})
_SLICE_TESTS = {
    "embedding": "mmd, permutation p-value",
    "prediction": "chi-square, permutation p-value",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def drift_view(ws: Workspace, tenant: str, *, limit: int = 20) -> dict[str, Any]:
    """A tenant's drift: its policy, the newest result of each test and of each slice's
    tests, its newest alarms (confirmed signals, slices' included) and how many served
    predictions are kept for the tests."""
    info = ws.tenants.get(tenant)
    signals = Signals(ws)
    latest = {kind: signals.latest(tenant, kind) for kind in sorted(DRIFT_KINDS)}
    alarms = signals.since(tenant, _EPOCH, kinds=DRIFT_KINDS | {"slice.drift"}, newest=limit)
    kept = ws.conn.execute(
        "SELECT COALESCE(SUM(count), 0) FROM served_embeddings WHERE tenant_id = ?", (info.id,)
    ).fetchone()[0]
    policy = ws.settings.drift.for_tenant(tenant)
    fields = policy.slice_fields
    if fields is None:
        fields = ws.settings.performance.slice_fields
    return {
        "tenant": tenant,
        "policy": {
            **policy.model_dump(),
            "slice_fields": list(fields),
        },
        "latest": {k: None if s is None else s.to_dict() for k, s in latest.items()},
        "slices": slice_view(signals, tenant),
        "alarms": [s.to_dict() for s in reversed(alarms)],
        "kept_predictions": int(kept),
    }


def _oof(scope: TenantScope, run_id: str | None) -> dict[str, Any] | None:
    """The round's out-of-fold predictions (``{"ids", "predicted"}``), None when it kept
    none."""
    if run_id is None:
        return None
    try:
        oof: dict[str, Any] = json.loads(scope.blobs.get(OOF_BLOB.format(run_id=run_id)))
    except NotFoundError:
        return None
    return oof


def _out_of_fold(
    oof: dict[str, Any] | None, lineage: dict[str, Any], policy: DriftPolicy, seed: str
) -> list[str]:
    """A seeded sample of at most ``reference_size`` of the round's out-of-fold predicted
    labels: of its new records when they fill a window or more (the warm-start prior of
    their fold models never saw them), else of every record it trained on; empty when the
    round kept none."""
    if oof is None:
        return []
    predicted = [str(p) for p in oof["predicted"]]
    new = int(lineage.get("new_records") or 0)
    if lineage.get("replay_records") and new >= policy.window:
        predicted = predicted[:new]  # a warm round trains on its new records, then replay
    return random.Random(seed).sample(predicted, min(policy.reference_size, len(predicted)))


def _slice_values(meta: dict[str, Any]) -> dict[str, str]:
    """The ``meta`` values of a record that can name a slice, as text."""
    return {k: v for k in meta if (v := slice_value(meta, k)) is not None}


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
