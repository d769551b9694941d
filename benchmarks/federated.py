"""Federated against centralised training of the shared layer, on the same three sites' data
(issue 18, acceptance 5).

The sites are the federated demo's (``silolearn.demo.federated``): BBC news articles, Rotten
Tomatoes snippets and chatterbot dialogues, ``--records`` (default 200) seeded records each,
every one of them for training (``eval_fraction`` 0). Each site is judged on a common
held-out sample of its own source that no arm ingested (``--holdout``, default 100 records a
site, those with a label its training records have), embedded once in this process by the
workspaces' recorded base model. Every arm starts from the same seeded trunk, as wide as the
demo derives it from the private arm's plan (``trunk_width``), and runs ``--rounds`` rounds
of the shared layer's local training (``[shared]`` epochs, batch size, learning rate):

* **centralised, non-private**: one workspace holding the three tenants; each round is the
  shared layer's engine over their isolated workers without noise (``SiteTrainer``, what a
  site runs locally), trunk and rows carried to the next round;
* **centralised DP**: the same workspace's shared layer as it is today
  (``SharedTrainer.train``: DP-SGD across the tenants' workers, record-level), ``--epsilon``
  over the rounds (epsilon / rounds a run, composed by the ledger);
* **federated FedAvg**: three site workspaces and a coordinator, a SuperLink and three
  SuperNodes on loopback (``silolearn federation site`` processes), FedAvg weighted by record
  counts, no clipping (C = 1e6), no noise: a plan the CLI refuses (I9) run through
  ``federation.coordinator.run_plan``, as a yardstick in throwaway workspaces whose sites
  opt in to it (``[federation] allow_non_private``; a site refuses such a round otherwise);
* **federated SecAgg+ and DP**: the same, fresh workspaces, ``run_federation`` as ``silolearn
  federation run --secagg --epsilon`` runs it: client-level DP at ``--epsilon`` (site-level:
  one site's whole contribution), SecAgg+.

Accuracy: each site's model after the last round (the arm's trunk and the site's own rows;
a federated site's rows are fitted again on the last aggregate, the version it keeps),
against round 0 (the starting trunk, no row learned) and the best constant answer.
Seconds per round: centralised, the wall time of each round's call; federated, the ServerApp's
time from asking the sites to the judged aggregate (``rounds[].seconds``). Bytes per site per
round: the parameters that cross, in the size Flower serialises them (``ndarray_to_bytes``,
numpy's .npy format): the round's trunk down and, up, the site's float32 trunk (FedAvg) or its
SecAgg+ masked vector (quantised, masked and reduced modulo 2^32 by flwr's own functions); the
key agreement's short byte strings (two public keys and n-1 encrypted shares a site) are not
counted. Centralised arms move the records into one workspace once, and no parameter crosses
between sites.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import Table, add_output_flags, machine, print_json, render
from silolearn.config import CONFIG_FILE
from silolearn.datasets import sample
from silolearn.demo.federated import (
    EPSILON,
    SITES,
    Layout,
    configure,
    federate,
    free_address,
    trunk_width,
)
from silolearn.demo.site_eval import EvalSet, encoder_for, shared_model, train_labels
from silolearn.federation.book import initial_weights
from silolearn.federation.coordinator import RunRequest, plan_run, run_federation, run_plan
from silolearn.federation.plan import plan_for
from silolearn.federation.site import SiteTrainer
from silolearn.learning.shared import SharedStore
from silolearn.privacy.ledger import SHARED
from silolearn.rounds.shared import SharedTrainer
from silolearn.workspace import Workspace

Row = dict[str, Any]
UNCLIPPED = 1e6
"""FedAvg's update bound: far above any update's norm, so nothing is clipped."""


def site_data(records: int, holdout: int) -> dict[str, tuple[list[Row], list[Row]]]:
    """Per site: its training records (the demo's sample) and a held-out sample of the rest."""
    data = {}
    for name, (loader, _) in SITES.items():
        rows = loader()
        train = sample(rows, records, seed=11)
        taken = {r["id"] for r in train}
        data[name] = (train, sample([r for r in rows if r["id"] not in taken], holdout, seed=12))
    return data


def make_workspace(
    path: Path, hidden: int, tenants: dict[str, list[Row]], *, non_private: bool = False
) -> None:
    """A workspace with the benchmark's settings and ``tenants`` (their records ingested,
    joined to the shared layer); none for a coordinator. ``non_private``: a throwaway site
    of the FedAvg yardstick, opted in to rounds without DP (a site refuses them otherwise)."""
    Workspace.init(path, actor="benchmark").close()
    configure(path, hidden, eval_fraction=0.0)
    if non_private:
        with Workspace.open(path, actor="benchmark") as ws:
            settings = ws.settings
        opt_in = settings.federation.model_copy(update={"allow_non_private": True})
        config = settings.model_copy(update={"federation": opt_in})
        (path / CONFIG_FILE).write_text(config.to_toml(), "utf-8")
    with Workspace.open(path, actor="benchmark") as ws:
        for name, rows in tenants.items():
            ws.create_tenant(name)
            ws.tenant(name).ingest(rows)
            SharedStore(ws).join(name)


def sites_layout(
    root: Path, hidden: int, data: dict[str, Any], *, non_private: bool = False
) -> Layout:
    layout = Layout(root)
    make_workspace(layout.coordinator, hidden, {})
    for name in layout.sites:
        make_workspace(layout.site(name), hidden, {name: data[name][0]}, non_private=non_private)
    return layout


def central_plain(path: Path, rounds: int) -> Row:
    """The shared layer's engine without noise over the three tenants of one workspace."""
    with Workspace.open(path, actor="benchmark") as ws:
        trunk = initial_weights(ws)
        rows: dict[str, np.ndarray] = {}
        seconds = []
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            params, _ = SiteTrainer(ws, trunk, rows).local_round(seed=r)
            seconds.append(time.perf_counter() - started)
            trunk = [np.asarray(params["trunk.weight"]), np.asarray(params["trunk.bias"])]
            rows = {k: np.asarray(v) for k, v in params.items() if k.startswith("rows.")}
        models = {
            name: (trunk, (rows[f"rows.{name}.weight"], rows[f"rows.{name}.bias"]))
            for name in SITES
        }
    return {"models": models, "seconds": seconds, "epsilon": None}


def central_dp(path: Path, rounds: int, epsilon: float) -> Row:
    """Today's shared layer: DP-SGD across the tenants' workers, epsilon / rounds a run."""
    with Workspace.open(path, actor="benchmark") as ws:
        ws.ledger().set_policy(SHARED, tenant=None, epsilon_budget=epsilon)
        seconds = []
        version = None
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            version = SharedTrainer(ws).train(list(SITES), epsilon=epsilon / rounds, seed=r)
            seconds.append(time.perf_counter() - started)
        assert version is not None
        models = {
            name: shared_model(ws, version.version, ws.tenants.get(name).id) for name in SITES
        }
        spent = ws.ledger().summary(SHARED)["epsilon_spent"]
    return {"models": models, "seconds": seconds, "epsilon": spent}


def federated(layout: Layout, rounds: int, epsilon: float | None) -> Row:
    """A federated run over the layout's sites: SecAgg+ and client-level DP at ``epsilon``,
    or (``None``) plain FedAvg without clipping or noise."""
    with Workspace.open(layout.coordinator, actor="benchmark") as ws:

        def coordinate(address: str, sites: Any) -> Row:
            if epsilon is not None:
                request = RunRequest(
                    sites=len(SITES), rounds=rounds, secagg=True, epsilon=epsilon, address=address
                )
                return run_federation(ws, request)
            plan = plan_for(
                sites=len(SITES),
                rounds=rounds,
                min_sites=len(SITES),
                secagg=False,
                max_update_norm=UNCLIPPED,
                noise_multiplier=0.0,
                weight_bound=0.0,
            )
            return run_plan(ws, plan, address)

        result = federate(layout, free_address(), coordinate)
    models = {}
    for name in layout.sites:
        with Workspace.open(layout.site(name), actor="benchmark") as ws:
            latest = SharedStore(ws).latest()
            assert latest is not None and latest.lineage["run_id"] == result["run_id"]
            models[name] = shared_model(ws, latest.version, ws.tenants.get(name).id)
    return {
        "models": models,
        "seconds": [r["seconds"] for r in result["rounds"]],
        "run_seconds": result["seconds"],
        "epsilon": result["rounds"][-1]["epsilon_after"],
        "plan": result["plan"],
    }


def bytes_per_round(trunk: list[np.ndarray], plan: Row | None) -> Row:
    """What one site sends and receives per round, as flwr serialises it (module docstring)."""
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    down = sum(len(ndarray_to_bytes(np.asarray(a, dtype=np.float32))) for a in trunk)
    if plan is None or not plan["secagg"]:
        return {"down": down, "up": down}
    modulus = 1 << 32
    quantised = factor_combine(
        plan["quantization_range"],
        quantize(list(trunk), plan["clipping_range"], plan["quantization_range"]),
    )
    mask = pseudo_rand_gen(os.urandom(32), modulus, [a.shape for a in quantised])
    masked = parameters_mod(parameters_addition(quantised, mask), modulus)
    return {"down": down, "up": sum(len(ndarray_to_bytes(a)) for a in masked)}


def evaluate(arm: Row, sets: dict[str, EvalSet]) -> dict[str, float]:
    return {name: sets[name].accuracy(*arm["models"][name]) for name in SITES}


def run(args: argparse.Namespace, root: Path) -> Row:
    data = site_data(args.records, args.holdout)
    coordinator = root / "plan"
    Workspace.init(coordinator, actor="benchmark").close()
    with Workspace.open(coordinator, actor="benchmark") as ws:
        request = RunRequest(
            sites=len(SITES), rounds=args.rounds, secagg=True, epsilon=args.epsilon
        )
        z = plan_run(ws, request, weight_bound=0.0).noise_multiplier
        hidden = trunk_width(len(SITES), z, ws.settings.shared.hidden)
    central = root / "central"
    make_workspace(central, hidden, {name: data[name][0] for name in SITES})
    with Workspace.open(central, actor="benchmark") as ws:
        encoder = encoder_for(ws)
        start = initial_weights(ws)
        sets = {
            name: EvalSet.embed(
                name,
                "",
                train_labels(ws, name),
                [(str(r["text"]), str(r["label"])) for r in data[name][1]],
                encoder,
            )
            for name in SITES
        }
    arms: dict[str, Row] = {}
    runs: list[tuple[str, Callable[[], Row]]] = [
        ("centralised, non-private", lambda: central_plain(central, args.rounds)),
        ("centralised DP (record-level)", lambda: central_dp(central, args.rounds, args.epsilon)),
        (
            "federated FedAvg",
            lambda: federated(
                sites_layout(root / "fedavg", hidden, data, non_private=True), args.rounds, None
            ),
        ),
        (
            "federated SecAgg+ and DP (site-level)",
            lambda: federated(
                sites_layout(root / "secagg", hidden, data), args.rounds, args.epsilon
            ),
        ),
    ]
    for name, make in runs:
        load = os.getloadavg()[0]
        arm = make()
        arms[name] = {
            "accuracy": evaluate(arm, sets),
            "seconds_per_round": arm["seconds"],
            "epsilon": arm["epsilon"],
            "bytes_per_round": None if "plan" not in arm else bytes_per_round(start, arm["plan"]),
            "load_average": [load, os.getloadavg()[0]],
        }
    return {
        "machine": machine(),
        "settings": {**vars(args), "trunk_width": hidden, "noise_multiplier": z},
        "eval_records": {name: s.size for name, s in sets.items()},
        "round_0": {name: s.accuracy(start, None) for name, s in sets.items()},
        "constant_answer": {name: s.constant_answer for name, s in sets.items()},
        "arms": arms,
    }


def tables(report: Row) -> list[Table]:
    sites = list(SITES)
    s = report["settings"]
    accuracy = Table(
        f"accuracy on each site's held-out records after {s['rounds']} rounds "
        f"(trunk {s['trunk_width']} wide, epsilon {s['epsilon']:g})",
        ["arm", *sites, "epsilon spent", "s / round", "load"],
    )
    accuracy.add(
        "round 0 (no row learned)", *(f"{report['round_0'][n]:.3f}" for n in sites), "", "", ""
    )
    accuracy.add(
        "best constant answer", *(f"{report['constant_answer'][n]:.3f}" for n in sites), "", "", ""
    )
    for name, arm in report["arms"].items():
        eps = "none" if arm["epsilon"] is None else f"{arm['epsilon']:.2f}"
        per_round = np.mean(arm["seconds_per_round"])
        load = "-".join(f"{v:.0f}" for v in arm["load_average"])
        accuracy.add(
            name, *(f"{arm['accuracy'][n]:.3f}" for n in sites), eps, f"{per_round:.0f}", load
        )
    accuracy.note = "held-out records a site: " + ", ".join(
        f"{n} {report['eval_records'][n]}" for n in sites
    )
    traffic = Table(
        "bytes per site per round (parameters as flwr serialises them)",
        ["arm", "down (trunk)", "up", "seconds per round"],
    )
    for name, arm in report["arms"].items():
        b = arm["bytes_per_round"]
        rounds = ", ".join(f"{v:.0f}" for v in arm["seconds_per_round"])
        if b is None:
            traffic.add(name, "none between sites", "none between sites", rounds)
        else:
            traffic.add(name, f"{b['down']:,}", f"{b['up']:,}", rounds)
    return [accuracy, traffic]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=200, help="training records a site")
    parser.add_argument("--holdout", type=int, default=100, help="held-out records a site")
    parser.add_argument("--epsilon", type=float, default=EPSILON)
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them")
    add_output_flags(parser)
    args = parser.parse_args()
    keep = args.keep
    del args.keep
    if keep is not None:
        if keep.exists() and any(keep.iterdir()):
            parser.error(f"--keep {keep}: not an empty directory")
        keep.mkdir(parents=True, exist_ok=True)
        report = run(args, keep)
    else:
        with tempfile.TemporaryDirectory(prefix="silolearn-federated-") as tmp:
            report = run(args, Path(tmp))
    if args.json:
        print_json(report)
    else:
        render(tables(report), markdown=args.markdown)


if __name__ == "__main__":
    main()
