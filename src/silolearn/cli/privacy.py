"""Commands: `privacy ...` (budget, policy, ledger, sweep), `shared ...` (join, leave, pin,
train, list)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from silolearn.cli.base import (
    JsonOpt,
    WorkspaceOpt,
    _table,
    command,
    emit,
    opened,
    out,
    privacy_app,
    shared_app,
)
from silolearn.errors import (
    InvalidInput,
)
from silolearn.workspace import Workspace

# -- privacy ---------------------------------------------------------------------------------


def _privacy_scope(ws: Workspace, tenant: str | None, shared: bool) -> tuple[str, str | None]:
    from silolearn.privacy.ledger import SHARED, tenant_scope

    if shared == (tenant is not None):
        raise InvalidInput("name one tenant, or use --shared for the shared model")
    if shared:
        return SHARED, None
    assert tenant is not None
    return tenant_scope(ws.tenants.get(tenant).id), tenant


TenantArg = Annotated[
    str | None,
    typer.Argument(help="Tenant (or --shared for the shared model).", show_default=False),
]
SharedOpt = Annotated[bool, typer.Option("--shared", help="The shared model's scope.")]


@privacy_app.command("budget")
@command
def privacy_budget(
    tenant: TenantArg = None,
    epsilon: Annotated[float | None, typer.Option(help="Lifetime epsilon budget.")] = None,
    delta: Annotated[float | None, typer.Option(help="The scope's delta.")] = None,
    shared: SharedOpt = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set (or show) a scope's privacy budget: epsilon at delta, over all its DP runs."""
    with opened(workspace) as ws:
        scope, name = _privacy_scope(ws, tenant, shared)
        ledger = ws.ledger()
        if epsilon is not None or delta is not None:
            ledger.set_policy(scope, tenant=name, epsilon_budget=epsilon, delta=delta)
        summary = ledger.summary(scope)
    summary.pop("events")
    emit(as_json, summary, lambda: out.print(_ledger_line(tenant or "shared", summary)))


@privacy_app.command("policy")
@command
def privacy_policy(
    tenant: str,
    mode: Annotated[str, typer.Option(help="dp (DP-SGD required) or off.")],
    epsilon: Annotated[
        float | None, typer.Option(help="Target epsilon of each run under this policy.")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's privacy mode: with dp, every training run of its adapter is DP-SGD."""
    from silolearn.privacy.ledger import tenant_scope

    with opened(workspace) as ws:
        scope = tenant_scope(ws.tenants.get(tenant).id)
        policy = ws.ledger().set_policy(scope, tenant=tenant, mode=mode, run_epsilon=epsilon)
    emit(
        as_json,
        policy.to_dict(),
        lambda: out.print(
            f"tenant {tenant}: privacy mode {policy.mode}, {policy.run_epsilon:g} per run, "
            f"budget {policy.epsilon_budget:g} at delta {policy.delta:g}"
        ),
    )


def _ledger_line(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name}: epsilon spent {s['epsilon_spent']:.3f} of {s['epsilon_budget']:g} "
        f"(delta {s['delta']:g}, {s['accountant']}; RDP bound {s['epsilon_spent_rdp_bound']:.3f}), "
        f"remaining {s['epsilon_remaining']:.3f}; mode {s['mode']}, {s['runs']} run(s)"
    )


@privacy_app.command("ledger")
@command
def privacy_ledger(
    tenant: TenantArg = None,
    shared: SharedOpt = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A scope's DP events, the epsilon they spend together, and what remains."""
    with opened(workspace) as ws:
        scope, _ = _privacy_scope(ws, tenant, shared)
        summary = ws.ledger().summary(scope)

    def human() -> None:
        out.print(
            _table(
                f"privacy ledger of {tenant or 'the shared model'}",
                ["#", "run", "purpose", "q", "sigma", "steps", "epsilon after", "at"],
                [
                    [
                        e["id"],
                        e["run_id"],
                        e["purpose"],
                        f"{e['sampling_rate']:.4f}",
                        f"{e['noise_multiplier']:.3f}",
                        e["steps"],
                        f"{e['epsilon_after']:.3f}",
                        e["created_at"][:19],
                    ]
                    for e in summary["events"]
                ],
            )
        )
        out.print(_ledger_line(tenant or "shared", summary))

    emit(as_json, summary, human)


@privacy_app.command("sweep")
@command
def privacy_sweep(
    tenant: str,
    epsilons: Annotated[str, typer.Option(help="Target epsilons, comma-separated.")] = "1,2,4,8",
    adapter: Annotated[str | None, typer.Option("--adapter", help="head or lora")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed [default: training.seed].")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy and macro-F1 against epsilon: one DP candidate per epsilon (and a
    non-private one), never promoted; their cost is charged to the tenant's ledger."""
    from silolearn.pipeline import Trainer

    try:
        targets = [float(e) for e in epsilons.split(",") if e.strip()]
    except ValueError:
        raise InvalidInput(f"--epsilons {epsilons!r}: give numbers like 1,2,4,8") from None
    with opened(workspace) as ws:
        report = Trainer(ws).sweep(tenant, targets, kind=adapter, seed=seed)
    emit(as_json, report, lambda: out.print(_sweep_table(report)))


def _sweep_table(report: dict[str, Any]) -> Table:
    rows = []
    for r in report["results"]:
        rows.append(
            [
                "non-private" if r["epsilon"] is None else f"{r['epsilon']:g}",
                f"v{r['version']}",
                "" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.3f}",
                r["steps"],
                f"{r['accuracy']:.3f}",
                f"{r['macro_f1']:.3f}",
                "" if r["clipped"] is None else f"{r['clipped']:.0%}",
                "; ".join(w.split(":")[0] for w in r["warnings"]),
            ]
        )
    charged = report.get("charged") or {}
    return _table(
        f"accuracy-privacy sweep of {report['tenant']} ({report['records']} records, "
        f"{report['eval_records']} eval records, delta {report['delta']:g}; charged "
        f"epsilon {charged.get('epsilon_before', 0):.2f} → {charged.get('epsilon_after', 0):.2f})",
        ["epsilon", "version", "sigma", "steps", "accuracy", "macro-F1", "clipped", "warnings"],
        rows,
    )


# -- the shared layer ------------------------------------------------------------------------


@shared_app.command("join")
@command
def shared_join(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Opt a tenant in: it contributes to the shared layer and its head trains on it."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        member = SharedStore(ws).join(tenant)
    emit(as_json, member, lambda: out.print(f"tenant {tenant} joined the shared layer"))


@shared_app.command("leave")
@command
def shared_leave(tenant: str, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Opt a tenant out: its next round trains a head without the shared layer."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        SharedStore(ws).leave(tenant)
    emit(as_json, {"tenant": tenant}, lambda: out.print(f"tenant {tenant} left the shared layer"))


@shared_app.command("pin")
@command
def shared_pin(
    tenant: str,
    version: Annotated[
        int | None, typer.Option(help="Shared version to pin [default: follow the latest].")
    ] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin the shared version a member's next rounds train on."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        member = SharedStore(ws).pin(tenant, version)
    emit(
        as_json,
        member,
        lambda: out.print(
            f"tenant {tenant} pinned to shared "
            + ("the latest version" if version is None else f"v{version}")
        ),
    )


@shared_app.command("train")
@command
def shared_train(
    tenants: Annotated[
        str | None, typer.Option(help="Members taking part, comma-separated [default: all].")
    ] = None,
    epsilon: Annotated[float | None, typer.Option(help="Target epsilon of this run.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initialisation.")] = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One DP-SGD run of the shared layer: each member's gradients in its own process,
    noise added once by the coordinator, charged to the shared ledger first."""
    from silolearn.rounds.shared import SharedTrainer

    names = None if tenants is None else [t.strip() for t in tenants.split(",") if t.strip()]
    with opened(workspace) as ws:
        version = SharedTrainer(ws).train(names, epsilon=epsilon, seed=seed)
    payload = version.to_dict()

    def human() -> None:
        privacy = version.lineage["privacy"]
        plan, charge = privacy["plan"], privacy["charge"]
        out.print(
            f"shared v{version.version}: {len(version.lineage['members'])} members, "
            f"{plan['records']} records, {plan['steps']} steps at q={plan['sampling_rate']:.4f}, "
            f"sigma={plan['noise_multiplier']:.3f}; epsilon {charge['epsilon_before']:.3f} → "
            f"{charge['epsilon_after']:.3f} of {charge['epsilon_budget']:g}"
        )
        for warning in privacy["warnings"]:
            out.print(f"[yellow]warning[/]: {warning}")

    emit(as_json, payload, human)


@shared_app.command("list")
@command
def shared_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Shared versions and members."""
    from silolearn.learning.shared import SharedStore

    with opened(workspace) as ws:
        store = SharedStore(ws)
        payload = {
            "versions": [v.to_dict() for v in store.versions()],
            "members": store.members(),
        }

    def human() -> None:
        out.print(
            _table(
                "shared versions",
                ["version", "members", "records", "epsilon after", "trunk sha256"],
                [
                    [
                        f"v{v['version']}",
                        ", ".join(m["tenant"] for m in v["lineage"]["members"]),
                        v["lineage"]["privacy"]["plan"]["records"],
                        f"{v['lineage']['privacy']['charge']['epsilon_after']:.3f}",
                        v["trunk_sha256"][:16],
                    ]
                    for v in payload["versions"]
                ],
            )
        )
        out.print(
            _table(
                "members",
                ["tenant", "joined", "pinned"],
                [
                    [m["tenant"], m["joined_at"][:19], m["pinned_version"] or "latest"]
                    for m in payload["members"]
                ],
            )
        )

    emit(as_json, payload, human)
