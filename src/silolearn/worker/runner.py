"""Starting isolated workers (I2) and limiting how many runs a tenant has at once.

``run_worker`` starts ``python -m silolearn.worker`` as a new interpreter with a
scrubbed environment (or takes a ``Worker`` started ahead of the job to warm up), hands it
one job over a private socket, relays its progress and returns its result. A worker that
crashes, is killed or times out raises ``TrainingFailed``; nothing it computed is kept.

The socket carries typed messages of data (``silolearn.worker.protocol``), never pickles
(I11): a worker that sends anything else (a pickle, an oversized or malformed message, a
result off its schema) is killed and ``ProtocolViolation`` raised, nothing of it loaded.

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
from pathlib import Path
from typing import Any

from silolearn import errors
from silolearn.errors import ConflictError, ProtocolViolation, SiloError, TrainingFailed
from silolearn.worker.job import WorkerJob
from silolearn.worker.protocol import (
    Channel,
    ErrorMessage,
    Message,
    ProgressMessage,
    RefusalMessage,
    ReplyMessage,
    RequestMessage,
    ResultMessage,
    check_params,
    check_result,
    job_message,
)
from silolearn.worker.service import DataService

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
    from silolearn.learning import encoder
    from silolearn.worker import job

    for module in (errors, encoder, job):
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
    torch and loads the encoder while the coordinator does something else:
    a round's gate worker warms up while the training worker trains. It learns which tenant
    it works for, and gets that tenant's keys, only with the job, and confines itself
    (``silolearn.security.sandbox``) before reading anything of it. Use as a context manager:
    leaving it kills a process that never got its job."""

    def __init__(self, *, warm: Path | None = None) -> None:
        parent_sock, child_sock = socket.socketpair()
        argv = [sys.executable, "-m", "silolearn.worker", "--fd", str(child_sock.fileno())]
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
        self._channel = Channel(parent_sock)
        self._used = False
        self._closed = False

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
        check_params(job.action, job.params)  # a job off its schema is the coordinator's bug
        service = None if job.access is None else DataService(job)
        try:
            with tempfile.TemporaryDirectory(prefix="silolearn-worker-") as tmp:
                return self._exchange(
                    dataclasses.replace(job, tmp_dir=tmp),
                    timeout,
                    on_progress,
                    _Requests(job, service, on_request),
                )
        finally:
            self.close()
            if service is not None:
                service.close()

    def _exchange(
        self,
        job: WorkerJob,
        timeout: float,
        on_progress: Progress | None,
        requests: _Requests,
    ) -> dict[str, Any]:
        process = self.process
        deadline = time.monotonic() + timeout
        refusal: SiloError | None = None
        self._send(job, job_message(job))
        while True:
            message = self._next(job, deadline, timeout)
            if message is None:
                if refusal is not None:
                    raise refusal
                raise _died(job, process, self._tail)
            if isinstance(message, ProgressMessage):
                if on_progress is not None:
                    on_progress(process.pid, message.event, message.details)
            elif isinstance(message, RequestMessage):
                reply: Message
                try:
                    reply = ReplyMessage(answer=requests.answer(message.name, message.details))
                except SiloError as exc:
                    if not requests.is_data(message.name):
                        # a refused plan or step is why the worker stops: raised as the cause
                        refusal = exc
                    reply = RefusalMessage(code=exc.code, message=exc.message)
                self._send(job, reply)
            elif isinstance(message, ResultMessage):
                return {**self._checked(job, message), "pid": process.pid}
            elif isinstance(message, ErrorMessage):
                if refusal is not None:
                    raise refusal
                raise _worker_error(message)
            else:
                what = ProtocolViolation(
                    f"the peer sent a {message.type} message, which only the coordinator sends",
                    reason="unexpected",
                )
                raise self._violated(job, what)

    def _next(self, job: WorkerJob, deadline: float, timeout: float) -> Message | None:
        """The worker's next message, or None once it has exited; a timed-out worker is
        killed (``TrainingFailed``), so is one that breaks the protocol (``ProtocolViolation``)."""
        process, channel = self.process, self._channel
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if channel.poll(min(remaining, 0.5)):
                try:
                    message = channel.receive(timeout=remaining)
                except ProtocolViolation as exc:
                    raise self._violated(job, exc) from None
                except TimeoutError:
                    break
                except (EOFError, OSError):
                    message = None
                if message is None:
                    self._reap(deadline)
                return message
            if process.poll() is not None and not channel.poll(0):
                return None
        process.kill()
        raise TrainingFailed(
            f"the {job.action} worker of {job.tenant_name!r} timed out after "
            f"{timeout:.0f} s and was killed",
            tenant=job.tenant_name,
            pid=process.pid,
        )

    def _send(self, job: WorkerJob, message: Message) -> None:
        try:
            self._channel.send(message)
        except OSError:  # the worker is gone: say how it ended
            self._reap(time.monotonic() + 30)
            raise _died(job, self.process, self._tail) from None

    def _reap(self, deadline: float) -> None:
        """Wait for a worker that closed its socket to exit, and kill it at ``deadline``."""
        try:
            self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _checked(self, job: WorkerJob, message: ResultMessage) -> dict[str, Any]:
        try:
            if message.action != job.action:
                raise ProtocolViolation(
                    f"the peer sent a {message.action} result for a {job.action} job",
                    reason="unexpected",
                )
            return check_result(job.action, message.result)
        except ProtocolViolation as exc:
            raise self._violated(job, exc) from None

    def _violated(self, job: WorkerJob, exc: ProtocolViolation) -> ProtocolViolation:
        """Kill the worker that broke the protocol; the error that names it."""
        process = self.process
        process.kill()
        process.wait()
        self._channel.close()
        who = f"the {job.action} worker of {job.tenant_name!r} (pid {process.pid})"
        return ProtocolViolation(
            exc.message.replace("the peer", who, 1)
            + "; nothing of it was loaded or run, the worker was killed",
            **{**exc.details, "tenant": job.tenant_name, "action": job.action, "pid": process.pid},
        )

    def close(self) -> None:
        """Close the link; a process that never got a job is killed, one that did is given
        30 s to exit."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()
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


class _Requests:
    """Where a worker's requests go: ``scope.*`` data requests to the job's data service,
    the rest (a DP plan, a shared-layer step) to the caller's ``on_request``."""

    def __init__(
        self, job: WorkerJob, service: DataService | None, on_request: Request | None
    ) -> None:
        self.job, self.service, self.on_request = job, service, on_request

    @staticmethod
    def is_data(name: str) -> bool:
        return name.startswith("scope.")

    def answer(self, name: str, details: dict[str, Any]) -> dict[str, Any]:
        if self.is_data(name):
            if self.service is None:
                raise TrainingFailed(
                    f"the {self.job.action} worker asked for data it has no access to"
                )
            return self.service.answer(name, details)
        if self.on_request is None:
            raise TrainingFailed(f"the {self.job.action} worker asked {name!r}")
        return self.on_request(name, details)


def _worker_error(message: ErrorMessage) -> SiloError:
    """The typed error a worker reported (``TrainingFailed`` for a class it cannot name)."""
    cls = _error_class(message.code)
    try:
        return cls(message.message, **message.details)
    except TypeError:  # details that do not fit the class's constructor
        return TrainingFailed(message.message, error=message.code, details=message.details)


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
