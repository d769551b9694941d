"""The ``probe`` action: from inside a real training worker of tenant A, try everything I1,
I2, I5 and I11 forbid, and report and audit each attempt. Used by ``silolearn verify
isolation`` and the isolation tests.

The probe is told where the workspace's files are (an attacker would know): the database,
the keyring, the audit head, A's and the other tenants' blob directories, and one of A's
eval records as the ciphertext a worker reading the database would find. Each attempt is
refused by the operating system (Landlock denies the workspace to a worker), by
cryptography (the worker holds no key that opens anything of the tenant) or by capability
(the coordinator serves a training job no eval data and no other tenant's data).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from silolearn.errors import AccessDenied, DecryptionError, SiloError
from silolearn.worker.job import LOCAL, WorkerJob
from silolearn.worker.process import SANDBOX, check_base
from silolearn.worker.remote import RemoteScope, Send


class _NothingToTry(Exception):
    """A probe found nothing to attack: reported as not blocked, never as a pass."""


def held_keys(job: WorkerJob) -> dict[str, bytes]:
    """Every value the worker holds that could be an AES key: the job's byte fields and byte
    parameters of 16, 24 or 32 bytes, by name. A key added to a job later is found too."""
    found: dict[str, bytes] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, bytes) and len(value) in (16, 24, 32):
            found[name] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{name}.{key}", item)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                visit(f"{name}[{i}]", item)

    for f in fields(job):
        if not f.metadata.get(LOCAL):
            visit(f.name, getattr(job, f.name))
    return found


def open_with_held_keys(job: WorkerJob, box: bytes, *, kind: str, object_id: str) -> bytes:
    """Try every key ``job`` gives its worker on one of its tenant's ciphertexts, as a worker
    reading the database behind the coordinator's back would: the plaintext if one opens
    it, else ``DecryptionError`` naming what was tried."""
    from silolearn.security.envelope import binding, open_sealed

    keys = held_keys(job)
    aad = binding(job.tenant_id, kind, object_id)
    for material in keys.values():
        with contextlib.suppress(DecryptionError):
            return open_sealed(material, box, aad, what=object_id)
    tried = ", ".join(keys) or "it holds none"
    raise DecryptionError(
        f"no key the worker holds opens its {kind} record ({tried})", object=object_id
    )


class _Probe:
    def __init__(self, job: WorkerJob, send: Send) -> None:
        self.job = job
        self.scope = RemoteScope(send, job.tenant_name)
        self.attempts: list[dict[str, Any]] = []
        self.files = job.params["files"]

    def attempt(self, name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except _NothingToTry as exc:
            self.attempts.append({"attempt": name, "blocked": False, "how": f"not tried: {exc}"})
            return
        except PermissionError as exc:
            how = f"operating system: {exc.strerror}"
        except DecryptionError as exc:
            how = f"cryptography: {exc.message}"
        except AccessDenied as exc:
            how = f"capability: {exc.message}"
        except SiloError as exc:
            how = f"{exc.code}: {exc.message}"
        except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
            how = f"{type(exc).__name__}: {exc}"
        else:
            self.attempts.append({"attempt": name, "blocked": False, "how": "it succeeded"})
            self.scope.audit("isolation.breach", obj=name, details={"worker": True})
            return
        self.attempts.append({"attempt": name, "blocked": True, "how": how})
        refused_by = how.split(":")[0]
        self.scope.audit(
            "access.denied", obj=name, details={"worker": True, "refused_by": refused_by}
        )

    # -- the attacks ---------------------------------------------------------------------

    def read_rows(self, table: str, tenant_id: str, kind: str) -> None:
        """Open the database file behind the coordinator's back and decrypt rows of it."""
        database = str(self.files["database"])
        os.close(os.open(database, os.O_RDONLY))  # Landlock refuses it
        raw = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            rows = raw.execute(
                f"SELECT rid, box FROM {table} WHERE tenant_id = ? LIMIT 5", (tenant_id,)
            ).fetchall()
        finally:
            raw.close()
        if not rows:
            raise _NothingToTry(f"no rows in {table}")
        for rid, box in rows:
            open_with_held_keys(self.job, bytes(box), kind=kind, object_id=bytes(rid).hex())

    def read_metadata(self, tenant_id: str, tenant_name: str) -> None:
        """Open the database file and read a tenant's metadata: its versions' sealed lineage
        and metrics, and the sealed details of its audit events. A row still in clear is a
        breach; a sealed one must not open under anything the worker holds."""
        from silolearn.audit.log import SEALED_DETAILS
        from silolearn.storage.metadata import ADAPTER_VERSIONS, AUDIT_KIND, METADATA_KIND, UNSEALED

        database = str(self.files["database"])
        os.close(os.open(database, os.O_RDONLY))  # Landlock refuses it
        raw = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            versions = raw.execute(
                "SELECT version, sealed, dek_version FROM adapter_versions WHERE tenant_id = ? "
                "LIMIT 5",
                (tenant_id,),
            ).fetchall()
            events = raw.execute(
                "SELECT seq, details FROM audit_events WHERE tenant = ? ORDER BY seq DESC LIMIT 20",
                (tenant_name,),
            ).fetchall()
        finally:
            raw.close()
        boxes: list[tuple[bytes, str, str]] = []
        for version, sealed, dek_version in versions:
            if int(dek_version) == UNSEALED:
                return  # in clear: the attempt succeeded
            boxes.append((bytes(sealed), METADATA_KIND, ADAPTER_VERSIONS.object_id(version)))
        for seq, details in events:
            box = (json.loads(details).get(SEALED_DETAILS) or {}).get("box")
            if box:
                boxes.append((bytes.fromhex(str(box)), AUDIT_KIND, str(seq)))
        if not boxes:
            raise _NothingToTry("the other tenant has no sealed metadata")
        for box, kind, object_id in boxes:
            open_with_held_keys(self.job, box, kind=kind, object_id=object_id)

    def read_blob_files(self, directory: str) -> None:
        """Read a blob directory's files and decrypt one."""
        try:
            files = sorted(Path(directory).iterdir())
        except FileNotFoundError:
            raise _NothingToTry("no blob directory") from None
        if not files:
            raise _NothingToTry("no blobs")
        data = files[0].read_bytes()
        open_with_held_keys(self.job, data, kind="blob", object_id=files[0].name.split(".")[0])

    def write_database(self) -> None:
        """Open the database file for writing (nothing is written when it opens)."""
        os.close(os.open(str(self.files["database"]), os.O_RDWR))

    def read_keyring(self) -> None:
        from silolearn.security.keys import LocalKeyring

        ring = LocalKeyring(Path(self.files["keyring"]), sealed=bool(self.job.params["sealed"]))
        for other in self.job.params["others"]:
            ring.token_key(str(other["id"]))

    def decrypt_own_eval(self) -> None:
        """The cryptographic half, on an eval ciphertext of its own tenant handed to it:
        whatever the operating system lets a worker read, no key it holds opens it."""
        sample = self.job.params.get("eval_box")
        if sample is None:
            raise _NothingToTry("the tenant has no eval records")
        box, object_id = sample["box"], str(sample["object_id"])
        open_with_held_keys(self.job, box, kind="eval", object_id=object_id)


def probe(job: WorkerJob, send: Send) -> dict[str, Any]:
    check_base(job)
    run = _Probe(job, send)
    files, scope = run.files, run.scope
    for other in job.params["others"]:
        other_id, name = str(other["id"]), str(other["name"])
        run.attempt(
            f"read records of {name}", partial(run.read_rows, "train_records", other_id, "train")
        )
        run.attempt(f"read blobs of {name}", partial(run.read_blob_files, str(other["blob_dir"])))
        run.attempt(f"read metadata of {name}", partial(run.read_metadata, other_id, name))
        run.attempt(
            f"ask the coordinator for records of {name}",
            partial(scope.ask, "scope.records", {"store": "train", "tenant": other_id}),
        )
    database = str(files["database"])
    run.attempt("open the database file", lambda: os.close(os.open(database, os.O_RDONLY)))
    run.attempt("open the database file for writing", run.write_database)
    run.attempt("read the keyring", run.read_keyring)
    run.attempt("read the audit head", lambda: Path(files["audit_head"]).read_bytes())
    run.attempt("read its own blob files", lambda: run.read_blob_files(str(files["blob_dir"])))
    run.attempt("decrypt its own eval record with the keys it holds", run.decrypt_own_eval)
    run.attempt("read its own eval store", lambda: scope.eval.read(limit=1))
    run.attempt(
        "read its own eval embeddings",
        lambda: scope.blobs.get(f"eval/embeddings/{job.base_sha256}"),
    )
    return {"sandbox": SANDBOX, "attempts": run.attempts}
