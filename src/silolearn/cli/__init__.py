"""The command line: ``silolearn --help``, one module per command group.

Every command takes ``--workspace DIR`` (default ``$SILOLEARN_WORKSPACE`` or ``./.silolearn``)
and ``--json`` (the result as JSON on stdout). Errors go to stderr with the exit code of
their type (see ``silolearn.errors``).
"""

# ruff: noqa: I001 -- the modules register their commands on import, in the order `--help` lists
from silolearn.cli import tenants, data, learning, audit, adapters, privacy, gates, schedule
from silolearn.cli import access, serve, monitor, federation
from silolearn.cli.base import app

__all__ = [
    "access",
    "adapters",
    "app",
    "audit",
    "data",
    "federation",
    "gates",
    "learning",
    "main",
    "monitor",
    "privacy",
    "schedule",
    "serve",
    "tenants",
]


def main() -> None:
    app()
