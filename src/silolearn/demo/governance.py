"""What the demo shows after its rounds: the accuracy-privacy sweep, the shared layer
against isolated shadows, the ledgers, the gates of the serving versions, the cross-tenant
divergence checks, the leak drill, and each tenant's first version against the serving one."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from silolearn.datasets import DATASETS, sample
from silolearn.demo.tenants import (
    LEAK_CANARIES,
    LEAK_DRILL,
    SHARED_TENANTS,
    SWEEP_EPSILONS,
    SWEEP_TENANT,
)
from silolearn.ingest.gateway import Gateway
from silolearn.learning.shared import SharedStore, SharedVersion
from silolearn.privacy.ledger import SHARED, tenant_scope
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose
from silolearn.validation.shadow import history as shadow_history
from silolearn.workspace import Workspace

INCIDENT_KEYS = ("id", "tenant", "severity", "kind", "version", "summary", "actions", "status")


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def gates_part(
    ws: Workspace, tenants: list[str], seen: list[dict[str, Any]], say: Any
) -> dict[str, Any]:
    """What the gates measured on each serving version, the cross-tenant divergence checks,
    then the leak drill: a deliberately leaky candidate of the sweep tenant, rejected, with
    its incident printed."""
    from silolearn.monitoring.incidents import Incidents
    from silolearn.validation.divergence import history

    table = Table(title="gates of the serving versions", title_justify="left")
    for column in ("tenant", "version", "membership AUC", "max exposure", "one-run ε ≥", "gates"):
        table.add_column(column)
    serving = []
    for name in tenants:
        active = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY)).active()
        if active is None:
            continue
        gates = {g["gate"]: g for g in active.decision.get("gates", [])}
        mi = gates.get("membership", {})
        canary = gates.get("canary", {}).get("metrics") or {}
        audit = gates.get("privacy_audit", {}).get("metrics") or {}
        row = {
            "tenant": name,
            "version": active.version,
            "membership_auc": (mi.get("metrics") or {}).get("auc"),
            "membership_auc_upper": (mi.get("metrics") or {}).get("auc_upper"),
            "membership_judged": mi.get("applicable", False),
            "max_exposure": canary.get("max_exposure"),
            "epsilon_lower_bound": audit.get("epsilon_lower_bound"),
            "accountant_epsilon": audit.get("accountant_epsilon"),
            "gates": {g: v["passed"] for g, v in gates.items()},
        }
        serving.append(row)
        auc = row["membership_auc"]
        table.add_row(
            name,
            f"v{active.version}",
            "not judged (too few eval records)"
            if not row["membership_judged"]
            else f"{auc:.3f} (≤ {row['membership_auc_upper']:.3f})",
            fmt(row["max_exposure"]),
            ""
            if row["epsilon_lower_bound"] is None
            else f"{row['epsilon_lower_bound']:.2f} (accountant {row['accountant_epsilon']})",
            f"{sum(row['gates'].values())}/{len(row['gates'])} passed",
        )
    say(table)
    checks = history(ws)
    isolated = [c for c in checks if not c["shared"]]
    shared = [c for c in checks if c["shared"]]
    moved = [c for c in isolated if not c["identical"]]
    say(
        f"cross-tenant divergence: {len(isolated)} checks of isolated tenants after other "
        f"tenants' rounds, {len(isolated) - len(moved)} bit-identical (KL 0); "
        f"{len(shared)} checks of shared-layer members, largest KL "
        f"{max((c['kl'] for c in shared), default=0.0):.4f}"
    )

    drill = leak_drill(ws, seen, say)
    incidents = Incidents(ws).list()
    for incident in incidents:
        say(
            f"incident {incident['id']} [{incident['severity']}] {incident['tenant']} "
            f"v{incident['version']}: {incident['kind']} — {incident['summary']} — actions: "
            f"{'; '.join(incident['actions'])}"
        )
    if drill is not None and ws.tenants.get(SWEEP_TENANT).status == "quarantined":
        # the operator's side: the drill's candidate was leaky on purpose and never served,
        # so its incidents are resolved and the tenant's training released
        # (`silolearn incidents resolve ID --note ...`, `silolearn tenant release NAME`)
        for incident in incidents:
            if incident["tenant"] == SWEEP_TENANT and incident["version"] == drill["version"]:
                Incidents(ws).resolve(
                    int(incident["id"]),
                    note="leak drill: the candidate was made leaky on purpose and was rejected",
                )
        ws.tenant(SWEEP_TENANT).release()
        say(f"drill incidents resolved; {SWEEP_TENANT}'s training released")
        drill["released"] = True
        incidents = Incidents(ws).list()
    return {
        "serving": serving,
        "divergence": {
            "isolated_checks": len(isolated),
            "isolated_identical": len(isolated) - len(moved),
            "shared_checks": len(shared),
            "shared_max_kl": max((c["kl"] for c in shared), default=0.0),
        },
        "drill": drill,
        "incidents": [{k: i[k] for k in INCIDENT_KEYS} for i in incidents],
    }


def leak_drill(ws: Workspace, seen: list[dict[str, Any]], say: Any) -> dict[str, Any] | None:
    """A deliberately leaky candidate of the sweep tenant on fresh records of its dataset:
    the membership and canary gates reject it, its incident opens, and the same ``train``
    call remediates (stronger regularisation, then DP-SGD). None when the tenant cannot
    train (quarantined) or its dataset has too few records left."""
    from silolearn.pipeline import Trainer

    trainer = Trainer(ws)
    seen_ids = {r["id"] for r in seen}
    fresh = [r for r in DATASETS[SWEEP_TENANT]() if r["id"] not in seen_ids]
    if ws.tenants.get(SWEEP_TENANT).status != "active" or len(fresh) < 100:
        return None
    Gateway(ws).ingest(SWEEP_TENANT, sample(fresh, 300, seed=5))
    say(
        f"leak drill: a deliberately leaky candidate of {SWEEP_TENANT} (500 epochs of a "
        "1,024-unit head, no weight decay, 32 canaries x 40 copies, 200 audit canaries)…"
    )
    leaky = trainer.train(SWEEP_TENANT, overrides=LEAK_DRILL, canaries=LEAK_CANARIES)
    first = leaky.attempts[0]
    registry = AdapterRegistry(ws.scope(SWEEP_TENANT, purpose=Purpose.REGISTRY))
    decision = registry.get(int(first["version"])).decision
    verdicts = {g["gate"]: g for g in decision["gates"]}
    say(f"  v{first['version']} {first['status']} ({decision.get('severity') or 'no incident'})")
    for gate in ("membership", "canary", "privacy_audit"):
        say(
            f"  {gate}: {'passed' if verdicts[gate]['passed'] else 'FAILED'} — "
            f"{verdicts[gate]['reason']}"
        )
    for attempt in leaky.attempts[1:]:
        say(
            f"  remediation, {attempt['what']}: "
            + ("" if attempt.get("version") is None else f"v{attempt['version']} ")
            + f"{attempt['status']}"
            + (f" ({', '.join(attempt['failed'])})" if attempt.get("failed") else "")
        )
    if leaky.explanation:
        say(f"  {leaky.explanation}")
    return {
        "version": first["version"],
        "status": first["status"],
        "severity": decision.get("severity"),
        "gates": [verdicts[g] for g in ("membership", "canary", "privacy_audit")],
        "attempts": leaky.attempts,
        "serving_after": trainer.serving_version(SWEEP_TENANT),
    }


def shared_line(version: SharedVersion) -> str:
    privacy = version.lineage["privacy"]
    plan, charge, noise = privacy["plan"], privacy["charge"], privacy["noise"]
    members = ", ".join(
        f"{m['tenant']} ({m['records']} records, pid {m['worker_pid']})"
        for m in version.lineage["members"]
    )
    return (
        f"shared layer v{version.version}: DP-SGD over {members}: {plan['steps']} steps at "
        f"q={plan['sampling_rate']:.3f}, sigma={plan['noise_multiplier']:.2f}, noise added once "
        f"by the coordinator (std {noise['std']:.3f}, measured {noise['measured_std']:.3f}); "
        f"shared ε {charge['epsilon_before']:.2f} → {charge['epsilon_after']:.2f} of "
        f"{charge['epsilon_budget']:g}"
    )


def privacy_part(
    ws: Workspace, result: dict[str, Any], tenants: list[str], say: Any
) -> dict[str, Any]:
    """The accuracy-privacy sweep, the shared layer against isolated shadows, the ledgers."""
    from silolearn.pipeline import Trainer

    trainer = Trainer(ws)
    sweeps = []
    if ws.tenants.get(SWEEP_TENANT).status == "active":
        say(f"accuracy-privacy sweep of {SWEEP_TENANT} (candidates never promoted)…")
        sweeps.append(trainer.sweep(SWEEP_TENANT, SWEEP_EPSILONS))
        say(_sweep_table(sweeps[0]))
    else:
        say(f"no sweep: {SWEEP_TENANT}'s training is quarantined (see the incidents)")
    comparison = []
    store = SharedStore(ws)
    if store.latest() is not None:
        for name in SHARED_TENANTS:
            active = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY)).active()
            if active is None or not active.lineage.get("trunk"):
                continue
            if ws.tenants.get(name).status != "active":
                continue
            # a member's first round on a shared version already compared it with an
            # isolated shadow (Trainer.train); run one only when that has not happened
            if trainer.wants_shadow(name) or not shadow_history(ws, name):
                trainer.shadow(name)
            check = shadow_history(ws, name)[-1]
            registry = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY))
            serving = registry.get(int(check["version"])).metrics
            isolated = registry.get(int(check["shadow_version"])).metrics
            comparison.append(
                {
                    "tenant": name,
                    "shared_version": check["shared_version"],
                    "shared": {k: serving.get(k) for k in ("accuracy", "macro_f1")},
                    "isolated": {k: isolated.get(k) for k in ("accuracy", "macro_f1")},
                    "eval_records": serving.get("eval_records"),
                    "disagreement": check["disagreement"],
                    "kl": check["kl"],
                    "probes": check["probes"],
                }
            )
        if comparison:
            say(_comparison_table(comparison))
    ledger = ws.ledger()
    ledgers = []
    for name in tenants:
        summary = ledger.summary(tenant_scope(ws.tenants.get(name).id))
        if summary["explicit"] or summary["events"]:
            summary.pop("events")
            ledgers.append({"name": name, **summary})
    shared_summary = ledger.summary(SHARED)
    shared_summary.pop("events")
    ledgers.append({"name": "shared", **shared_summary})
    for entry in ledgers:
        say(
            f"ledger {entry['name']}: ε spent {entry['epsilon_spent']:.3f} of "
            f"{entry['epsilon_budget']:g} (RDP bound {entry['epsilon_spent_rdp_bound']:.3f}), "
            f"{entry['runs']} run(s)"
        )
    dp_rounds = [
        {
            "tenant": e["tenant"],
            "version": e["version"],
            "status": e["status"],
            "accuracy": e["accuracy_after"],
            "macro_f1": e["macro_f1_after"],
            **e["dp"],
        }
        for r in result["rounds"]
        for e in r["tenants"]
        if "dp" in e
    ]
    versions = [
        {
            "version": v.version,
            "trunk_sha256": v.trunk_sha256,
            "members": [m["tenant"] for m in v.lineage["members"]],
            "records": v.lineage["privacy"]["plan"]["records"],
            "steps": v.lineage["privacy"]["plan"]["steps"],
            "noise_multiplier": v.lineage["privacy"]["plan"]["noise_multiplier"],
            "epsilon_after": v.lineage["privacy"]["charge"]["epsilon_after"],
            "clipped_mean": v.lineage["privacy"]["clipping"]["fraction_clipped"]["mean"],
            "noise_std": v.lineage["privacy"]["noise"]["std"],
            "measured_noise_std": v.lineage["privacy"]["noise"]["measured_std"],
        }
        for v in store.versions()
    ]
    return {
        "ledgers": ledgers,
        "sweeps": sweeps,
        "dp_rounds": dp_rounds,
        "shared": {"versions": versions, "comparison": comparison},
    }


def _sweep_table(report: dict[str, Any]) -> Table:
    charged = report.get("charged") or {}
    table = Table(
        title=(
            f"accuracy vs ε: {report['tenant']}, {report['records']} records, "
            f"{report['eval_records']} eval records; charged ε "
            f"{charged.get('epsilon_before', 0):.2f} → {charged.get('epsilon_after', 0):.2f}"
        ),
        title_justify="left",
    )
    for column in ("ε", "version", "sigma", "steps", "accuracy", "macro-F1", "clipped"):
        table.add_column(column, justify="right")
    for r in report["results"]:
        table.add_row(
            "non-private" if r["epsilon"] is None else f"{r['epsilon']:g}",
            f"v{r['version']}",
            "—" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.2f}",
            str(r["steps"]),
            f"{r['accuracy']:.3f}",
            f"{r['macro_f1']:.3f}",
            "—" if r["clipped"] is None else f"{r['clipped']:.0%}",
        )
    return table


def _comparison_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="shared layer vs an isolated shadow head (same records, same eval records)",
        title_justify="left",
    )
    columns = ("tenant", "shared", "accuracy isolated → shared", "macro-F1", "disagree", "KL")
    for column in columns:
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for r in rows:
        table.add_row(
            r["tenant"],
            f"v{r['shared_version']}",
            f"{r['isolated']['accuracy']:.3f} → {r['shared']['accuracy']:.3f}",
            f"{r['isolated']['macro_f1']:.3f} → {r['shared']['macro_f1']:.3f}",
            f"{r['disagreement']:.3f} of {r['probes']}",
            f"{r['kl']:.3f}",
        )
    return table


def first_vs_last(ws: Workspace, tenants: list[str]) -> list[dict[str, Any]]:
    """Each tenant's first version and the version serving now, on the same eval records
    (everything up to the serving version's cutoff), by an evaluation worker."""
    from silolearn.pipeline import Trainer

    out: list[dict[str, Any]] = []
    for name in tenants:
        registry = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY))
        versions = registry.list()
        serving = registry.active()
        if not versions or serving is None:
            out.append({"tenant": name, "first": None, "serving": None, "gain": None})
            continue
        first = versions[0]
        if first.version == serving.version:
            accuracy = serving.metrics.get("accuracy")
            out.append(
                {
                    "tenant": name,
                    "first": {"version": first.version, "accuracy": accuracy},
                    "serving": {"version": serving.version, "accuracy": accuracy},
                    "eval_n": serving.metrics.get("n"),
                    "gain": 0.0,
                }
            )
            continue
        evaluated = Trainer(ws).evaluate(name, serving, first)["versions"]
        now, then = evaluated[str(serving.version)], evaluated[str(first.version)]
        out.append(
            {
                "tenant": name,
                "first": {"version": first.version, "accuracy": then["accuracy"]},
                "serving": {"version": serving.version, "accuracy": now["accuracy"]},
                "macro_f1": {"first": then["macro_f1"], "serving": now["macro_f1"]},
                "eval_n": now["n"],
                "gain": round(now["accuracy"] - then["accuracy"], 6),
            }
        )
    return out


def progress_table(progress: list[dict[str, Any]], rounds: int) -> Table:
    table = Table(
        title=f"round 1 → round {rounds}: first version vs the one serving, same eval records",
        title_justify="left",
    )
    for column in ("tenant", "first", "serving", "eval records", "accuracy", "gain"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for p in progress:
        if p["first"] is None:
            table.add_row(p["tenant"], "—", "—", "—", "—", "—")
            continue
        gain = p["gain"]
        colour = "green" if gain > 0 else "yellow" if gain == 0 else "red"
        table.add_row(
            p["tenant"],
            f"v{p['first']['version']}",
            f"v{p['serving']['version']}",
            str(p.get("eval_n")),
            f"{p['first']['accuracy']:.3f} → {p['serving']['accuracy']:.3f}",
            f"[{colour}]{gain:+.3f}[/]",
        )
    return table
