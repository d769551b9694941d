"""The watch stage: what follows a round. The per-label report (what the run trained on
and was judged on; warnings for labels that vanished), the cross-tenant divergence check
(every other tenant's serving predictions against its snapshot, I4), the isolated shadow
of a shared-layer member's serving version, and the I2 probe."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from silolearn.errors import ConflictError, NotFoundError, TenantQuarantined
from silolearn.privacy.ledger import tenant_scope
from silolearn.registry.versions import AdapterRegistry
from silolearn.rounds.context import Coordinator, Progress
from silolearn.rounds.judge import evaluate_side_runs, headline
from silolearn.rounds.result import RoundResult
from silolearn.rounds.run import exchange, side_run
from silolearn.storage.scope import Purpose
from silolearn.worker.runner import run_slot


def watch(
    ctx: Coordinator, result: RoundResult, *, progress: Progress | None, divergence: bool
) -> None:
    """After a round of ``result.tenant``: the label report, the divergence check (unless
    ``divergence`` is off) and, on a shared version's first round, the shadow."""
    tenant = result.tenant
    label_report(ctx, result)
    if divergence:
        t0 = time.perf_counter()
        checks = check_divergence(
            ctx, event=f"round {tenant} v{result.version} ({result.status})", source=tenant
        )
        result.divergence = [
            {k: c[k] for k in ("tenant", "identical", "kl", "shared")} for c in checks
        ]
        result.timings["divergence"] = round(time.perf_counter() - t0, 4)
    if result.status == "active" and wants_shadow(ctx, tenant):
        # the first round on a shared version: compare it with an isolated shadow
        t0 = time.perf_counter()
        result.shadow = shadow(ctx, tenant, progress=progress)
        result.timings["shadow"] = round(time.perf_counter() - t0, 4)


def label_report(ctx: Coordinator, result: RoundResult) -> None:
    """Per label, what the run trained on and was judged on; labels that vanished from
    training or whose share collapsed are warnings on the result and audited events."""
    from silolearn.ingest.health import label_warnings

    trained = result.lineage.get("label_counts") or {}
    new = result.lineage.get("new_label_counts") or {}
    judged = {
        label: int(c.get("support", 0))
        for label, c in (result.metrics.get("per_class") or {}).items()
    }
    result.labels = {
        label: {
            "train": int(trained.get(label, 0)),
            "new": int(new.get(label, 0)),
            "eval": judged.get(label, 0),
        }
        for label in sorted(set(trained) | set(judged))
    }
    warnings = label_warnings(trained, {k: v for k, v in judged.items() if v})
    result.warnings = [w.to_dict() for w in warnings]
    for w in warnings:
        ctx.ws.audit.append(
            "train.label_warning",
            tenant=result.tenant,
            obj=f"v{result.version}",
            details=w.audit_details(),
        )


def check_divergence(
    ctx: Coordinator, *, event: str, source: str | None, exclude: Sequence[str] = ()
) -> list[dict[str, Any]]:
    from silolearn.validation.divergence import check

    return check(ctx.ws, event=event, source=source, exclude=exclude)


def shadow(ctx: Coordinator, tenant: str, *, progress: Progress | None = None) -> dict[str, Any]:
    """The active version against an isolated shadow: a non-private head trained from
    scratch on the same records up to the active version's cutoff, without the shared
    layer, evaluated on the same eval records. Shows what the shared layer adds."""
    ws = ctx.ws
    info = ws.tenants.get(tenant)
    if info.status != "active":
        raise TenantQuarantined(f"tenant {tenant!r} is {info.status}", tenant=tenant)
    if ws.ledger().policy(tenant_scope(info.id)).mode == "dp":
        raise ConflictError(
            f"tenant {tenant!r} requires differential privacy: no non-private shadow"
        )
    with run_slot(ws.path / "locks" / "train", info.id, tenant, ctx.config.max_runs_per_tenant):
        registry = AdapterRegistry(ws.scope(tenant, purpose=Purpose.TRAINING))
        active = registry.active()
        if active is None:
            raise NotFoundError(f"tenant {tenant!r} has no active version to compare")
        cutoff = str(active.lineage["cutoff"])
        candidate = side_run(
            ctx,
            tenant,
            registry,
            kind="head",
            seed=int(active.lineage.get("seed", ctx.config.seed)),
            cutoff=cutoff,
            on_request=None,
            tag={"shadow": {"of": active.version, "trunk": active.lineage.get("trunk")}},
            progress=progress,
        )
        evaluation = evaluate_side_runs(
            ctx,
            tenant,
            registry,
            cutoff,
            [candidate],
            also=[active],
            reason="isolated shadow of the serving version: never promoted",
            progress=progress,
        )
    active_m = evaluation["versions"][str(active.version)]
    shadow_m = evaluation["versions"][str(candidate.version)]
    from silolearn.validation import shadow as shadows

    check = shadows.check(ws, tenant, active, registry.get(candidate.version))
    ws.audit.append(
        "shadow.compare",
        tenant=tenant,
        obj=f"v{active.version}",
        details={
            "shadow": candidate.version,
            "accuracy": [active_m["accuracy"], shadow_m["accuracy"]],
            "macro_f1": [active_m["macro_f1"], shadow_m["macro_f1"]],
        },
    )
    return {
        "tenant": tenant,
        "serving": {"version": active.version, **headline(active_m)},
        "isolated": {"version": candidate.version, **headline(shadow_m)},
        "shared_version": (active.lineage.get("trunk") or {}).get("version"),
        "eval_records": evaluation["eval_records"],
        "check": check,
    }


def wants_shadow(ctx: Coordinator, tenant: str) -> bool:
    """Whether ``tenant``'s serving version runs on a shared version that has no shadow
    comparison yet (and its policy asks for one; a DP-only tenant has no shadow)."""
    from silolearn.validation import shadow as shadows

    ws = ctx.ws
    if not ws.settings.gates.for_tenant(tenant).shadow:
        return False
    info = ws.tenants.get(tenant)
    if info.status != "active" or ws.ledger().policy(tenant_scope(info.id)).mode == "dp":
        return False
    active = AdapterRegistry(ws.scope(tenant, purpose=Purpose.REGISTRY)).active()
    if active is None:
        return False
    trunk = (active.lineage.get("trunk") or {}).get("version")
    if trunk is None:
        return False
    return all(c["shared_version"] != trunk for c in shadows.history(ws, tenant))


def probe(ctx: Coordinator, tenant: str, *, others: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the I2 probe: a training worker of ``tenant`` tries what isolation forbids,
    against ``others`` (default: every other tenant)."""
    ws = ctx.ws
    targets = [
        {"id": t.id, "name": t.name, "blob_dir": str(ws.tenants.blob_dir(t.id).resolve())}
        for t in ws.tenants.list()
        if t.name != tenant and (others is None or t.name in others)
    ]
    info = ws.tenants.get(tenant)
    files = {
        "database": str((ws.path / "silolearn.db").resolve()),
        "keyring": str((ws.path / "keys" / "keyring.json").resolve()),
        "audit_head": str((ws.path / "audit" / "head.json").resolve()),
        "blob_dir": str(ws.tenants.blob_dir(info.id).resolve()),
    }
    # one of the tenant's eval records as the ciphertext a worker reading the database
    # behind the coordinator's back would find: the probe tries its keys on it
    row = ws.conn.execute(
        "SELECT rid, box FROM eval_records WHERE tenant_id = ? ORDER BY seq LIMIT 1", (info.id,)
    ).fetchone()
    eval_box = None if row is None else {"object_id": bytes(row[0]).hex(), "box": bytes(row[1])}
    params = {
        "others": targets,
        "sealed": ws.settings.keys.sealed,
        "files": files,
        "eval_box": eval_box,
    }
    return exchange(ctx, tenant, "probe", params, None)
