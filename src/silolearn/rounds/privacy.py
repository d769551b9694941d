"""Differential privacy around the run stage: whether a run is private and at what target,
the DP-SGD plan, and the answer to a DP worker's ``plan`` question, which charges the
tenant's ledger (or refuses) before the worker trains (I9)."""

from __future__ import annotations

from typing import Any

from silolearn.errors import ConflictError, InvalidInput
from silolearn.learning.dp import DpPlan, sampling
from silolearn.privacy.accountant import calibrate_noise
from silolearn.privacy.ledger import tenant_scope
from silolearn.rounds.context import Coordinator
from silolearn.worker.runner import Request


def privacy_mode(
    ctx: Coordinator, tenant: str, dp: bool | None, epsilon: float | None
) -> tuple[bool, float | None]:
    """Whether a run of ``tenant`` is DP, and its target epsilon: the tenant's policy
    (``privacy.mode = dp``) makes DP required; ``--dp`` / ``--epsilon`` ask for it."""
    info = ctx.ws.tenants.get(tenant)
    policy = ctx.ws.ledger().policy(tenant_scope(info.id))
    if policy.mode == "dp" and dp is False:
        raise ConflictError(
            f"tenant {tenant!r} requires differential privacy (privacy mode dp): a "
            "non-private run is refused",
            tenant=tenant,
        )
    private = policy.mode == "dp" or bool(dp) or epsilon is not None
    if not private:
        return False, None
    target = policy.run_epsilon if epsilon is None else float(epsilon)
    if not target > 0:
        raise InvalidInput(f"epsilon must be positive, not {epsilon}")
    return True, target


def plan_dp(
    ctx: Coordinator, *, records: int, kind: str, target_epsilon: float, delta: float
) -> DpPlan:
    """The DP-SGD plan of a run on ``records`` records at ``target_epsilon``: Poisson
    sampling rate and steps from the settings, noise calibrated by the ledger's
    accountant so that the run alone costs at most ``target_epsilon``."""
    p = ctx.ws.settings.privacy
    if kind == "lora":
        q = min(1.0, min(ctx.config.batch_size, 16) / records)
        steps = p.lora_steps
    else:
        q, steps = sampling(records, p.batch_size, p.epochs)
    sigma = calibrate_noise(
        target_epsilon=target_epsilon,
        delta=delta,
        sampling_rate=q,
        steps=steps,
        accountant=p.accountant,
    )
    return DpPlan(
        records=records,
        sampling_rate=q,
        noise_multiplier=sigma,
        steps=steps,
        max_grad_norm=p.max_grad_norm,
        learning_rate=p.learning_rate,
        target_epsilon=target_epsilon,
        delta=delta,
    )


def dp_request(
    ctx: Coordinator, tenant: str, run_id: str, purpose: str, target_epsilon: float
) -> Request:
    """Answers a DP worker's ``plan`` question: plan, charge the ledger (or refuse)."""
    info = ctx.ws.tenants.get(tenant)
    scope = tenant_scope(info.id)

    def answer(name: str, details: dict[str, Any]) -> dict[str, Any]:
        if name != "plan":
            raise InvalidInput(f"a training worker cannot ask {name!r}")
        ledger = ctx.ws.ledger()
        plan = plan_dp(
            ctx,
            records=int(details["records"]),
            kind=str(details["kind"]),
            target_epsilon=target_epsilon,
            delta=ledger.policy(scope).delta,
        )
        charge = ledger.charge(
            scope, tenant=tenant, run_id=run_id, purpose=purpose, planned=[plan.event]
        )
        return {"plan": plan.to_dict(), "charge": charge.to_dict()}

    return answer
