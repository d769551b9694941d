"""Flower's processes as silolearn starts them: each in its own process group, its pid
recorded, ended by whoever started it (a stopped SuperLink leaves its ServerApp running,
docs/federation.md), never with runtime dependency installation (the app bundle imports
silolearn from the installed environment; offline, an install fails)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from silolearn.errors import FederationConfigError

BIN = Path(sys.executable).parent
"""The environment's scripts: the SuperLink starts ``flower-superexec`` by name."""

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "silolearn-federation"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "silolearn"

[tool.flwr.app.components]
serverapp = "server_app:app"
clientapp = "client_app:app"

[tool.flwr.app.config]
workdir = ""
"""


def environment(flwr_home: Path) -> dict[str, str]:
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": path}


def start(command: Sequence[str], flwr_home: Path, log: Path) -> subprocess.Popen[bytes]:
    """A Flower process in its own process group, its output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            env=environment(flwr_home),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """End ``process`` and its process group (SIGTERM, then SIGKILL after ``grace``)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # the group outlives its leader: the ServerApp and ClientApps it spawned
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


def cli(args: Sequence[str], log: Path, err: Path | None = None) -> subprocess.Popen[bytes]:
    """silolearn's own command line in its own process group (its Flower children with it):
    its stdout to ``log``, its stderr to ``err`` (or to ``log`` with its stdout)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb"))
        errors = subprocess.STDOUT if err is None else files.enter_context(err.open("wb"))
        return subprocess.Popen(
            [sys.executable, "-m", "silolearn.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=errors,
            start_new_session=True,
        )


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick; another process may take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a process's log (none when it wrote none)."""
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


@contextlib.contextmanager
def running(*processes: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            stop(process)


def host_port(address: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` split, its port a TCP port; a ``FederationConfigError`` naming
    ``option`` otherwise (Flower would fail on it in a child process, or a site would start
    its SuperNode again and again)."""
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FederationConfigError(
            f"{option} is HOST:PORT with a port from 1 to 65535, not {address!r}",
            option=option,
            address=address,
        )
    return host, int(port)


def superlink_command(address: str, database: Path) -> list[str]:
    host, port = host_port(address, "--address")
    return [
        str(BIN / "flower-superlink"),
        "--insecure",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
    ]


def supernode_command(superlink: str, port: int, workspace: Path) -> list[str]:
    return [
        str(BIN / "flower-supernode"),
        "--insecure",
        "--superlink",
        superlink,
        "--port",
        str(port),
        "--node-config",
        f'workspace="{workspace.resolve()}"',
    ]


def write_app(directory: Path) -> Path:
    """The Flower app bundle: thin modules calling into ``silolearn.federation``, no
    dependencies of its own."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(APP_PYPROJECT)
    (directory / "server_app.py").write_text(
        '"""silolearn\'s ServerApp."""\n\nfrom silolearn.federation.server import app\n\n'
        '__all__ = ["app"]\n'
    )
    (directory / "client_app.py").write_text(
        '"""silolearn\'s ClientApp."""\n\nfrom silolearn.federation.client_app import app\n\n'
        '__all__ = ["app"]\n'
    )
    return directory


def write_cli_config(flwr_home: Path, superlink: str) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "silolearn"\n\n[superlink.silolearn]\n'
        f'address = "{superlink}"\ninsecure = true\n'
    )


def submit(app: Path, flwr_home: Path, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    """``flwr run`` with the run's directory; its exit code is not its outcome."""
    return start(
        [
            str(BIN / "flwr"),
            "run",
            str(app),
            "silolearn",
            "--stream",
            "--run-config",
            f'workdir="{workdir.resolve()}"',
        ],
        flwr_home,
        log,
    )


def wait(process: subprocess.Popen[bytes], deadline: float, poll: float = 0.5) -> bool:
    """Whether ``process`` ended before ``deadline`` (monotonic)."""
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def wait_listening(address: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether ``address`` accepts connections before ``deadline`` while ``process`` runs."""
    host, port = host_port(address, "--address")
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1.0):
            return True
        time.sleep(0.2)
    return False
