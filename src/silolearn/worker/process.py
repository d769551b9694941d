"""What every job of a worker process shares: the encoder loaded ahead of the job, the
sandbox it confines itself to, and embedding through its tenant's cache."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.worker.job import WorkerJob
from silolearn.worker.remote import Send

if TYPE_CHECKING:
    from silolearn.learning.encoder import EmbeddingCache, FrozenEncoder


WARM: dict[str, Any] = {}
"""What the process loaded before its job (``--warm``): the encoder, or why it could not."""


WARM_MODULES = (
    "silolearn.learning.adapters",
    "silolearn.learning.metrics",
    "silolearn.worker.remote",
    "silolearn.validation.attacks",
    "silolearn.validation.canaries",
    "silolearn.validation.evidence",
)


def warm(base: Path) -> None:
    """Before the job arrives: import torch and the modules the jobs use, and
    load the encoder from ``base``, its digest taken as it is read. The process knows no
    tenant yet and reads nothing but the interpreter's files and the base model (both
    readable under the sandbox too); it embeds nothing, so it starts no thread the sandbox
    would not confine."""
    import importlib

    from silolearn.learning.encoder import FrozenEncoder

    t0 = time.perf_counter()
    try:
        for module in WARM_MODULES:  # code only: scipy.stats alone takes ~0.3 s
            importlib.import_module(module)
        WARM["encoder"] = FrozenEncoder.load(base, expected_sha256=None)
    except Exception as exc:  # the job loads the model itself and reports what is wrong
        WARM["error"] = f"{type(exc).__name__}: {exc}"
    WARM["seconds"] = round(time.perf_counter() - t0, 4)


def encoder_for(job: WorkerJob) -> FrozenEncoder:
    """The base model for ``job``, checked against the digest the coordinator recorded: the
    encoder loaded ahead of the job when it came from the job's path and hashed to that
    digest, otherwise loaded (and checked) now."""
    from silolearn.learning.encoder import FrozenEncoder

    warm: FrozenEncoder | None = WARM.pop("encoder", None)
    if (
        warm is not None
        and str(warm.model_dir) == str(Path(job.base_path))
        and warm.sha256 == job.base_sha256
    ):
        WARM["used"] = True
        return warm
    # load() hashes the files and refuses a digest other than the recorded one
    return FrozenEncoder.load(Path(job.base_path), expected_sha256=job.base_sha256)


def check_base(job: WorkerJob) -> None:
    from silolearn.learning.encoder import BaseModelTampered, model_digest

    actual = model_digest(Path(job.base_path))
    if actual != job.base_sha256:
        raise BaseModelTampered(
            f"the base model at {job.base_path} changed: expected sha256 "
            f"{job.base_sha256[:12]}..., found {actual[:12]}...",
            expected=job.base_sha256,
            actual=actual,
        )


SANDBOX: dict[str, Any] = {"abi": 0, "reason": "not applied"}


def confine(job: WorkerJob) -> dict[str, Any]:
    """Confine this process before it learns anything of the tenant: the interpreter and the
    base model read-only, the job's private temporary directory read-write, and nothing
    else. The workspace (its database, keyring, audit head and every blob directory, the
    tenant's own included) is out of reach: the worker's data comes over its socket (I11).
    Landlock confines the calling thread and what it starts later, so the report counts the
    process's threads at that moment (1: nothing escapes)."""
    from silolearn.security.sandbox import default_read_paths, restrict_filesystem

    if job.tmp_dir:
        os.environ["TMPDIR"] = job.tmp_dir
        tempfile.tempdir = job.tmp_dir  # a warm process already asked for one
    if not job.sandbox:
        return {"abi": 0, "reason": "disabled"}
    write = [Path(job.tmp_dir)] if job.tmp_dir else []
    threads = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").is_dir() else None
    report = restrict_filesystem(read=[*default_read_paths(), Path(job.base_path)], write=write)
    exposed: list[str] = []
    if job.workspace:
        workspace = Path(job.workspace).resolve()
        exposed = [p for p in report.read if workspace.is_relative_to(p)]
    return {**report.to_dict(), "workspace_exposed": exposed, "threads": threads}


def embed_through(
    cache: EmbeddingCache,
    keys: list[bytes],
    texts: list[str],
    encoder: FrozenEncoder,
    max_tokens: int,
    send: Send,
) -> tuple[npt.NDArray[np.float32], int]:
    """Embeddings of ``texts`` (one per key, in order), computing and caching only those the
    cache lacks; returns the matrix and how many were computed. The caller saves the cache."""
    cached = cache.get_many(keys)
    missing = [i for i, k in enumerate(keys) if k not in cached]
    for start in range(0, len(missing), 256):
        rows = missing[start : start + 256]
        vectors = encoder.embed([texts[i] for i in rows], max_length=max_tokens)
        cache.put_many([keys[i] for i in rows], vectors)
        send("embed", {"done": start + len(rows), "of": len(missing)})
    cached = cache.get_many(keys)
    return np.stack([cached[k] for k in keys]), len(missing)
