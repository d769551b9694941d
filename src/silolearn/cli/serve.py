"""Command: `serve`, the HTTP API on a workspace (``silolearn.service``)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from silolearn.cli.base import WorkspaceOpt, _default_workspace, app, command, err


@app.command()
@command
def serve(
    workspace: WorkspaceOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    log_level: Annotated[
        str, typer.Option(help="critical | error | warning | info | debug")
    ] = "info",
) -> None:
    """Serve the HTTP API (/v1, /openapi.json, /healthz, /readyz) until SIGTERM or Ctrl-C;
    then new requests get 503, in-flight ones finish, running rounds are waited for up to
    [service] round_grace_seconds (then left interrupted), and the process exits 0."""
    import uvicorn

    from silolearn.service.app import Running, create_app
    from silolearn.service.shutdown import GracefulServer

    path = workspace if workspace is not None else _default_workspace()
    running = Running.start(path)
    try:
        application = create_app(path, running=running)
        err.print(f"silolearn serving {path} on http://{host}:{port}", highlight=False)
        config = uvicorn.Config(
            application, host=host, port=port, log_level=log_level, lifespan="on"
        )
        GracefulServer(config, running).run()
    finally:
        running.stop()
    if running.cut_short:
        # the rounds' threads cannot be stopped: end the process without joining them,
        # as a crash would (their jobs are marked interrupted, their runs abandoned next)
        err.print(f"rounds left interrupted: {', '.join(running.cut_short)}", highlight=False)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
