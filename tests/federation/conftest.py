"""Federations on loopback with real processes: sites with real data, the real command line
in process groups of its own, and the test's hand on them (ending them whatever happens,
killing a site outright)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from silolearn import Workspace
from silolearn.datasets import Row, sample
from silolearn.federation import processes
from silolearn.learning.shared import SharedStore
from silolearn.workspace import DB_FILE


class Loopback:
    """The processes of federations on loopback. Each command runs in its own process group
    (its Flower children with it) and is ended by the test, in ``finally``."""

    free_port = staticmethod(processes.free_port)

    @staticmethod
    def site(path: Path, tenant: str, rows: Sequence[Row], records: int) -> Path:
        """A site: a workspace of its own whose one tenant, fed ``records`` rows of real
        data, joined the shared layer."""
        ws = Workspace.init(path, actor="test")
        try:
            ws.create_tenant(tenant)
            ws.tenant(tenant).ingest(sample(list(rows), records, seed=11))
            SharedStore(ws).join(tenant)
        finally:
            ws.close()
        return path

    @staticmethod
    def cli(*args: str, log: Path) -> subprocess.Popen[bytes]:
        """The real command line in its own process group, its output (stdout and stderr)
        in ``log``."""
        return processes.cli(args, log)

    @staticmethod
    def end(process: subprocess.Popen[bytes]) -> None:
        """SIGTERM (a site stops its SuperNode), then SIGKILL of the group."""
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=grace)
        # the group outlives its leader: a SuperNode and the ClientApps it started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> list[int]:
        """SIGKILL a site outright: the command and every process it started (its
        SuperNode runs in a session of its own, its ClientApp and training workers under
        it), all stopped first so that none starts another; the pids killed."""
        root = psutil.Process(process.pid)
        stopped: dict[int, psutil.Process] = {}
        while True:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:  # it had ended: nothing of it is left to stop
                tree = []
            fresh = [p for p in tree if p.pid not in stopped]
            if not fresh:
                break
            for p in fresh:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGSTOP)
                stopped[p.pid] = p
        for p in stopped.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return sorted(stopped)

    @staticmethod
    def leftovers(root: Path) -> list[str]:
        """The processes still running whose command line names ``root``."""
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        return [line for line in ps.stdout.splitlines() if str(root) in line]

    @staticmethod
    def audit_head(site: Path) -> int:
        """The last sequence number of the site's audit chain, read without writing."""
        conn = sqlite3.connect(site / DB_FILE, timeout=60.0)
        try:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0])
        finally:
            conn.close()

    @staticmethod
    @contextlib.contextmanager
    def writes_held(site: Path) -> Iterator[None]:
        """The site's database write lock, held by the test: the site's next write waits
        (SQLite's busy timeout) until it is released. Nothing in a site writes to its
        database between its start and its first round's training, so a site held from its
        start trains no further than its first write while its SecAgg+ keys go through."""
        conn = sqlite3.connect(site / DB_FILE, timeout=60.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            conn.close()

    @staticmethod
    def wait_for(
        what: str,
        done: Callable[[], bool],
        *,
        watch: Sequence[subprocess.Popen[bytes]],
        timeout: float,
        poll: float = 0.2,
    ) -> None:
        """Poll ``done`` until it holds; fail if a watched process ends first or the
        deadline passes."""
        deadline = time.monotonic() + timeout
        while not done():
            ended = [p.args for p in watch if p.poll() is not None]
            assert not ended, f"{ended} ended while waiting for {what}"
            assert time.monotonic() < deadline, f"still waiting for {what} after {timeout} s"
            time.sleep(poll)


@pytest.fixture(scope="session")
def loopback() -> type[Loopback]:
    return Loopback
