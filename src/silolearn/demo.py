"""``silolearn demo``: the main job on real data.

Four tenants, each fed from a real dataset as a production stream arriving in rounds:
every round goes through the gateway (validation, minimisation, routing, contamination
check, encryption, audit). At the end the audit chain is verified and the isolation attack
suite runs against the live workspace.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from silolearn.config import CONFIG_FILE
from silolearn.datasets import DATASETS, sample
from silolearn.errors import WorkspaceError
from silolearn.ingest.gateway import Gateway
from silolearn.verification import run_isolation_suite
from silolearn.workspace import Workspace

POLICIES = {"newsroom": "redact", "critics": "redact", "health-desk": "tokenize", "press": "redact"}


def _fresh_workspace(path: Path) -> Workspace:
    if path.exists():
        if not (path / CONFIG_FILE).exists():
            raise WorkspaceError(f"{path} exists and is not a silolearn workspace; not removing it")
        shutil.rmtree(path)
    return Workspace.init(path, actor="demo")


def run_demo(
    path: Path, *, per_tenant: int, rounds: int, console: Console | None
) -> dict[str, Any]:
    if rounds < 1 or per_tenant < rounds:
        raise WorkspaceError("the demo needs rounds >= 1 and per-tenant >= rounds")
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    ws = _fresh_workspace(path)
    result: dict[str, Any] = {"workspace": str(path.resolve()), "rounds": []}
    try:
        streams: dict[str, list[dict[str, Any]]] = {}
        for name, loader in DATASETS.items():
            ws.create_tenant(name, pii_policy=POLICIES[name])
            streams[name] = sample(loader(), per_tenant, seed=7)
        say(f"[bold]silolearn demo[/] — workspace {path.resolve()}, {len(streams)} tenants")
        gateway = Gateway(ws)
        for round_no in range(rounds):
            table = Table(title=f"round {round_no + 1}/{rounds}: ingestion", title_justify="left")
            for column in (
                "tenant",
                "arrived",
                "train",
                "eval",
                "rejected",
                "duplicates",
                "contaminated",
                "redactions",
                "seconds",
            ):
                table.add_column(column, justify="left" if column == "tenant" else "right")
            round_rows = []
            for name, rows in streams.items():
                chunk = rows[round_no * len(rows) // rounds : (round_no + 1) * len(rows) // rounds]
                t0 = time.perf_counter()
                report = gateway.ingest(name, chunk).to_dict()
                seconds = time.perf_counter() - t0
                table.add_row(
                    name,
                    str(len(chunk)),
                    str(report["train"]),
                    str(report["eval"]),
                    str(report["rejected"]),
                    str(report["duplicates"]),
                    str(report["contaminated"]),
                    str(report["redactions"]),
                    f"{seconds:.2f}",
                )
                round_rows.append(
                    {
                        "tenant": name,
                        "arrived": len(chunk),
                        "seconds": seconds,
                        **{k: v for k, v in report.items() if k != "errors"},
                    }
                )
            say(table)
            result["rounds"].append(round_rows)

        replay = gateway.ingest(
            "newsroom", streams["newsroom"][: len(streams["newsroom"]) // rounds]
        )
        say(
            f"re-ingesting newsroom's first round stores nothing twice: "
            f"{replay.accepted} stored, {replay.duplicates} duplicates"
        )

        tenants = [ws.tenant(t.name).show() for t in ws.tenants.list()]
        summary = Table(title="tenants", title_justify="left")
        for column in ("tenant", "status", "train", "eval", "quarantined", "pii policy", "key v"):
            summary.add_column(column)
        for t in tenants:
            summary.add_row(
                t["name"],
                t["status"],
                str(t["train"]),
                str(t["eval"]),
                str(t["quarantined"]),
                t["pii_policy"],
                str(t["dek_version"]),
            )
        say(summary)

        attacks = run_isolation_suite(ws)
        blocked = sum(a.blocked for a in attacks)
        say(f"isolation attack suite: {blocked}/{len(attacks)} attacks blocked")
        ws.audit.checkpoint()
        verified = ws.audit.verify()
        say(
            f"audit verify: OK — {verified.events} events, "
            f"{verified.checkpoints} signed checkpoints"
        )
        result.update(
            tenants=tenants,
            isolation={"blocked": blocked, "attacks": len(attacks)},
            audit=verified.to_dict(),
            seconds=round(time.perf_counter() - started, 2),
        )
        say(f"done in {result['seconds']} s")
        if blocked != len(attacks):
            raise WorkspaceError("the isolation suite found an attack that was not blocked")
    finally:
        ws.close()
    return result
