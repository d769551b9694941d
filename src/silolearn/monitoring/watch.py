"""The drift monitor of a workspace's tenants: it receives what each tenant's version served
(embeddings and predicted labels, never texts), keeps it sealed in the tenant's scope, tests
it against the version's training window and records what it finds as signals.

The reference of a version is built the first time it serves: a seeded sample of the
training records up to its cutoff, read through the tenant's ingest scope and answered by
the version itself (``Answer``: the service passes its micro-batcher, asked for that
version, so a canary's reference is its own), which gives their embeddings and the
version's own predicted labels; the true labels are kept beside them for label drift. It
is cached as a blob sealed under the tenant's training key. The texts are never kept.

Per tenant and version: the online MMD detector takes every served embedding (a confirmed
``drift.embedding`` signal when it fires, an unconfirmed one with its statistic at the end
of each window); each full window of predicted labels is tested against the reference's
(``drift.prediction``), and each full window of new labelled records after the cutoff
(feedback) against the training window's labels (``drift.label``). A confirmed signal opens
an incident by policy (``[drift] incident``), one open per version and kind.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
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
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose
from silolearn.storage.served_embeddings import ServedBatch, ServedEmbeddings, pack, unpack

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

Answer = Callable[[str, int, Sequence[str]], tuple[int, npt.NDArray[np.float32] | None, list[str]]]
"""A tenant's version answering texts: ``(version that answered, embeddings or None,
labels)``; asked for a version, a canary's included, while it serves."""

_log = logging.getLogger("silolearn.monitoring")

REFERENCE_BLOB = "monitoring/reference-v{version}"
LABELS_BLOB = "monitoring/reference-labels-v{version}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A version's training window as drift monitoring keeps it."""

    version: int
    embeddings: npt.NDArray[np.float32] | None
    predicted: list[str]
    labels: list[str]
    cutoff: str


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


class DriftMonitor:
    """Drift of every tenant of one opened workspace; used from one thread."""

    def __init__(self, ws: Workspace, answer: Answer, *, clock: Clock = SYSTEM) -> None:
        self.ws = ws
        self.answer = answer
        self.clock = clock
        self.signals = Signals(ws)
        self._watches: dict[tuple[str, int], _Watch] = {}

    def policy(self, tenant: str) -> DriftPolicy:
        return self.ws.settings.drift.for_tenant(tenant)

    # -- the reference ----------------------------------------------------------------------

    def reference(self, tenant: str, version: int) -> Reference:
        """The version's reference, from its cached blob or built now."""
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        try:
            embeddings, predicted = unpack(scope.blobs.get(REFERENCE_BLOB.format(version=version)))
            meta = json.loads(scope.blobs.get(LABELS_BLOB.format(version=version)))
        except NotFoundError:
            return self._build_reference(tenant, version)
        has_embeddings = bool(meta["embedded"])
        return Reference(
            version,
            embeddings if has_embeddings else None,
            predicted,
            list(meta["labels"]),
            str(meta["cutoff"]),
        )

    def _build_reference(self, tenant: str, version: int) -> Reference:
        scope = self.ws.scope(tenant, purpose=Purpose.INGEST)
        entry = AdapterRegistry(scope).get(version)
        cutoff = str(entry.lineage.get("cutoff") or "")
        records = [s.record for s in scope.train.read(until=cutoff or None)]
        size = self.policy(tenant).reference_size
        picked = random.Random(f"{tenant}/{version}").sample(records, min(size, len(records)))
        if len(picked) < 2:
            raise InvalidInput(f"tenant {tenant!r} v{version} has no training window to watch")
        answered, embeddings, predicted = self.answer(tenant, version, [r.text for r in picked])
        if answered != version:
            raise InvalidInput(f"tenant {tenant!r} serves v{answered}, not v{version}")
        rows = embeddings if embeddings is not None else np.zeros((len(picked), 0), np.float32)
        labels = [r.label for r in picked if r.label is not None]
        scope.blobs.put(REFERENCE_BLOB.format(version=version), pack(rows, predicted))
        meta = {"labels": labels, "cutoff": cutoff, "embedded": embeddings is not None}
        scope.blobs.put(LABELS_BLOB.format(version=version), json.dumps(meta).encode())
        return Reference(version, embeddings, predicted, labels, cutoff)

    def _watch(self, tenant: str, version: int) -> _Watch:
        watch = self._watches.get((tenant, version))
        if watch is None:
            policy = self.policy(tenant)
            reference = self.reference(tenant, version)
            detector = None
            if reference.embeddings is not None and len(reference.embeddings) >= 2 * policy.window:
                detector = OnlineMMD(
                    window=policy.window,
                    ert=policy.ert,
                    bootstraps=policy.bootstraps,
                    seed=version,
                ).fit(reference.embeddings)
            watch = _Watch(reference, detector, labels_seen=reference.cutoff)
            self._watches[(tenant, version)] = watch
        return watch

    # -- what was served --------------------------------------------------------------------

    def observe(
        self,
        tenant: str,
        version: int,
        embeddings: npt.ArrayLike | None,
        labels: list[str],
    ) -> list[Signal]:
        """Keep and test one batch the version served; the signals it raised."""
        policy = self.policy(tenant)
        if not policy.enabled or not labels:
            return []
        watch = self._watch(tenant, version)
        rows = None if embeddings is None else np.asarray(embeddings, dtype=np.float32)
        if rows is not None:
            self._keep(tenant, version, watch, rows, labels, policy)
        raised: list[Signal] = []
        if watch.detector is not None and rows is not None:
            raised += self._embedding(tenant, version, watch, rows, policy)
        watch.predicted += labels
        while len(watch.predicted) >= policy.window:
            window, watch.predicted = (
                watch.predicted[: policy.window],
                watch.predicted[policy.window :],
            )
            raised.append(
                self._labels(tenant, version, "drift.prediction", watch.reference.predicted, window)
            )
            raised += self.check_labels(tenant, version)
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

    def _labels(
        self, tenant: str, version: int, kind: str, reference: list[str], window: list[str]
    ) -> Signal:
        policy = self.policy(tenant)
        alpha = level(policy.window, policy.ert)
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
                self._labels(tenant, version, "drift.label", watch.reference.labels, window)
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def drift_view(ws: Workspace, tenant: str, *, limit: int = 20) -> dict[str, Any]:
    """A tenant's drift: its policy, the newest result of each test, its newest alarms
    (confirmed signals) and how many served predictions are kept for the tests."""
    info = ws.tenants.get(tenant)
    signals = Signals(ws)
    latest = {kind: signals.latest(tenant, kind) for kind in sorted(DRIFT_KINDS)}
    alarms = signals.since(tenant, _EPOCH, kinds=DRIFT_KINDS, newest=limit)
    kept = ws.conn.execute(
        "SELECT COALESCE(SUM(count), 0) FROM served_embeddings WHERE tenant_id = ?", (info.id,)
    ).fetchone()[0]
    return {
        "tenant": tenant,
        "policy": ws.settings.drift.for_tenant(tenant).model_dump(),
        "latest": {k: None if s is None else s.to_dict() for k, s in latest.items()},
        "alarms": [s.to_dict() for s in reversed(alarms)],
        "kept_predictions": int(kept),
    }


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
