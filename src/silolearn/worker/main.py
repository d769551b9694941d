"""The isolated worker process (invariants I2 and I11): one tenant, one purpose, one
process, holding only what its job needs.

``silolearn.worker.runner`` starts ``python -m silolearn.worker --fd N`` as a new interpreter
(spawned, never forked: no memory of the coordinator, which holds every tenant's keys, is
inherited) with a scrubbed environment (no keyring passphrase), and sends the job over the
socket ``N`` as typed data (``silolearn.worker.protocol``: JSON and raw frames, never a
pickle, either way). The job carries the tenant's id and name, the read-only base model's
path and digest, the action and its parameters: no key, no database, no blob directory.

Before it learns anything of the tenant the worker confines itself with Landlock where the
kernel has it: the Python installation and the base model read-only, a private temporary
directory read-write, and nothing of the workspace (``silolearn.worker.process.confine``).
Its tenant's data comes over the socket: it asks and the coordinator answers from a scope
of the job's purpose (``silolearn.worker.service``), so a training worker's eval read is
refused there (I5), and the records arrive decrypted by the coordinator, which keeps every
key. The events it wants recorded are appended by the coordinator under the actor
``worker:<action>:<tenant>``; it cannot sign checkpoints.

The worker never writes a version: it returns its artefact to the coordinator, which
registers it. A worker that dies leaves nothing in the registry.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from silolearn.errors import ProtocolViolation, SiloError
from silolearn.worker.evaluate import evaluate
from silolearn.worker.gates import gates
from silolearn.worker.job import WorkerJob
from silolearn.worker.probe import probe
from silolearn.worker.process import SANDBOX, WARM, confine
from silolearn.worker.process import warm as warm_up
from silolearn.worker.protocol import (
    Channel,
    ErrorMessage,
    JobMessage,
    ResultMessage,
    check_params,
    read_job,
)
from silolearn.worker.remote import Link, Send
from silolearn.worker.shared import shared
from silolearn.worker.train import train

HANDLERS: dict[str, Callable[[WorkerJob, Send], dict[str, Any]]] = {
    "train": train,
    "evaluate": evaluate,
    "gates": gates,
    "probe": probe,
    "shared": shared,
}


def serve(channel: Channel, *, warm: Path | None = None) -> None:
    """Receive one job, run it, send its result (or the error that stopped it); with
    ``warm`` (the base model's directory), load the encoder while waiting for it."""
    if warm is not None:
        warm_up(warm)
    try:
        message = channel.receive()
    except EOFError:
        return
    except ProtocolViolation as exc:
        channel.send(ErrorMessage(code=exc.code, message=exc.message, details=_plain(exc.details)))
        return
    if message is None:  # started ahead of a job that never came (its round failed first)
        return
    from silolearn.learning.adapters import deterministic_torch

    send = Link(channel)
    try:
        if not isinstance(message, JobMessage):
            raise ProtocolViolation(f"the coordinator sent a {message.type} message, not a job")
        job = read_job(message, WorkerJob)
        check_params(job.action, job.params)
        SANDBOX.clear()
        SANDBOX.update(confine(job))
        deterministic_torch()
        send("started", {"pid": os.getpid(), "warm": "encoder" in WARM})
        result = HANDLERS[job.action](job, send)
        channel.send(ResultMessage(action=job.action, result=result))  # type: ignore[arg-type]
    except SiloError as exc:
        channel.send(ErrorMessage(code=exc.code, message=exc.message, details=_plain(exc.details)))
    except BaseException as exc:
        channel.send(
            ErrorMessage(
                code="TrainingFailed",
                message=f"{type(exc).__name__}: {exc}",
                details={"traceback": traceback.format_exc(limit=8)},
            )
        )


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """An error's details as plain data: what JSON cannot hold becomes its ``str``."""
    plain: dict[str, Any] = json.loads(json.dumps(details, default=str))
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(prog="silolearn-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--warm", type=Path, default=None, help="base model to load ahead")
    args = parser.parse_args()
    channel = Channel(socket.socket(fileno=args.fd))
    try:
        serve(channel, warm=args.warm)
    finally:
        channel.close()
    # the result (or error) is sent and every store the job wrote is committed and closed:
    # skip the interpreter's teardown of torch and transformers, ~0.8 s the coordinator
    # would wait for
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
