"""Starting isolated workers (I2) and limiting how many runs a tenant has at once.

``run_worker`` starts ``python -m silolearn.learning.worker`` as a new interpreter with a
scrubbed environment (or takes a ``Worker`` started ahead of the job to warm up), hands it
one job over a private socket, relays its progress and returns its result. A worker that
crashes, is killed or times out raises ``TrainingFailed``; nothing it computed is kept.

``run_slot`` takes one of the tenant's run slots (``training.max_runs_per_tenant``) as an
advisory file lock: the kernel releases it when the holder dies, so a killed run never
leaves a lock behind.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from silolearn import errors
from silolearn.errors import ConflictError, SiloError, TrainingFailed
from silolearn.learning.worker import WorkerJob

Progress = Callable[[int, str, dict[str, Any]], None]
Request = Callable[[str, dict[str, Any]], dict[str, Any]]
"""Answers a worker's question (``name``, details) mid-job; a ``SiloError`` it raises is
passed to the worker as a refusal and re-raised here once the worker has stopped."""

PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "TMPDIR", "TZ")
"""The only variables a worker inherits: nothing named SILOLEARN_*, so no passphrase."""


class RunLimitReached(ConflictError):
    """The tenant already has as many runs in progress as it may have."""


def worker_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _error_class(name: str) -> type[SiloError]:
    from silolearn.learning import encoder, worker

    for module in (errors, encoder, worker):
        found = getattr(module, name, None)
        if isinstance(found, type) and issubclass(found, SiloError):
            return found
    return TrainingFailed


def run_worker(
    job: WorkerJob,
    *,
    timeout: float,
    on_progress: Progress | None = None,
    on_request: Request | None = None,
    worker: Worker | None = None,
) -> dict[str, Any]:
    """Run ``job`` in a fresh worker process (``worker``, when one was started ahead of the
    job) and return its result."""
    process = Worker() if worker is None else worker
    with process:
        return process.run(job, timeout=timeout, on_progress=on_progress, on_request=on_request)


class Worker:
    """One worker process for one job.

    Started ahead of its job with ``warm`` (the base model's directory), the process imports
    torch and transformers and loads the encoder while the coordinator does something else:
    a round's gate worker warms up while the training worker trains. It learns which tenant
    it works for, and gets that tenant's keys, only with the job, and confines itself
    (``silolearn.security.sandbox``) before reading anything of it. Use as a context manager:
    leaving it kills a process that never got its job."""

    def __init__(self, *, warm: Path | None = None) -> None:
        parent_sock, child_sock = socket.socketpair()
        argv = [sys.executable, "-m", "silolearn.learning.worker", "--fd", str(child_sock.fileno())]
        if warm is not None:
            argv += ["--warm", str(warm)]
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        try:
            self.process = subprocess.Popen(
                argv,
                env=worker_environment(),
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
            )
        finally:
            child_sock.close()
        self._drain = threading.Thread(
            target=_drain, args=(self.process, self._tail), name="worker-stderr", daemon=True
        )
        self._drain.start()
        self._conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self._used = False

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        job: WorkerJob,
        *,
        timeout: float,
        on_progress: Progress | None = None,
        on_request: Request | None = None,
    ) -> dict[str, Any]:
        """Hand the process ``job``, relay its progress and requests, return its result."""
        if self._used:
            raise RuntimeError("a worker process runs one job")
        self._used = True
        try:
            with tempfile.TemporaryDirectory(prefix="silolearn-worker-") as tmp:
                return self._exchange(
                    dataclasses.replace(job, tmp_dir=tmp), timeout, on_progress, on_request
                )
        finally:
            self.close()

    def _exchange(
        self,
        job: WorkerJob,
        timeout: float,
        on_progress: Progress | None,
        on_request: Request | None,
    ) -> dict[str, Any]:
        process, conn = self.process, self._conn
        deadline = time.monotonic() + timeout
        refusal: SiloError | None = None
        conn.send(job)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                raise TrainingFailed(
                    f"the {job.action} worker of {job.tenant_name!r} timed out after "
                    f"{timeout:.0f} s and was killed",
                    tenant=job.tenant_name,
                    pid=process.pid,
                )
            if not conn.poll(min(remaining, 0.5)):
                if process.poll() is not None and not conn.poll(0):
                    if refusal is not None:
                        raise refusal
                    raise _died(job, process, self._tail)
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                process.wait()
                if refusal is not None:
                    raise refusal from None
                raise _died(job, process, self._tail) from None
            if message[0] == "request":
                try:
                    if on_request is None:
                        raise TrainingFailed(f"the {job.action} worker asked {message[1]!r}")
                    answer = on_request(message[1], message[2])
                except SiloError as exc:
                    refusal = exc
                    conn.send(("refused", exc.code, exc.message))
                else:
                    conn.send(("reply", answer))
                continue
            if message[0] == "progress":
                if on_progress is not None:
                    on_progress(process.pid, message[1], message[2])
                continue
            if message[0] == "result":
                result: dict[str, Any] = message[1]
                result["pid"] = process.pid
                return result
            _, code, text, details = message
            if refusal is not None:
                raise refusal
            raise _error_class(code)(text, **details)

    def close(self) -> None:
        """Close the link; a process that never got a job is killed, one that did is given
        30 s to exit."""
        if self._conn.closed:
            return
        self._conn.close()
        process = self.process
        if process.poll() is None:
            if not self._used:
                process.kill()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._drain.join(timeout=5)
        if process.stderr is not None:
            process.stderr.close()


def _drain(process: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        tail.append(line.decode("utf-8", "replace").rstrip())


def _died(
    job: WorkerJob, process: subprocess.Popen[bytes], tail: collections.deque[str]
) -> TrainingFailed:
    code = process.wait()
    how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
    return TrainingFailed(
        f"the {job.action} worker of {job.tenant_name!r} (pid {process.pid}) {how} before "
        "finishing; nothing it computed was kept",
        tenant=job.tenant_name,
        pid=process.pid,
        returncode=code,
        stderr=list(tail)[-10:],
    )


@contextlib.contextmanager
def run_slot(lock_dir: Path, tenant_id: str, tenant: str, limit: int) -> Iterator[int]:
    """Hold one of the tenant's ``limit`` run slots; ``RunLimitReached`` if all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(limit):
        fd = os.open(lock_dir / f"{tenant_id}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield slot
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return
    raise RunLimitReached(
        f"tenant {tenant!r} already has {limit} training run(s) in progress "
        "(training.max_runs_per_tenant)",
        tenant=tenant,
        limit=limit,
    )
