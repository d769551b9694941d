"""The plan stage: what a round will do, decided before any worker starts.

``plan_round`` checks the tenant may train, settles the adapter kind, seed, privacy (DP or
not, the target epsilon, the ledger's precheck), the shared trunk, the canaries and any
training overrides: a ``RoundPlan``. ``anchor`` then fixes, under the tenant's run slot,
what the run starts from: the serving version (its parent) and the cutoff (``Anchor``).

The cutoff of a run is the newest eval record's time unless given: a run never trains on a
record stamped after the eval window it is judged on, and never moves back in time from its
parent's cutoff."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from silolearn.audit.log import utcnow
from silolearn.errors import InvalidInput, TenantQuarantined
from silolearn.privacy.ledger import tenant_scope
from silolearn.records import normalise_timestamp
from silolearn.registry.versions import AdapterRegistry, AdapterVersion
from silolearn.rounds.context import Coordinator
from silolearn.rounds.privacy import privacy_mode
from silolearn.storage.scope import Purpose


@dataclass(frozen=True)
class RoundPlan:
    tenant: str
    tenant_id: str
    kind: str
    seed: int
    private: bool
    target_epsilon: float | None
    trunk: dict[str, Any] | None
    """The shared trunk a member's head trains on (None off the shared layer)."""
    canaries: dict[str, int]
    overrides: dict[str, Any] | None
    """Training settings replaced for this run, as asked (kept in the lineage)."""
    training: dict[str, Any] | None
    """The validated training settings the overrides make (None: the workspace's)."""
    cutoff: str | None
    """The cutoff asked for (None: the newest eval record's time)."""


def adapter_kind(ctx: Coordinator, kind: str | None) -> str:
    kind = kind or ctx.config.adapter
    if kind not in ("head", "lora"):
        raise InvalidInput(f"unknown adapter kind {kind!r}: use head or lora")
    return kind


def plan_round(
    ctx: Coordinator,
    tenant: str,
    *,
    kind: str | None,
    seed: int | None,
    cutoff: str | None,
    dp: bool | None,
    epsilon: float | None,
    canaries: dict[str, int] | None,
    overrides: dict[str, Any] | None,
) -> RoundPlan:
    """The plan of one round of ``tenant``; refuses a tenant that is not active (audited)
    and a private run its ledger cannot pay."""
    ws = ctx.ws
    kind = adapter_kind(ctx, kind)
    info = ws.tenants.get(tenant)
    if info.status != "active":
        ws.audit.append(
            "access.denied",
            tenant=tenant,
            obj="train",
            details={"reason": info.status, "purpose": "training"},
        )
        raise TenantQuarantined(
            f"tenant {tenant!r} is {info.status}: no training until released", tenant=tenant
        )
    private, target = privacy_mode(ctx, tenant, dp, epsilon)
    if private:
        assert target is not None
        ws.ledger().precheck(
            tenant_scope(info.id), tenant=tenant, run_id="-", purpose="train", at_least=target
        )
    policy = ws.settings.gates.for_tenant(tenant)
    planted = {
        "secret": policy.canaries,
        "copies": policy.canary_copies,
        "audit": policy.audit_canaries if private else 0,
        **(canaries or {}),
    }
    return RoundPlan(
        tenant=tenant,
        tenant_id=info.id,
        kind=kind,
        seed=ctx.config.seed if seed is None else seed,
        private=private,
        target_epsilon=target,
        trunk=shared_trunk(ctx, tenant, kind),
        canaries=planted,
        overrides=overrides,
        training=_training(ctx, overrides),
        cutoff=cutoff,
    )


def _training(ctx: Coordinator, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    if not overrides:
        return None
    from silolearn.config import TrainingConfig

    try:
        return TrainingConfig.model_validate({**ctx.config.model_dump(), **overrides}).model_dump()
    except ValueError as exc:
        raise InvalidInput(f"bad training overrides: {exc}") from None


def shared_trunk(ctx: Coordinator, tenant: str, kind: str) -> dict[str, Any] | None:
    """The shared trunk a member's head trains on (its pinned version), or ``None`` for a
    tenant that has not joined (it never receives anything of the shared model)."""
    if kind != "head":
        return None
    from silolearn.learning.shared import shared_trunk_for

    return shared_trunk_for(ctx.ws, tenant)


@dataclass(frozen=True)
class Anchor:
    """What a run starts from, fixed under the tenant's run slot."""

    active: AdapterVersion | None
    parent: dict[str, Any] | None
    """The serving version as the training worker needs it (None for a first version)."""
    cutoff: str


def anchor(ctx: Coordinator, plan: RoundPlan, registry: AdapterRegistry) -> Anchor:
    active = registry.active()
    parent_cutoff = None if active is None else str(active.lineage.get("cutoff"))
    cutoff = cutoff_for(ctx, plan.tenant, plan.cutoff, parent_cutoff)
    parent = None
    if active is not None:
        parent = {
            "version": active.version,
            "run_id": active.run_id,
            "sha256": active.sha256,
            "cutoff": active.lineage.get("cutoff"),
            "max_seq": active.lineage.get("max_seq", 0),
            "dp": active.lineage.get("privacy", {}).get("mode") == "dp",
            "kind": active.kind,
            "trunk": active.lineage.get("trunk"),
        }
    return Anchor(active, parent, cutoff)


def cutoff_for(ctx: Coordinator, tenant: str, asked: str | None, parent_cutoff: str | None) -> str:
    """The cutoff asked for (never before the parent's), or the newest eval record's time
    (the newest training record's when there is no eval record yet)."""
    if asked is not None:
        try:
            cutoff = normalise_timestamp(asked)
        except ValueError:
            raise InvalidInput(f"cutoff {asked!r} is not an ISO-8601 time") from None
        if parent_cutoff is not None and cutoff < parent_cutoff:
            raise InvalidInput(
                f"cutoff {cutoff} is before the active version's cutoff {parent_cutoff}: "
                "a run never goes back in time"
            )
        return cutoff
    evaluation = ctx.ws.scope(tenant, purpose=Purpose.EVALUATION)
    latest = evaluation.eval.latest_timestamp()
    if latest is None:
        training = ctx.ws.scope(tenant, purpose=Purpose.TRAINING)
        latest = training.train.latest_timestamp() or utcnow()
    if parent_cutoff is not None and latest < parent_cutoff:
        return parent_cutoff
    return latest
