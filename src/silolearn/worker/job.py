"""What a worker is given, and what stays with the coordinator.

A ``WorkerJob`` is what crosses the socket: the action, the tenant's id and name, the base
model's path and digest, the run's settings and parameters. It carries no key, no path into
the workspace and no database handle: the worker asks the coordinator for its data over the
socket (``silolearn.worker.service``), and the coordinator answers from a scope of the job's
purpose. ``Access`` is the coordinator's half: the keys and paths that serve those requests.
It rides along in the coordinator's ``WorkerJob`` (a local field) and is never sent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from silolearn.errors import InvalidInput

ACTIONS = ("train", "evaluate", "gates", "probe", "shared")
PURPOSES = {
    "train": "training",
    "evaluate": "evaluation",
    "gates": "audit",
    "probe": "training",
    "shared": "training",
}
"""The scope purpose (``silolearn.storage.scope.Purpose``) each action's requests are served
from: the coordinator reads eval data for a job only when its purpose holds the eval key."""
EVAL_KEY_ACTIONS = frozenset({"evaluate", "gates"})
"""The actions whose data requests the coordinator serves with the evaluation key."""

LOCAL = "local"
"""The metadata flag of a ``WorkerJob`` field that stays in the coordinator."""


@dataclass(frozen=True)
class Access:
    """What the coordinator holds to answer one job's data requests: the tenant's database,
    its blob directory and its unwrapped keys (the evaluation key only for
    ``EVAL_KEY_ACTIONS``). It never leaves the coordinator."""

    workspace: Path
    db_file: Path
    blob_dir: Path
    tenant_id: str
    tenant_name: str
    dek_version: int
    data_key: bytes = field(repr=False)
    token_key: bytes = field(repr=False)
    eval_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WorkerJob:
    """One job of one worker: what it is sent, and (``access``) what the coordinator keeps
    to serve it."""

    action: str
    tenant_id: str
    tenant_name: str
    base_path: str
    base_sha256: str
    training: dict[str, Any]
    params: dict[str, Any]
    sandbox: bool = True
    tmp_dir: str | None = None
    workspace: str | None = None
    """Only to report whether the sandbox left the workspace readable; never opened."""
    access: Access | None = field(default=None, repr=False, compare=False, metadata={LOCAL: True})

    @property
    def actor(self) -> str:
        """Who the coordinator records the worker's audit events as."""
        return f"worker:{self.action}:{self.tenant_name}"


class NothingToLearn(InvalidInput):
    """A round found no labelled training record new since its parent."""


def records_digest(tenant_id: str, ids: list[str]) -> str:
    """The lineage digest of the exact records a run used, in the order it used them.

    Each line is ``tenant_id NUL record_id LF``: two tenants' records can share an id, never
    a tenant id, so a run that mixed tenants could not reproduce this digest from one
    tenant's records."""
    digest = hashlib.sha256()
    for record_id in ids:
        digest.update(f"{tenant_id}\x00{record_id}\n".encode())
    return digest.hexdigest()


def code_version() -> str:
    """The package version and a digest of its source files."""
    root = Path(__file__).resolve().parents[1]  # the silolearn package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes())
    from silolearn.version import __version__

    return f"{__version__}+{digest.hexdigest()[:12]}"
