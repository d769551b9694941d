"""Commands: `federation site` (this workspace as a site of a federation) and `federation
run` (a federated run of the shared layer from a coordinating workspace)."""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Annotated

import typer

from silolearn.cli.base import JsonOpt, WorkspaceOpt, _table, app, command, emit, opened, out
from silolearn.errors import FederationConfigError

federation_app = typer.Typer(
    help="Federated training of the shared layer across sites (Flower).", no_args_is_help=True
)
app.add_typer(federation_app, name="federation")


@federation_app.command("site")
@command
def federation_site(
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, HOST:PORT.")],
    port: Annotated[int, typer.Option(help="This site's local Flower runtime port.")] = 9094,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run this workspace's SuperNode until stopped: its ClientApp trains the shared layer
    on the tenants that joined it, through their isolated workers."""
    from silolearn.federation import processes
    from silolearn.learning.shared import SharedStore

    processes.host_port(superlink, "--superlink")
    if not 1 <= port <= 65535:
        raise FederationConfigError(f"--port is a TCP port from 1 to 65535, not {port}")
    with opened(workspace) as ws:
        members = [m["tenant"] for m in SharedStore(ws).members()]
        if not members:
            raise FederationConfigError(
                "no tenant of this workspace has joined the shared layer "
                "(silolearn shared join TENANT)"
            )
        path = ws.path
        ws.audit.append(
            "federation.site",
            obj="federation",
            details={"superlink": superlink, "tenants": members},
        )
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    emit(
        as_json,
        {"superlink": superlink, "tenants": members},
        lambda: out.print(f"site of {superlink}: tenants {', '.join(members)}"),
    )
    # a SuperNode ends when its SuperLink goes away: the site starts another until stopped
    while not stopping:
        node = processes.start(
            processes.supernode_command(superlink, port, path),
            path / "federation" / "flwr-site",
            path / "federation" / "supernode.log",
        )
        with processes.running(node):
            while not stopping and node.poll() is None:
                time.sleep(0.5)
        if not stopping:
            time.sleep(1.0)


@federation_app.command("run")
@command
def federation_run(
    sites: Annotated[int, typer.Option(help="Sites taking part in every round.")],
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    secagg: Annotated[bool, typer.Option("--secagg", help="Secure aggregation (SecAgg+).")] = False,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Client-level DP: the run's epsilon over all its rounds "
            "(default: the federation scope's run epsilon; never without DP, I9)."
        ),
    ] = None,
    min_sites: Annotated[
        int | None, typer.Option(help="Fewest replies a round accepts (default 2/3 of sites).")
    ] = None,
    num_shares: Annotated[int | None, typer.Option(help="SecAgg+ shares (odd).")] = None,
    clipping: Annotated[
        str, typer.Option(help="Where updates are clipped: site (before masking) or server.")
    ] = "site",
    max_update_norm: Annotated[float, typer.Option(help="C: a site's update's L2 bound.")] = 1.0,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits.")] = 600.0,
    address: Annotated[str, typer.Option(help="Where the SuperLink listens.")] = "127.0.0.1:9092",
    name: Annotated[
        str, typer.Option(help="The federation's name (its ledger scope federation:NAME).")
    ] = "federation",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Coordinate a federated run of the shared layer: start a SuperLink, wait for the
    sites, run the rounds, and add the aggregate as a shared version."""
    from silolearn.federation.coordinator import RunRequest, run_federation

    if clipping not in ("site", "server"):
        raise FederationConfigError(f"clipping is 'site' or 'server', not {clipping!r}")
    request = RunRequest(
        sites=sites,
        rounds=rounds,
        secagg=secagg,
        epsilon=epsilon,
        min_sites=min_sites,
        num_shares=num_shares,
        max_update_norm=max_update_norm,
        round_timeout=round_timeout,
        address=address,
        server_side_clipping=clipping == "server",
        federation=name,
    )
    with opened(workspace) as ws:
        result = run_federation(ws, request)
    rows = [
        [r["round"], r["sites_replied"], len(r["dropped"]), r["epsilon_after"], r["seconds"]]
        for r in result["rounds"]
    ]
    emit(
        as_json,
        result,
        lambda: out.print(
            _table(
                f"federated run {result['run_id']}: shared v{result['version']}",
                ["round", "replied", "dropped", "epsilon after", "seconds"],
                rows,
            )
        ),
    )
