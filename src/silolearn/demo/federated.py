"""``silolearn demo --federated``: the shared layer learned across three sites that keep
their data. Each site is a workspace of its own, fed from a different real dataset; a
coordinator that holds no tenant data runs ``silolearn federation run`` (a SuperLink and the
ServerApp) and each site ``silolearn federation site`` (its SuperNode), all real processes on
loopback, each in its own process group, ended by the demo whatever happens. The rounds run
under SecAgg+ and client-level DP; the demo prints each round (replies, epsilon spent), each
site's accuracy on its own eval data against round 0 and the best constant answer, and the
federation's ledger.

Two settings are the demo's, the same for every site and derived from the plan, never from
a dataset: half of each site's records judge it (about 100 eval records a site, so an
accuracy is read to about 0.05), and the trunk's width (``trunk_width``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from silolearn.config import CONFIG_FILE
from silolearn.datasets import bbc_news, chatterbot_dialogues, rotten_tomatoes, sample
from silolearn.demo.site_eval import EvalSet, encoder_for, eval_set, shared_model
from silolearn.errors import FederationRoundFailed, InvalidInput, WorkspaceError
from silolearn.federation import processes
from silolearn.federation.book import initial_weights
from silolearn.federation.coordinator import CONNECT_SECONDS, RunRequest, plan_run
from silolearn.learning.shared import DIM, SharedStore
from silolearn.privacy.ledger import federation_scope
from silolearn.workspace import Workspace

Row = dict[str, Any]
Loader = Callable[[], list[Row]]

SITES: dict[str, tuple[Loader, str]] = {
    "news": (bbc_news, "BBC news articles, label = topic"),
    "critics": (rotten_tomatoes, "Rotten Tomatoes snippets, label = fresh/rotten/plot"),
    "support": (chatterbot_dialogues, "chatterbot dialogues, label = topic"),
}
"""Each site's one tenant (named as the site) and where its records come from."""
RECORDS = 200
EVAL_FRACTION = 0.5
EPSILON = 8.0
"""Client-level epsilon of the whole run (the federation scope's default budget)."""
ROUND_TIMEOUT = 300.0
FEDERATION = "demo"
COORDINATOR = "coordinator"
MARKER = "federated-demo.json"
"""Marks a directory this demo made, so a rerun may remove it and nothing else."""
MIN_SNR = 1 / 32
"""The smallest ratio of a round's signal to the aggregate's noise a trunk is widened to."""


def trunk_width(sites: int, noise_multiplier: float, widest: int) -> int:
    """The widest trunk, a power of two from 8 up to ``widest``, whose round signal is at
    least ``MIN_SNR`` of the aggregate's noise. ``sites`` clipped updates of norm C sum to at
    most ``sites`` x C; the aggregate's noise (z C per coordinate over d = hidden x (DIM + 1)
    coordinates) has norm z C sqrt(d); so the ratio is sites / (z sqrt(d)). With 3 sites at
    epsilon 8 over 3 rounds the default 256-wide trunk has a ratio of 0.01 and its weights
    became noise (docs/federation.md); with hundreds of sites it keeps the full width."""

    def snr(hidden: int) -> float:
        return sites / (noise_multiplier * math.sqrt(hidden * (DIM + 1)))

    hidden = 8
    while hidden * 2 <= widest and snr(hidden * 2) >= MIN_SNR:
        hidden *= 2
    return hidden


@dataclass(frozen=True)
class Layout:
    """The demo's directory: the coordinator's workspace and the sites' beside it."""

    root: Path
    sites: tuple[str, ...] = tuple(SITES)

    @property
    def coordinator(self) -> Path:
        return self.root / COORDINATOR

    def site(self, name: str) -> Path:
        return self.root / name


def _fresh(root: Path) -> Layout:
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise WorkspaceError(
            f"{root} is not a directory the demo can make: {existing} is not a directory",
            path=str(root),
        )
    if root.exists():
        if any(root.iterdir()) and not (root / MARKER).exists():
            raise WorkspaceError(
                f"{root} exists and is not a federated demo's directory; not removing it",
                path=str(root),
            )
        shutil.rmtree(root)
    try:
        root.mkdir(parents=True)
    except OSError as exc:
        raise WorkspaceError(f"cannot make {root}: {exc.strerror}", path=str(root)) from None
    (root / MARKER).write_text(json.dumps({"sites": list(SITES)}))
    return Layout(root)


def configure(path: Path, hidden: int, eval_fraction: float = EVAL_FRACTION) -> None:
    """The demo's two settings, the same in every workspace of the federation."""
    with Workspace.open(path, actor="demo") as ws:
        settings = ws.settings
    update = {
        "shared": settings.shared.model_copy(update={"hidden": hidden}),
        "ingest": settings.ingest.model_copy(update={"eval_fraction": eval_fraction}),
    }
    (path / CONFIG_FILE).write_text(settings.model_copy(update=update).to_toml(), "utf-8")


def plan_coordinator(layout: Layout, *, rounds: int) -> Row:
    """The coordinator's workspace (no tenant), the plan's noise and the trunk width derived
    from it, set in the coordinator's settings."""
    request = RunRequest(
        sites=len(layout.sites), rounds=rounds, secagg=True, epsilon=EPSILON, federation=FEDERATION
    )
    with Workspace.init(layout.coordinator, actor="demo") as ws:
        plan = plan_run(ws, request, weight_bound=0.0)
        widest = ws.settings.shared.hidden
    hidden = trunk_width(plan.sites, plan.noise_multiplier, widest)
    configure(layout.coordinator, hidden)
    return {
        "noise_multiplier": plan.noise_multiplier,
        "min_sites": plan.min_sites,
        "trunk_width": hidden,
        "trunk_width_default": widest,
    }


def build_sites(layout: Layout, hidden: int, records: int = RECORDS) -> list[Row]:
    """The sites: one tenant each, its records ingested, joined to the shared layer."""
    sites = []
    for name in layout.sites:
        loader, source = SITES[name]
        Workspace.init(layout.site(name), actor="demo").close()
        configure(layout.site(name), hidden)
        with Workspace.open(layout.site(name), actor="demo") as ws:
            ws.create_tenant(name)
            report = ws.tenant(name).ingest(sample(loader(), records, seed=11))
            SharedStore(ws).join(name)
        sites.append({"site": name, "source": source, **report.to_dict()})
    return sites


def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The real command line: its stdout to ``log``, its stderr beside it (``.err``)."""
    return processes.cli(args, log, log.with_suffix(".err"))


Processes = dict[str, subprocess.Popen[bytes]]


def federate(layout: Layout, address: str, coordinate: Callable[[str, Processes], Any]) -> Any:
    """Every site's ``silolearn federation site`` (the SuperLink on ``address``), and
    ``coordinate(address, sites)`` (the coordinator's part) meanwhile; every site's process
    group is ended before this returns."""
    (layout.root / "logs").mkdir(exist_ok=True)
    sites = {name: _site(layout, name, address) for name in layout.sites}
    with processes.running(*sites.values()):
        return coordinate(address, sites)


def free_address() -> str:
    return f"127.0.0.1:{processes.free_port()}"


def _site(layout: Layout, name: str, address: str) -> subprocess.Popen[bytes]:
    return _cli(
        [
            "federation", "site", "--workspace", str(layout.site(name)),
            "--superlink", address, "--port", str(processes.free_port()),
        ],
        layout.root / "logs" / f"{name}.out",
    )  # fmt: skip


def start_run(layout: Layout, address: str, rounds: int) -> subprocess.Popen[bytes]:
    """``silolearn federation run --json`` on the coordinator (SecAgg+, client-level DP at
    ``EPSILON``): it starts the SuperLink and waits for the sites to connect."""
    (layout.root / "logs").mkdir(exist_ok=True)
    return _cli(
        [
            "federation", "run", "--workspace", str(layout.coordinator), "--json",
            "--sites", str(len(layout.sites)), "--rounds", str(rounds), "--secagg",
            "--epsilon", str(EPSILON), "--address", address,
            "--round-timeout", str(ROUND_TIMEOUT), "--name", FEDERATION,
        ],
        layout.root / "logs" / "run.out",
    )  # fmt: skip


def await_run(
    layout: Layout, run: subprocess.Popen[bytes], rounds: int, meanwhile: Callable[[], Any]
) -> Callable[[str, Processes], Row]:
    """The coordinator's part: wait for ``run`` (a site that stops fails it), with
    ``meanwhile`` run in a thread; the run's result with ``"meanwhile"``: what that
    returned."""
    log = layout.root / "logs"

    def coordinate(address: str, sites: Processes) -> Row:
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(meanwhile)
            _wait(run, sites, CONNECT_SECONDS + rounds * 2 * ROUND_TIMEOUT, log)
            result = done.result()
        if run.returncode != 0:
            raise _failure(log / "run.err", log / "run.out")
        output = (log / "run.out").read_text()
        return {**json.loads(output[output.index("{") :]), "meanwhile": result}

    return coordinate


def _wait(
    run: subprocess.Popen[bytes],
    sites: Processes,
    seconds: float,
    log: Path,
) -> None:
    deadline = time.monotonic() + seconds
    while run.poll() is None:
        for name, site in sites.items():
            if site.poll() is not None:
                raise FederationRoundFailed(
                    f"site {name} stopped (exit code {site.returncode}) during the run",
                    site=name,
                    log=processes.tail(log / f"{name}.err"),
                )
        if time.monotonic() > deadline:
            raise FederationRoundFailed("the federated run did not end before its deadline")
        time.sleep(0.5)


def _failure(err: Path, out: Path) -> FederationRoundFailed:
    """The coordinator's typed error (its --json error on stderr) as this demo's."""
    text = err.read_text(errors="replace")
    with contextlib.suppress(ValueError):
        error = json.loads(text[text.index("{") :])
        return FederationRoundFailed(
            f"silolearn federation run failed ({error['error']}): {error['message']}",
            **{"cause": error["error"], **(error.get("details") or {})},
        )
    return FederationRoundFailed(
        "silolearn federation run failed", log=processes.tail(out) + processes.tail(err)
    )


def eval_sets(layout: Layout) -> dict[str, EvalSet]:
    """Each site's eval records, embedded (they are fixed once the records are in)."""
    sets = {}
    for name in layout.sites:
        with Workspace.open(layout.site(name), actor="demo") as ws:
            sets[name] = eval_set(ws, name, encoder_for(ws))
    return sets


def accuracy(
    layout: Layout, run_id: str, start: list[Any], sets: dict[str, EvalSet]
) -> dict[str, Row]:
    """Per site: round 0 (the run's starting trunk, no row learned), the best constant
    answer, and the version the site keeps after the last round (the federation's trunk and
    its own rows fitted on it)."""
    scores = {}
    for name in layout.sites:
        with Workspace.open(layout.site(name), actor="demo") as ws:
            latest = SharedStore(ws).latest()
            if latest is None or latest.lineage.get("run_id") != run_id:
                raise FederationRoundFailed(f"site {name} kept no version of run {run_id}")
            trunk, rows = shared_model(ws, latest.version, sets[name].tenant_id)
        s = sets[name]
        scores[name] = {
            "eval_records": s.size,
            "labels": len(s.labels),
            "round_0": s.accuracy(start, None),
            "constant_answer": s.constant_answer,
            "final": s.accuracy(trunk, rows),
            "version": latest.version,
        }
    return scores


def ledger(layout: Layout, federation: str = FEDERATION) -> Row:
    """The federation's scope in the coordinator's privacy ledger."""
    with Workspace.open(layout.coordinator, actor="demo") as ws:
        return ws.ledger().summary(federation_scope(federation))


def report_of(
    layout: Layout,
    result: Row,
    start: list[Any],
    sets: dict[str, EvalSet],
    federation: str = FEDERATION,
) -> Row:
    """What the demo shows of a federated run (``result``: ``silolearn federation run``'s),
    read from the coordinator's and the sites' workspaces."""
    return {
        "run_id": result["run_id"],
        "version": result["version"],
        "epsilon": result["plan"]["epsilon"],
        "rounds": result["rounds"],
        "accuracy": accuracy(layout, result["run_id"], start, sets),
        "ledger": ledger(layout, federation),
    }


def run_federated_demo(path: Path, *, rounds: int, console: Any | None) -> Row:
    """Build the sites, federate them for ``rounds`` rounds, and report. The coordinator's
    run starts (and plans, and starts its SuperLink) while the sites are built."""
    if rounds < 1:
        raise InvalidInput("the federated demo needs rounds >= 1", rounds=rounds)
    say = console.print if console is not None else (lambda *a, **k: None)
    started = time.perf_counter()
    layout = _fresh(path)
    setup = plan_coordinator(layout, rounds=rounds)
    say(f"[bold]silolearn demo --federated[/] — {len(SITES)} sites, {rounds} rounds in {path}")
    with Workspace.open(layout.coordinator, actor="demo") as ws:
        start = initial_weights(ws)
    address = free_address()
    run = start_run(layout, address, rounds)
    with processes.running(run):
        setup["sites"] = build_sites(layout, setup["trunk_width"])
        say(sites_table(setup))
        say(
            f"silolearn federation run (SuperLink, ServerApp) and {len(SITES)} x silolearn "
            "federation site (SuperNodes) started…"
        )
        coordinate = await_run(layout, run, rounds, lambda: eval_sets(layout))
        result = federate(layout, address, coordinate)
    report: Row = {
        "workspace": str(path.resolve()),
        **setup,
        **report_of(layout, result, start, result["meanwhile"]),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": list(os.getloadavg()),
    }
    for table in (rounds_table(report), ledger_table(report["ledger"])):
        say(table)
    say(
        f"done in {report['seconds']} s (load average {report['load_average'][0]:.1f}); "
        f"the sites' workspaces: {', '.join(str(layout.site(n)) for n in layout.sites)}"
    )
    return report


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


def sites_table(setup: Row) -> Table:
    table = _table(
        f"sites (trunk {setup['trunk_width']} wide, not {setup['trunk_width_default']}: "
        f"{len(setup['sites'])} sites under noise multiplier "
        f"{setup['noise_multiplier']:.2f}; {EVAL_FRACTION:.0%} of records judge)",
        ["site", "records from", "train", "eval"],
    )
    for s in setup["sites"]:
        table.add_row(s["site"], s["source"], str(s["train"]), str(s["eval"]))
    return table


def rounds_table(report: Row) -> Table:
    """One row per round: replies, epsilon spent, and each site's accuracy on its own eval
    data (round 0, then the version each site keeps after the last round; the sites keep no
    version between rounds, so the rounds in between have none)."""
    sites = list(report["accuracy"])
    privacy = f"SecAgg+, client-level DP ε {report['epsilon']:g}"
    table = _table(
        f"federated run {report['run_id']} ({privacy})",
        ["round", "replies", "dropped", "ε spent", "seconds", *sites],
    )
    acc = report["accuracy"]
    table.add_row("0", "", "", "0", "", *(f"{acc[s]['round_0']:.3f}" for s in sites))
    last = report["rounds"][-1]["round"] if report["rounds"] else 0
    for r in report["rounds"]:
        scores = [f"{acc[s]['final']:.3f}" if r["round"] == last else "·" for s in sites]
        table.add_row(
            str(r["round"]),
            str(r["sites_replied"]),
            str(len(r["dropped"])),
            f"{r['epsilon_after']:.3f}",
            f"{r['seconds']:.0f}",
            *scores,
        )
    constant = (f"{acc[s]['constant_answer']:.3f}" for s in sites)
    table.add_row("constant answer", "", "", "", "", *constant)
    return table


def ledger_table(summary: Row) -> Table:
    table = _table(
        f"privacy ledger of {summary['scope']}: ε {summary['epsilon_spent']:.3f} spent "
        f"of {summary['epsilon_budget']:g} at δ {summary['delta']:g} ({summary['accountant']})",
        ["#", "run", "purpose", "q", "achieved z", "steps", "ε after"],
    )
    for e in summary["events"]:
        table.add_row(
            str(e["id"]),
            e["run_id"],
            e["purpose"],
            f"{e['sampling_rate']:.2f}",
            f"{e['noise_multiplier']:.3f}",
            str(e["steps"]),
            f"{e['epsilon_after']:.3f}",
        )
    return table
