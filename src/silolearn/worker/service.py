"""The coordinator's side of a worker's data: one tenant's scope, for one job's purpose.

A worker never opens the workspace (Landlock denies it every file of it) and holds no key.
It asks for what its job reads with ``scope.*`` requests over its socket, and the
coordinator answers them here, from a ``TenantScope`` of the job's purpose: a training
worker's request for an eval record is refused by the scope's capabilities exactly as
before, and the scope it is served from does not hold the evaluation key either (I5).
Every request names nothing but what it reads in its own tenant: a request that names
another tenant is refused and audited (I1, I2).

The requests:

- ``scope.records``: the tenant's ``train`` or ``eval`` records up to a cutoff, or its
  ``golden`` suite; the rows as one JSON frame and their keyed record-id hashes as another
  (the worker caches embeddings by those hashes and never holds the key that makes them),
  and for training records their labels' provenance as a third;
- ``scope.blob`` and ``scope.put_blob``: a blob of the tenant, read or written;
- ``scope.keyed_hash``: keyed hashes of label names in the ``shared-label`` domain only (a
  shared round matches label names across tenants without showing them);
- ``scope.audit``: an event the worker wants recorded, appended under the actor
  ``worker:<action>:<tenant>``, for its own tenant, of an action it may record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from silolearn.errors import AccessDenied, InvalidInput
from silolearn.records import LabelOrigin
from silolearn.worker.job import EVAL_KEY_ACTIONS, PURPOSES, Access, WorkerJob

KEYED_HASH_DOMAINS = frozenset({"shared-label"})
"""The keyed-hash domains a worker may ask for; the record-id and PII-token domains are not
among them (a worker holding those hashes for values of its choosing would hold an oracle)."""
WORKER_AUDIT_ACTIONS = frozenset({"shared.contribute", "access.denied", "isolation.breach"})
"""What a worker may ask the coordinator to record."""
STORES = ("train", "eval", "golden")


class DataService:
    """Answers one job's ``scope.*`` requests; opens its own database connection (in the
    thread that relays the job) on the first one, and closes it with ``close``."""

    def __init__(self, job: WorkerJob) -> None:
        if job.access is None:
            raise ValueError("a job without access has no data to serve")
        self.job = job
        self.access: Access = job.access
        self._scope: Any = None
        self._conn: Any = None

    # -- the scope, opened on first use -----------------------------------------------------

    @property
    def scope(self) -> Any:
        if self._scope is None:
            self._scope = self._open()
        return self._scope

    def _open(self) -> Any:
        from silolearn import db
        from silolearn.audit.log import AuditLog
        from silolearn.security.envelope import DataKey
        from silolearn.storage.scope import Purpose, TenantRef, TenantScope

        access = self.access
        purpose = Purpose(PURPOSES[self.job.action])
        self._conn = db.connect(Path(access.db_file))
        audit = AuditLog(
            self._conn,
            actor=self.job.actor,
            head_file=Path(access.workspace) / "audit" / "head.json",
            signing_key=None,
            checkpoint_every=10**12,
        )
        eval_key = None
        if access.eval_key is not None and self.job.action in EVAL_KEY_ACTIONS:
            eval_key = DataKey(access.tenant_id, access.dek_version, access.eval_key)
        return TenantScope(
            conn=self._conn,
            audit=audit,
            tenant=TenantRef(access.tenant_id, access.tenant_name),
            data_key=DataKey(access.tenant_id, access.dek_version, access.data_key),
            eval_key=eval_key,
            token_key=access.token_key,
            blob_dir=Path(access.blob_dir),
            purpose=purpose,
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._scope = None

    # -- requests -------------------------------------------------------------------------

    def answer(self, name: str, details: dict[str, Any]) -> dict[str, Any]:
        """The answer to one request, or the typed error that refuses it."""
        handler = _HANDLERS.get(name)
        if handler is None:
            raise InvalidInput(f"the worker asked for {name!r}, which is not a data request")
        tenant = details.get("tenant")
        if tenant is not None and tenant != self.access.tenant_id:
            self.scope.audit(
                "access.denied",
                obj=f"{name} of another tenant",
                details={"worker": True, "refused_by": "capability", "purpose": self.purpose},
            )
            raise AccessDenied(
                f"the worker of {self.access.tenant_name!r} asked for another tenant's data: "
                "its channel serves its own tenant only",
                tenant=self.access.tenant_name,
            )
        try:
            return handler(self, details)
        except ValueError as exc:  # a name the store refuses
            raise InvalidInput(f"the worker's {name} request: {exc}") from None

    @property
    def purpose(self) -> str:
        return PURPOSES[self.job.action]

    def _records(self, details: dict[str, Any]) -> dict[str, Any]:
        store = details.get("store")
        until, limit = details.get("until"), details.get("limit")
        if store not in STORES:
            raise InvalidInput(f"no record store {store!r} (one of {', '.join(STORES)})")
        if until is not None and not isinstance(until, str):
            raise InvalidInput("until is a timestamp string")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidInput("limit is a non-negative integer")
        scope = self.scope
        if store == "golden":
            stored = scope.eval.golden()
        else:
            stored = getattr(scope, store).read(until=until, limit=limit)
        rows = [
            [s.seq, s.record.id, s.record.text, s.record.label, s.record.timestamp, s.record.meta]
            for s in stored
        ]
        keys = b"".join(scope.record_id_hash(s.record) for s in stored)
        answer = {"rows": json.dumps(rows, ensure_ascii=False).encode(), "keys": keys}
        if store == "train":
            # each label's provenance, so a round can bound the self-confirmed ones
            origins = [(s.origin or LabelOrigin()).to_json() for s in stored]
            answer["origins"] = json.dumps(origins).encode()
        return answer

    def _blob(self, details: dict[str, Any]) -> dict[str, Any]:
        return {"data": self.scope.blobs.get(_name(details))}

    def _put_blob(self, details: dict[str, Any]) -> dict[str, Any]:
        data = details.get("data")
        if not isinstance(data, bytes):
            raise InvalidInput("a blob is sent as bytes")
        info = self.scope.blobs.put(_name(details), data)
        return {"sha256": info.sha256, "size": info.size}

    def _keyed_hash(self, details: dict[str, Any]) -> dict[str, Any]:
        domain, values = details.get("domain"), details.get("values")
        if domain not in KEYED_HASH_DOMAINS:
            raise AccessDenied(f"a worker may not ask for keyed hashes of domain {domain!r}")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidInput("values is a list of strings")
        return {"hashes": [self.scope.keyed_hash(domain, v).hex() for v in values]}

    def _audit(self, details: dict[str, Any]) -> dict[str, Any]:
        action, obj, payload = details.get("action"), details.get("obj"), details.get("details")
        if action not in WORKER_AUDIT_ACTIONS:
            raise AccessDenied(f"a worker may not record {action!r} events")
        if obj is not None and not isinstance(obj, str):
            raise InvalidInput("obj is a string")
        if not isinstance(payload, dict):
            raise InvalidInput("details is an object")
        return {"seq": self.scope.audit(str(action), obj=obj, details=payload)}


def _name(details: dict[str, Any]) -> str:
    name = details.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("a blob name is a non-empty string")
    return name


_HANDLERS = {
    "scope.records": DataService._records,
    "scope.blob": DataService._blob,
    "scope.put_blob": DataService._put_blob,
    "scope.keyed_hash": DataService._keyed_hash,
    "scope.audit": DataService._audit,
}
