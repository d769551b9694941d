"""Command: `serve`, the HTTP API on a workspace (``silolearn.service``)."""

from __future__ import annotations

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
    then in-flight requests finish and running rounds are waited for."""
    import uvicorn

    from silolearn.service.app import Running, create_app

    path = workspace if workspace is not None else _default_workspace()
    running = Running.start(path)
    try:
        application = create_app(path, running=running)
        err.print(f"silolearn serving {path} on http://{host}:{port}", highlight=False)
        config = uvicorn.Config(
            application, host=host, port=port, log_level=log_level, lifespan="on"
        )
        uvicorn.Server(config).run()
    finally:
        running.stop()
