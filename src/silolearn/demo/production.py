"""The demo's production side, all through the HTTP API of a real ``silolearn serve``: rounds
started with ``POST /v1/tenants/{t}/rounds`` and followed on ``GET /v1/jobs/{id}``, each
round's traffic answered by ``predict``, part of it labelled back through ``feedback`` (the
dataset's true label, by ``prediction_id``), and the ``/metrics`` the service exported."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from rich.table import Table

from silolearn.datasets import DATASETS, sample
from silolearn.demo.client import ServiceClient
from silolearn.demo.governance import fmt
from silolearn.errors import InvalidInput, SiloError

TRAFFIC_PER_ROUND = 60
"""Texts each tenant's application sends to ``predict`` after each round."""
FEEDBACK_SHARE = 0.5
"""The share of them whose true label comes back through ``feedback``."""
REQUEST_TEXTS = 10
"""Texts per predict request, as an application batches what its users send."""
TRAFFIC_SEED = 11

Row = dict[str, Any]


def held_out_traffic(
    streams: dict[str, list[Row]], rounds: int, per_round: int = TRAFFIC_PER_ROUND
) -> dict[str, list[list[Row]]]:
    """Per tenant, ``rounds`` slices of records of its dataset that never arrive through
    ingest: the texts its application sends for predictions, in time order. A record whose
    text is blank is no request an application makes (``predict`` refuses it), so none is
    picked."""
    traffic: dict[str, list[list[Row]]] = {}
    for name, rows in streams.items():
        seen = {r["id"] for r in rows}
        unseen = [r for r in DATASETS[name]() if r["id"] not in seen and str(r["text"]).strip()]
        picked = sample(unseen, per_round * rounds, seed=TRAFFIC_SEED)
        traffic[name] = [picked[i * per_round : (i + 1) * per_round] for i in range(rounds)]
    return traffic


# -- rounds ----------------------------------------------------------------------------------


def api_rounds(
    client: ServiceClient, tenants: Sequence[str], ingested: dict[str, Row], cutoff: str
) -> list[Row]:
    """One round of each tenant through the API (the server runs them as background jobs,
    as many at once as its settings allow), each up to ``cutoff``; an entry per tenant."""
    jobs = {name: client.start_round(name, cutoff=cutoff) for name in tenants}
    entries = []
    for name, job in jobs.items():
        done = client.wait_for_job(name, job["id"])
        version = None if done["version"] is None else client.version(name, done["version"])
        entries.append(round_entry(done, version, ingested.get(name, {})))
    return entries


def _seconds(job: Row) -> float | None:
    if not job.get("started_at") or not job.get("finished_at"):
        return None
    started = datetime.fromisoformat(str(job["started_at"]))
    return (datetime.fromisoformat(str(job["finished_at"])) - started).total_seconds()


def round_entry(job: Row, version: Row | None, ingest: Row) -> Row:
    """What the round table and the report show of one tenant's round: the job's outcome,
    the version it made (metrics, lineage) and what the gateway did with its records."""
    metrics = (version or {}).get("metrics") or {}
    lineage = (version or {}).get("lineage") or {}
    before = metrics.get("compared_with") or {}
    status = str(job.get("outcome") or "failed")
    entry: Row = {
        "tenant": job["tenant"],
        "version": job.get("version"),
        "status": status,
        **{k: ingest.get(k) for k in ("arrived", "train", "eval", "contaminated", "duplicates")},
        "new_records": lineage.get("new_records"),
        "replay_records": lineage.get("replay_records"),
        "feedback_records": lineage.get("new_feedback_records"),
        "feedback_left_out": (lineage.get("feedback_loop") or {}).get("left_out"),
        "accuracy_before": before.get("accuracy"),
        "accuracy_after": metrics.get("accuracy"),
        "macro_f1_before": before.get("macro_f1"),
        "macro_f1_after": metrics.get("macro_f1"),
        "eval_n": metrics.get("n"),
        "seconds": _seconds(job),
        "sha256": (version or {}).get("sha256"),
        "records": lineage.get("records"),
        "all_records": lineage.get("all_records", False),
        "shared_version": (lineage.get("trunk") or {}).get("version"),
        "job": job["id"],
    }
    privacy = lineage.get("privacy") or {}
    if privacy.get("mode") == "dp":
        entry["dp"] = _dp(privacy)
    if status == "failed":
        error = job.get("error") or {}
        entry["decision"] = error.get("message") or error.get("error") or "failed"
    else:
        decision = (version or {}).get("decision") or {}
        gates = decision.get("gates") or [{}]
        entry["decision"] = gates[0].get("reason", decision.get("reason", ""))
    return entry


def _dp(privacy: Row) -> Row:
    charge = privacy.get("charge") or {}
    clipping = privacy.get("clipping") or {}
    plan = privacy.get("plan") or {}
    return {
        "target": plan.get("target_epsilon"),
        "epsilon_run": charge.get("epsilon_after", 0.0) - charge.get("epsilon_before", 0.0),
        "epsilon_total": charge.get("epsilon_after"),
        "noise_multiplier": plan.get("noise_multiplier"),
        "steps": plan.get("steps"),
        "clipped_mean": (clipping.get("fraction_clipped") or {}).get("mean"),
        "median_norm": clipping.get("median_norm"),
        "warnings": privacy.get("warnings", []),
    }


def round_table(round_no: int, rounds: int, entries: list[Row]) -> Table:
    table = Table(
        title=f"round {round_no}/{rounds} (POST /v1/tenants/…/rounds)", title_justify="left"
    )
    columns = ("tenant", "arrived", "train/eval", "version", "decision", "records", "feedback")
    for column in (*columns, "accuracy", "macro-F1", "seconds"):
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
            _feedback_cell(e),
            f"{fmt(e['accuracy_before'])} → {fmt(e['accuracy_after'])}",
            f"{fmt(e['macro_f1_before'])} → {fmt(e['macro_f1_after'])}",
            "—" if e["seconds"] is None else f"{e['seconds']:.1f}",
        )
    return table


def _feedback_cell(e: Row) -> str:
    """New records from production feedback the round trained on, and the self-confirmed
    ones it left out (over ``training.max_self_confirmed_share``)."""
    if e["feedback_records"] is None:
        return "—"
    left_out = e.get("feedback_left_out")
    return str(e["feedback_records"]) + (f" ({left_out} left out)" if left_out else "")


def _data_cell(e: Row) -> str:
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


# -- traffic and feedback --------------------------------------------------------------------


def serve_traffic(
    client: ServiceClient, tenant: str, rows: Sequence[Row], share: float = FEEDBACK_SHARE
) -> Row:
    """The tenant's application sends ``rows``' texts to ``predict``, a few per request,
    then returns the true label of every other answer up to ``share`` of them through
    ``feedback``. What came back: counts, versions that answered, one example."""
    predictions: list[Row] = []
    if not rows:  # the dataset has no record left that never arrived through ingest
        return {"tenant": tenant, "served": 0, "error": "no held-out record left to send"}
    try:
        for start in range(0, len(rows), REQUEST_TEXTS):
            batch = rows[start : start + REQUEST_TEXTS]
            predictions += client.predict(tenant, [r["text"] for r in batch])
    except SiloError as exc:  # nothing serves this tenant (its first round failed)
        return {"tenant": tenant, "served": len(predictions), "error": str(exc)}
    wanted = round(len(rows) * share)
    step = max(1, len(rows) // max(1, wanted))
    labelled = list(zip(rows, predictions, strict=True))[::step][:wanted]
    stored = {"train": 0, "eval": 0, "refused": 0, "duplicates": 0, "corrections": 0}
    for row, prediction in labelled:
        try:
            report = client.feedback(tenant, prediction["prediction_id"], str(row["label"]))
        except InvalidInput:  # refused by the gateway, e.g. a text too near an eval record
            stored["refused"] += 1
            continue
        for key in ("train", "eval", "duplicates"):
            stored[key] += int(report.get(key) or 0)
        # a correction (not the served label) stored for training
        stored["corrections"] += int(report.get("train") or 0) * (
            str(row["label"]) != prediction["label"]
        )
    right = sum(str(r["label"]) == p["label"] for r, p in zip(rows, predictions, strict=True))
    given_right = sum(str(r["label"]) == p["label"] for r, p in labelled)
    example_row, example = rows[0], predictions[0]
    return {
        "tenant": tenant,
        "served": len(predictions),
        "requests": -(-len(rows) // REQUEST_TEXTS),
        "versions": sorted({int(p["version"]) for p in predictions}),
        "accuracy": right / len(predictions) if predictions else None,
        "feedback": len(labelled),
        "feedback_accuracy": given_right / len(labelled) if labelled else None,
        **{f"feedback_{k}": v for k, v in stored.items()},
        "example": {
            "text": " ".join(example_row["text"].split())[:80],
            "label": example["label"],
            "p": example["probabilities"][example["label"]],
            "true": str(example_row["label"]),
            "version": example["version"],
        },
    }


def serve_round(client: ServiceClient, traffic: dict[str, Sequence[Row]]) -> list[Row]:
    """Every tenant's traffic at once (one application thread per tenant), so the server's
    micro-batches gather texts of several tenants."""
    with ThreadPoolExecutor(max_workers=len(traffic) or 1) as pool:
        futures = [pool.submit(serve_traffic, client, name, rows) for name, rows in traffic.items()]
        return [f.result() for f in futures]


def traffic_table(title: str, served: Iterable[Row]) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("tenant", "predict", "version", "right", "feedback", "→ train/eval", "example")
    for column in columns:
        table.add_column(column, justify="left" if column in ("tenant", "example") else "right")
    for s in served:
        if "error" in s:
            table.add_row(s["tenant"], str(s["served"]), "—", "—", "—", "—", s["error"][:60])
            continue
        example = s["example"]
        table.add_row(
            s["tenant"],
            f"{s['served']} in {s['requests']} requests",
            ", ".join(f"v{v}" for v in s["versions"]),
            fmt(s["accuracy"]),
            f"{s['feedback']} ({fmt(s['feedback_accuracy'])} right)",
            f"{s['feedback_train']}/{s['feedback_eval']}",
            f"{example['text'][:40]!r} → {example['label']} ({example['p']:.2f}; "
            f"true {example['true']})",
        )
    return table


# -- /metrics --------------------------------------------------------------------------------


def metrics_summary(samples: dict[str, list[tuple[dict[str, str], float]]]) -> Row:
    """The figures of ``/metrics`` the demo prints: predictions and mean latency per tenant
    and version, feedback accuracy per tenant and version, rounds by outcome, privacy
    budget remaining per scope, open incidents by severity."""

    def series(name: str, *keys: str) -> dict[tuple[str, ...], float]:
        return {tuple(labels[k] for k in keys): value for labels, value in samples.get(name, [])}

    count = series("silolearn_predict_latency_seconds_count", "tenant", "version")
    total = series("silolearn_predict_latency_seconds_sum", "tenant", "version")
    feedback = series("silolearn_feedback_accuracy", "tenant", "version")
    predictions = series("silolearn_predictions_total", "tenant", "version")
    serving = [
        {
            "tenant": tenant,
            "version": int(version),
            "predictions": int(predictions.get((tenant, version), 0)),
            "requests": int(count.get((tenant, version), 0)),
            "mean_latency_ms": 1000 * total[(tenant, version)] / count[(tenant, version)]
            if count.get((tenant, version))
            else None,
            "feedback_accuracy": feedback.get((tenant, version)),
        }
        for tenant, version in sorted(predictions, key=lambda k: (k[0], int(k[1])))
    ]
    rounds: dict[str, dict[str, int]] = {}
    for (tenant, outcome), value in series("silolearn_rounds_total", "tenant", "outcome").items():
        rounds.setdefault(tenant, {})[outcome] = int(value)
    return {
        "serving": serving,
        "rounds": rounds,
        "epsilon_remaining": {
            scope: value
            for (scope,), value in series("silolearn_privacy_epsilon_remaining", "scope").items()
        },
        "open_incidents": {
            severity: int(value)
            for (severity,), value in series("silolearn_open_incidents", "severity").items()
        },
    }


def metrics_tables(summary: Row) -> list[Table]:
    serving = Table(title="/metrics: predictions per tenant and version", title_justify="left")
    for column in ("tenant", "version", "predictions", "requests", "mean latency", "feedback acc."):
        serving.add_column(column, justify="left" if column == "tenant" else "right")
    for s in summary["serving"]:
        latency = s["mean_latency_ms"]
        serving.add_row(
            s["tenant"],
            f"v{s['version']}",
            str(s["predictions"]),
            str(s["requests"]),
            "—" if latency is None else f"{latency:.0f} ms",
            fmt(s["feedback_accuracy"]),
        )
    rounds = Table(title="/metrics: rounds by outcome, privacy budget left", title_justify="left")
    outcomes = sorted({o for per in summary["rounds"].values() for o in per})
    for column in ("tenant", *outcomes, "ε remaining"):
        rounds.add_column(column, justify="left" if column == "tenant" else "right")
    for tenant, per in sorted(summary["rounds"].items()):
        remaining = summary["epsilon_remaining"].get(f"tenant:{tenant}")
        rounds.add_row(
            tenant,
            *(str(per.get(o, 0)) for o in outcomes),
            "—" if remaining is None else f"{remaining:.2f}",
        )
    return [serving, rounds]
