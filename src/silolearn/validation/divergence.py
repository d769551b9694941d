"""Cross-tenant divergence: did anything outside a tenant move its predictions?

Each tenant has a fixed probe set: its first ``divergence_probes`` eval records in the order
they were stored (the eval store is append-only, so the set never changes once full; a late
record with an earlier timestamp does not enter it). While it is not
full, a check runs on as many of the first records as the snapshot it compares with holds,
so records arriving after the snapshot never count as a change; after ``divergence_probes``
was lowered, on the snapshot's first rows. When a version
becomes active, its probabilities on the probe set are sealed as an eval blob of the tenant
(``eval/probes/v<version>``: derived from eval data, so no training scope can read it).
After any training round of any tenant and after any shared-model update, every other
tenant's active version is run on its probe set again and compared with its snapshot:

- a tenant not on the shared layer must be bit-identical (KL exactly 0): anything else is a
  SEV1 incident (I4 broken in production);
- a shared-layer member that follows the latest shared version is previewed on the new
  trunk: its KL is recorded and gated by ``shared_kl_bound`` (SEV2 above it, and the member
  stays pinned to the trunk it serves).

The coordinator does this in-process, one tenant's evaluation scope at a time (I1), on the
CPU with one thread and deterministic kernels so equal inputs give equal bits.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.audit.log import utcnow
from silolearn.errors import AccessDenied, NotFoundError
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.storage.scope import Purpose

if TYPE_CHECKING:
    from silolearn.learning.shared import SharedStore, SharedVersion
    from silolearn.tenancy.tenants import TenantInfo
    from silolearn.workspace import Workspace

FloatArray = npt.NDArray[np.float32]


@dataclass
class Probe:
    tenant: str
    version: AdapterVersion
    proba: FloatArray
    shared_version: int | None = None


class ProbeRunner:
    """Computes tenants' active predictions on their probe sets; loads the frozen encoder
    only when a probe embedding is not cached (or a version is a LoRA adapter)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._encoder: Any = None

    def encoder(self) -> Any:
        if self._encoder is None:
            from silolearn.learning.encoder import FrozenEncoder, base_model_record

            base = base_model_record(self.ws)
            self._encoder = FrozenEncoder.load(base.path, expected_sha256=base.sha256)
        return self._encoder

    def run(
        self,
        tenant: str,
        version: AdapterVersion,
        *,
        trunk: dict[str, Any] | None = None,
        probes: int | None = None,
    ) -> FloatArray | None:
        """``version``'s probabilities on ``tenant``'s probe set (``None`` without eval
        records); ``trunk`` previews a head on another shared trunk; ``probes`` takes only
        the first that many records of the set (the size of the snapshot compared with)."""
        from silolearn.learning.adapters import (
            Features,
            HeadAdapter,
            Trunk,
            deterministic_torch,
            load_adapter,
            read_artefact,
        )
        from silolearn.learning.encoder import EmbeddingCache, base_model_record

        deterministic_torch()
        ws = self.ws
        size = ws.settings.gates.for_tenant(tenant).divergence_probes
        if probes is not None:
            size = min(size, probes)
        scope = ws.scope(tenant, purpose=Purpose.EVALUATION)
        stored = scope.eval.first(size)
        if not stored:
            return None
        registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))
        data = registry.load_artefact(version)
        needs_encoder = version.kind != "head"
        adapter = load_adapter(data, encoder=self.encoder() if needs_encoder else None)
        if trunk is not None and isinstance(adapter, HeadAdapter) and adapter.trunk is not None:
            _, tensors = read_artefact(trunk["artefact"])
            new = Trunk(
                int(trunk["version"]),
                str(trunk["sha256"]),
                tensors["trunk.weight"],
                tensors["trunk.bias"],
            )
            if new.weight.shape == adapter.trunk.weight.shape:
                adapter.trunk = new
        texts = [s.record.text for s in stored]
        if adapter.needs_text:
            return np.asarray(adapter.predict_proba(Features(texts=texts)), dtype=np.float32)
        max_tokens = int(version.lineage.get("config", {}).get("max_tokens", 128))
        model_sha = base_model_record(ws).sha256
        cache = EmbeddingCache(scope, model_sha, namespace="eval/embeddings", max_tokens=max_tokens)
        keys = [scope.record_id_hash(s.record) for s in stored]
        cached = cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in cached]
        if missing:
            vectors = self.encoder().embed([texts[i] for i in missing], max_length=max_tokens)
            cache.put_many([keys[i] for i in missing], vectors)
            with contextlib.suppress(AccessDenied):
                cache.save()
            cached = cache.get_many(keys)
        matrix = np.stack([cached[k] for k in keys])
        return np.asarray(adapter.predict_proba(Features(embeddings=matrix)), dtype=np.float32)


def snapshot(ws: Workspace, tenant: str, runner: ProbeRunner | None = None) -> str | None:
    """Seal the active version's probe probabilities (what later checks compare with)."""
    registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY))
    active = registry.active()
    if active is None:
        return None
    proba = (runner or ProbeRunner(ws)).run(tenant, active)
    if proba is None:
        return None
    scope = ws.scope(tenant, purpose=Purpose.EVALUATION)
    buffer = io.BytesIO()
    np.save(buffer, proba, allow_pickle=False)
    with contextlib.suppress(AccessDenied):
        return scope.blobs.put(f"eval/probes/v{active.version}", buffer.getvalue()).sha256
    return None


def _snapshot_of(ws: Workspace, tenant: str, version: int) -> FloatArray | None:
    scope = ws.scope(tenant, purpose=Purpose.EVALUATION)
    try:
        data = scope.blobs.get(f"eval/probes/v{version}")
    except NotFoundError:
        return None
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)


def mean_kl(before: FloatArray, after: FloatArray) -> float:
    """Mean over probes of KL(before || after), in nats; exactly 0 for equal bits."""
    if before.shape != after.shape:
        return float("inf")
    if np.array_equal(before, after):
        return 0.0
    p = np.clip(before.astype(np.float64), 1e-12, 1.0)
    q = np.clip(after.astype(np.float64), 1e-12, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def check(
    ws: Workspace,
    *,
    event: str,
    source: str | None,
    exclude: Sequence[str] = (),
    shared_update: bool = False,
) -> list[dict[str, Any]]:
    """Compare every tenant's active predictions (but ``source``'s and ``exclude``'s) with
    its snapshot after ``event``; record each comparison and open incidents. Returns the
    rows recorded."""
    from silolearn.learning.shared import SharedStore

    runner = ProbeRunner(ws)
    store = SharedStore(ws)
    members = {m["tenant"]: m for m in store.members()}
    latest = store.latest()
    rows: list[dict[str, Any]] = []
    for info in ws.tenants.list():
        name = info.name
        if name == source or name in exclude or info.status == "shredding":
            continue
        row = _check_tenant(
            ws,
            runner,
            store,
            info,
            member=members.get(name),
            latest=latest,
            event=event,
            source=source,
            shared_update=shared_update,
        )
        if row is not None:
            rows.append(row)
    return rows


def _check_tenant(
    ws: Workspace,
    runner: ProbeRunner,
    store: SharedStore,
    info: TenantInfo,
    *,
    member: dict[str, Any] | None,
    latest: SharedVersion | None,
    event: str,
    source: str | None,
    shared_update: bool,
) -> dict[str, Any] | None:
    """Compare one tenant's active predictions with its snapshot, record the comparison and
    open its incidents; ``None`` if it has no active version or snapshot to compare."""
    name = info.name
    registry = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY))
    active = registry.active()
    if active is None:
        return None
    before = _snapshot_of(ws, name, active.version)
    if before is None:
        return None
    serving_trunk = (active.lineage.get("trunk") or {}).get("version")
    trunk = None
    shared_version = serving_trunk
    if (
        shared_update
        and member is not None
        and member.get("pinned_version") is None
        and latest is not None
        and serving_trunk is not None
        and latest.version != serving_trunk
    ):
        trunk = _preview_trunk(ws, store, name, latest.version)
        shared_version = latest.version
    # the probe set grows until it is full: compare on the records the snapshot saw
    after = runner.run(name, active, trunk=trunk, probes=int(before.shape[0]))
    if after is None:
        return None
    # and a policy may have made it smaller since: compare on the records both runs saw
    before = before[: after.shape[0]]
    identical = bool(np.array_equal(before, after))
    kl = mean_kl(before, after)
    on_shared = serving_trunk is not None
    row = {
        "event": event,
        "source": source,
        "tenant": name,
        "version": active.version,
        "shared": on_shared,
        "shared_version": shared_version,
        "probes": int(after.shape[0]),
        "identical": identical,
        "kl": kl,
    }
    _record(ws, info.id, row)
    policy = ws.settings.gates.for_tenant(name)
    if not on_shared and not identical:
        _open_moved_incident(ws, row)
    elif trunk is not None and kl > policy.shared_kl_bound:
        store.pin(name, serving_trunk)
        _open_shared_incident(ws, row, latest, serving_trunk, policy.shared_kl_bound)
    return row


def _preview_trunk(ws: Workspace, store: SharedStore, tenant: str, version: int) -> dict[str, Any]:
    """The latest shared trunk, read (and audited) to preview a member on it."""
    data, sha = store.trunk(version)
    ws.audit.append(
        "shared.read",
        tenant=tenant,
        obj=f"shared/v{version}",
        details={"trunk_sha256": sha, "purpose": "divergence preview"},
    )
    return {"version": version, "sha256": sha, "artefact": data}


def _record(ws: Workspace, tenant_id: str, row: dict[str, Any]) -> None:
    """Store one comparison and append its audit event, in one transaction."""
    with ws.audit.write() as conn:
        conn.execute(
            "INSERT INTO divergence_checks (event, source, tenant_id, version, shared, "
            "shared_version, probes, identical, kl, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["event"],
                row["source"],
                tenant_id,
                row["version"],
                int(row["shared"]),
                row["shared_version"],
                row["probes"],
                int(row["identical"]),
                row["kl"],
                utcnow(),
            ),
        )
        ws.audit.append_in(
            conn,
            "divergence.check",
            tenant=row["tenant"],
            obj=f"v{row['version']}",
            details={k: row[k] for k in ("event", "source", "identical", "kl", "probes")},
        )


def _open_moved_incident(ws: Workspace, row: dict[str, Any]) -> None:
    """SEV1: an isolated tenant's predictions moved (I4 broken in production)."""
    from silolearn.monitoring.incidents import Incidents

    name, version = row["tenant"], row["version"]
    Incidents(ws).open(
        name,
        severity="SEV1",
        kind="divergence",
        version=version,
        summary=f"predictions of {name} v{version} moved (KL {row['kl']:.3g}) after "
        f"{row['event']}: an isolated tenant must be bit-identical",
        evidence=row,
        actions=["alert"],
    )


def _open_shared_incident(
    ws: Workspace,
    row: dict[str, Any],
    latest: SharedVersion | None,
    serving_trunk: int | None,
    bound: float,
) -> None:
    """SEV2: the latest shared trunk would move a member too far; it stays pinned."""
    from silolearn.monitoring.incidents import Incidents

    name = row["tenant"]
    Incidents(ws).open(
        name,
        severity="SEV2",
        kind="shared_divergence",
        version=row["version"],
        summary=f"shared v{latest.version if latest else '?'} would move {name}'s "
        f"predictions by KL {row['kl']:.3g} > {bound}",
        evidence=row,
        actions=[f"pinned to shared v{serving_trunk}"],
    )


def history(ws: Workspace, tenant: str | None = None) -> list[dict[str, Any]]:
    query = (
        "SELECT d.event, d.source, t.name, d.version, d.shared, d.shared_version, d.probes, "
        "d.identical, d.kl, d.created_at FROM divergence_checks d JOIN tenants t "
        "ON t.id = d.tenant_id"
    )
    args: list[Any] = []
    if tenant is not None:
        query += " WHERE t.name = ?"
        args.append(tenant)
    keys = (
        "event",
        "source",
        "tenant",
        "version",
        "shared",
        "shared_version",
        "probes",
        "identical",
        "kl",
        "created_at",
    )
    out = []
    for row in ws.conn.execute(query + " ORDER BY d.id", args).fetchall():
        item = dict(zip(keys, row, strict=True))
        item["shared"] = bool(item["shared"])
        item["identical"] = bool(item["identical"])
        out.append(item)
    return out
