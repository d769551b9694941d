"""The tables of ``benchmarks/tenants.py``, from its raw results (also ``--tables-from``)."""

from __future__ import annotations

from typing import Any

from _common import Table, fmt_float, fmt_int, fmt_ratio

TFIDF_FEATURES = 50_000
"""Each TF-IDF view keeps its most frequent n-grams (``tenants.py`` fits with this)."""
SIGNAL = 0.01
"""A yardstick "beats the constant answer" when it is above it by more than this."""


def score(value: float | None) -> str:
    return "-" if value is None else fmt_float(value, 3)


def bits(value: float | None) -> str:
    return "-" if value is None else fmt_float(value, 1)


def at_least(value: float, floor: float) -> bool:
    """``value >= floor``, with the float error of a difference of fractions forgiven (a
    score exactly 0.01 below the yardstick's meets "within 0.01")."""
    return value >= floor - 1e-9


def p_value(value: float | None) -> str:
    return "-" if value is None else f"p {value:.2g}"


def outcome(summary: dict[str, Any]) -> str:
    status = summary["status"]
    if summary.get("version") is not None:
        status = f"v{summary['version']} {status}"
    failed = summary.get("failed_gates") or []
    if failed:
        status += f" ({', '.join(failed)}, {summary.get('severity')})"
    return status


def attempts_cell(summary: dict[str, Any]) -> str:
    """How many candidates the call made, and which one ended serving (or nothing)."""
    attempts = summary.get("attempts")
    if not attempts:
        return "-"
    made = [a for a in attempts if a.get("status") != "skipped"]
    serving = next((a for a in reversed(made) if a.get("status") == "active"), None)
    ends = f"{serving['what']} (v{serving['version']})" if serving else "nothing promoted"
    return f"{len(made)}: {ends}"


def attempts_detail(summary: dict[str, Any]) -> str:
    """Each attempt: what it tried, its outcome and failed gates."""
    cells = []
    for a in summary.get("attempts") or []:
        failed = a.get("failed") or []
        cells.append(
            f"{a['what']}: {a['status']}"
            + (f" ({', '.join(failed)}, {a.get('severity')})" if failed else "")
        )
    return "; ".join(cells)


def membership_cell(summary: dict[str, Any]) -> str:
    """The loss attack's AUC on the candidate and on the default learner (the excess is
    what the gate judges), the strongest attack's upper bound, and the non-members (eval
    records) the figures rest on; "not judged" below the gate's minimum."""
    metrics = summary.get("membership") or {}
    nonmembers = metrics.get("nonmembers")
    if not summary.get("membership_judged"):
        return f"not judged ({nonmembers if nonmembers is not None else '-'} eval)"
    upper = score(metrics.get("auc_upper"))
    cell = f"{metrics.get('strongest')} {score(metrics.get('auc'))} (upper {upper})"
    if metrics.get("baseline_auc") is not None:
        loss = (metrics.get("attacks") or {}).get("loss") or {}
        cell = (
            f"loss {score(loss.get('auc'))} vs default {score(metrics['baseline_auc'])}, "
            f"excess {float(metrics['excess_auc']):+.3f}; {cell}"
        )
    return f"{cell}; {nonmembers} eval"


def difference(held_out: dict[str, Any], yardstick: dict[str, Any]) -> str:
    if not held_out.get("model"):
        return "-"
    return (
        f"{held_out['accuracy'] - yardstick['accuracy']:+.3f} / "
        f"{held_out['macro_f1'] - yardstick['macro_f1']:+.3f}"
    )


def beats_constant(r: dict[str, Any]) -> bool:
    """Whether any yardstick beats the constant answer in accuracy or macro-F1."""
    fits = [r[k] for k in ("tfidf", "minilm", "tfidf_same", "minilm_same") if k in r]
    return any(
        float(fit[k]) > float(r["majority"][k]) + SIGNAL
        for fit in fits
        for k in ("accuracy", "macro_f1")
    )


def acceptance(r: dict[str, Any], minilm: dict[str, Any], tfidf: dict[str, Any]) -> tuple[str, str]:
    """Acceptance 1 and the goal for one tenant (see the quality table's note)."""
    head = r["head"]
    held_out, status = head["held_out"], head["round"].get("status")
    if not beats_constant(r):
        if held_out.get("model"):
            return "no (a version with no yardstick above the constant)", "-"
        return "yes (no learner beats the constant: no version, acceptance 6)", "-"
    if not held_out.get("model"):
        return "no", "no"
    accuracy, f1 = held_out["accuracy"], held_out["macro_f1"]
    near = at_least(accuracy, minilm["accuracy"] - 0.01)
    near = near and at_least(f1, minilm["macro_f1"] - 0.01)
    goal = at_least(accuracy, max(tfidf["accuracy"], minilm["accuracy"]))
    goal = goal and at_least(f1, max(tfidf["macro_f1"], minilm["macro_f1"]))
    return ("yes" if status == "active" and near else "no"), ("yes" if goal else "no")


def tables_for(results: list[dict[str, Any]], *, lora: bool, streamed: bool) -> list[Table]:
    quality = Table(
        "held-out accuracy / macro-F1 (20% by text hash, never ingested)",
        [
            "tenant",
            "records",
            "labels",
            "majority",
            "TF-IDF + LR",
            "MiniLM + LR",
            "TF-IDF + LR, same records",
            "MiniLM + LR, same records",
            "silolearn head",
        ]
        + (["silolearn LoRA"] if lora else [])
        + (["head, stream of 3"] if streamed else [])
        + [
            "head - MiniLM + LR, same records",
            "head - MiniLM + LR",
            "head - best yardstick, same records",
            "acceptance 1",
            "goal",
        ],
        note=(
            "Each cell: accuracy / macro-F1. LR: LogisticRegressionCV, 5 folds; 10 values of "
            "C from 1e-4 to 1e4 on MiniLM embeddings, 7 from 0.1 to 100 on TF-IDF (each view "
            f"capped at its {TFIDF_FEATURES:,} most frequent n-grams). The yardsticks are "
            "fitted twice: on the whole 80% (what a user without silolearn would fit), and "
            "on the records the round trained on (same records: the gateway keeps about a "
            "tenth of the 80% as the tenant's eval records, which no version trains on). A "
            'tenant with no active version after the round scores "no model". Acceptance 1: '
            "the first round promoted a version and the head's accuracy and macro-F1 are "
            "each at least MiniLM + LR's on the same records less 0.01; where no yardstick "
            f"beats the constant answer (by more than {SIGNAL}) in either, acceptance 6 "
            "forbids a first version, and acceptance 1 holds when none was promoted. Goal: "
            "each at least the better yardstick's on the same records."
        ),
    )
    gates = Table(
        "first round: gateway, gates and outcome",
        [
            "tenant",
            "ingested (train / eval / dup / contaminated)",
            "trained records",
            "labels trained / in held-out",
            "eval records",
            "membership: loss AUC vs default learner, excess; strongest (upper); non-members",
            "canary top vs control top, bits (p)",
            "attempts: what serves",
            "outcome (last attempt)",
        ],
        note=(
            "Gate figures are the last attempt's (the version the round ended with). The "
            "membership gate judges only with at least 100 non-members (eval records); it "
            "fails a candidate whose loss-attack AUC exceeds the default learner's on the "
            "same records by more than 0.05 (for an own audience). Canary: the top inserted "
            "canary's exposure against the top never-inserted control's, and the one-sided "
            "Mann-Whitney p of inserted against controls."
        ),
    )
    why = Table(
        "first round: attempts and why a gate failed",
        ["tenant", "attempts", "failed gates of the last attempt", "explanation"],
        note="Only rounds with more than one attempt or a failed gate.",
    )
    cost = Table(
        "first round's time against the yardstick pipeline, seconds",
        [
            "tenant",
            "ST encode + LRCV",
            "round without gates",
            "x yardstick",
            "round with gates",
            "x yardstick",
            "whole train call",
            "x yardstick",
            "load",
            "embed",
            "train",
            "gates",
            "rest",
        ],
        note=(
            "ST encode + LRCV: sentence-transformers encoding the training texts plus "
            "LogisticRegressionCV's fit, in process. Round: RoundResult.timings total (to "
            "worker start, load, read, embed, train, gate step, registering), without gates: "
            "less the gate step (evaluate); after remediation these are the last attempt's, "
            "and the whole train call (every attempt, the label report and the divergence "
            "check) is what the tenant waited. load/embed/train: the training worker's own "
            "timings (load: the base model); rest: the total less these, the read and the "
            "gate step (worker start, the run's bookkeeping, registering)."
        ),
    )
    stream_table = Table(
        "stream: three time-ordered chunks, a round after each",
        ["tenant", "round 1", "round 2", "round 3", "held-out after each round"],
        note=(
            "Each round cell: the last attempt's version and outcome, the attempts and what "
            "ended serving, and the seconds of the whole train call."
        ),
    )

    def pair(held_out: dict[str, Any]) -> str:
        if not held_out.get("model"):
            return "no model"
        return f"{score(held_out['accuracy'])} / {score(held_out['macro_f1'])}"

    for r in results:
        head = r["head"]
        summary = head["round"]
        held_out = head["held_out"]
        minilm = r.get("minilm_same") or r["minilm"]
        tfidf = r.get("tfidf_same") or r["tfidf"]
        verdict = acceptance(r, minilm, tfidf)
        cells = [
            r["tenant"],
            fmt_int(r["records"]),
            str(r["labels"]),
            pair({"model": True, **r["majority"]}),
            pair({"model": True, **r["tfidf"]}),
            pair({"model": True, **r["minilm"]}),
            pair({"model": True, **r["tfidf_same"]}) if "tfidf_same" in r else "-",
            pair({"model": True, **r["minilm_same"]}) if "minilm_same" in r else "-",
            pair(held_out),
        ]
        if lora:
            cells.append(pair(r["lora"]["held_out"]) if "lora" in r else "-")
        if streamed:
            cells.append(pair(r["stream"][-1]["held_out"]) if "stream" in r else "-")
        best = {k: max(float(tfidf[k]), float(minilm[k])) for k in ("accuracy", "macro_f1")}
        quality.add(
            *cells,
            difference(held_out, minilm),
            difference(held_out, r["minilm"]),
            difference(held_out, best),
            *verdict,
        )

        ingested = head["ingest"]
        held_labels = set(r["held_out_labels"])
        trained_labels = set(summary.get("trained_labels") or [])
        gates.add(
            r["tenant"],
            f"{ingested['train']} / {ingested['eval']} / {ingested['duplicates']} / "
            f"{ingested['contaminated']}",
            str(summary.get("trained_records", "-")),
            f"{len(trained_labels)} / {len(held_labels)} "
            f"({len(held_labels - trained_labels)} unknown)",
            str(summary.get("eval_records", "-")),
            membership_cell(summary),
            f"{bits(summary.get('canary_max_exposure'))} vs "
            f"{bits(summary.get('control_max_exposure'))} "
            f"({p_value(summary.get('canary_p_value'))})",
            attempts_cell(summary),
            outcome(summary),
        )
        if len(summary.get("attempts") or []) > 1 or summary.get("failed_reasons"):
            why.add(
                r["tenant"],
                attempts_detail(summary),
                " | ".join(f"{g}: {t}" for g, t in (summary.get("failed_reasons") or {}).items())
                or "-",
                summary.get("explanation") or "-",
            )

        yardstick = r["minilm"]["seconds"]
        timings = summary.get("timings") or {}
        if "seconds" in summary:
            cost.add(
                r["tenant"],
                fmt_float(yardstick, 1),
                fmt_float(summary["seconds_without_gates"], 1),
                fmt_ratio(summary["seconds_without_gates"] / yardstick),
                fmt_float(summary["seconds"], 1),
                fmt_ratio(summary["seconds"] / yardstick),
                fmt_float(summary["wall_seconds"], 1),
                fmt_ratio(summary["wall_seconds"] / yardstick),
                *(
                    fmt_float(timings.get(step, 0.0), 1)
                    for step in ("load", "embed", "train", "evaluate")
                ),
                fmt_float(
                    summary["seconds"]
                    - sum(
                        timings.get(step, 0.0)
                        for step in ("load", "read", "embed", "train", "evaluate")
                    ),
                    1,
                ),
            )

        if streamed and "stream" in r:
            stream_table.add(
                r["tenant"],
                *(
                    f"{outcome(s['round'])}, attempts {attempts_cell(s['round'])}, "
                    f"{fmt_float(s['round']['wall_seconds'], 1)} s"
                    for s in r["stream"]
                ),
                " → ".join(pair(s["held_out"]) for s in r["stream"]),
            )
    tables = [quality, gates, *([why] if why.rows else []), cost]
    if streamed:
        tables.append(stream_table)
    return tables
