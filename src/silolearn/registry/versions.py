"""Adapter versions of one tenant: candidates, promotion, rejection and rollback (I8).

A version's artefact is an encrypted blob of the tenant; its row holds the artefact's
SHA-256, its lineage (parent, digest of the record ids it learned from, config, code
version, base-model checksum, seed, timings, label counts) and its metrics. Lineage, metrics
and decision name the tenant's labels: they are sealed together under its metadata key
(``storage.metadata``); status, kind, SHA-256, parent, run id and times stay in clear. Statuses move
``candidate → active | rejected`` and ``active → retired``, or through a canary rollout
(``registry.rollout``) ``candidate → canary → active | rejected``; at most one version per
tenant is active and at most one a canary, enforced by unique indexes. Promotion and
rollback are single transactions, so a crash at any point leaves the previous version
serving; they touch only the tenant of the scope they are given.

Every write of a version row records the row's digest in the audit event of its transaction
(``audit.rows``), so a status, SHA-256 or lineage edited, or a version deleted, with the
database file in hand is reported by ``silolearn audit verify``; the audit chain is the
history of the transitions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from silolearn.audit.log import utcnow
from silolearn.audit.rows import ROW_DIGESTS, row_digests
from silolearn.errors import (
    ConflictError,
    IntegrityError,
    InvalidInput,
    NotFoundError,
    TenantQuarantined,
)
from silolearn.storage.metadata import ADAPTER_VERSIONS, VERSIONS_TABLE
from silolearn.storage.scope import TenantScope

STATUSES = ("candidate", "canary", "active", "rejected", "retired")

__all__ = ["STATUSES", "VERSIONS_TABLE", "AdapterRegistry", "AdapterVersion"]


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    tenant: str
    version: int
    status: str
    kind: str
    sha256: str
    parent: int | None
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    decision: dict[str, Any]
    created_at: str
    updated_at: str
    run_id: str | None = None

    @property
    def blob_name(self) -> str:
        """The artefact's blob: ``run/<run_id>/adapter``, written before the version row."""
        if self.run_id is not None:
            return f"run/{self.run_id}/adapter"
        return f"adapter/v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "version": self.version,
            "status": self.status,
            "kind": self.kind,
            "sha256": self.sha256,
            "parent": self.parent,
            "lineage": self.lineage,
            "metrics": self.metrics,
            "decision": self.decision,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "run_id": self.run_id,
        }


_COLUMNS = (
    "version, status, kind, sha256, parent, sealed, dek_version, created_at, updated_at, run_id"
)


class AdapterRegistry:
    """The versions of the tenant whose scope it is given; nothing else is reachable."""

    def __init__(self, scope: TenantScope) -> None:
        self._scope = scope

    def _row(self, row: tuple[Any, ...]) -> AdapterVersion:
        (version, status, kind, sha, parent, sealed, dek_version, created, updated, run) = row
        fields = self._scope.open_metadata(ADAPTER_VERSIONS, int(version), sealed, dek_version)
        return AdapterVersion(
            tenant=self._scope.tenant.name,
            version=int(version),
            status=str(status),
            kind=str(kind),
            sha256=str(sha),
            parent=None if parent is None else int(parent),
            lineage=fields["lineage"],
            metrics=fields["metrics"],
            decision=fields["decision"],
            created_at=str(created),
            updated_at=str(updated),
            run_id=None if run is None else str(run),
        )

    def _sealed_fields(self, conn: sqlite3.Connection, version: int) -> dict[str, Any]:
        """The sealed fields of a version as they stand in the caller's transaction."""
        row = conn.execute(
            "SELECT sealed, dek_version FROM adapter_versions WHERE tenant_id = ? AND version = ?",
            (self._scope.tenant.id, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"tenant {self._scope.tenant.name!r} has no adapter version {version}",
                version=version,
            )
        return self._scope.open_metadata(ADAPTER_VERSIONS, version, row[0], row[1])

    def list(self) -> list[AdapterVersion]:
        rows = self._scope.connection.execute(
            f"SELECT {_COLUMNS} FROM adapter_versions WHERE tenant_id = ? ORDER BY version",
            (self._scope.tenant.id,),
        ).fetchall()
        return [self._row(r) for r in rows]

    def get(self, version: int) -> AdapterVersion:
        row = self._scope.connection.execute(
            f"SELECT {_COLUMNS} FROM adapter_versions WHERE tenant_id = ? AND version = ?",
            (self._scope.tenant.id, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"tenant {self._scope.tenant.name!r} has no adapter version {version}",
                version=version,
            )
        return self._row(row)

    def active(self) -> AdapterVersion | None:
        row = self._scope.connection.execute(
            f"SELECT {_COLUMNS} FROM adapter_versions WHERE tenant_id = ? AND status = 'active'",
            (self._scope.tenant.id,),
        ).fetchone()
        return None if row is None else self._row(row)

    def canary(self) -> AdapterVersion | None:
        """The version serving a share of the tenant's requests beside the active one."""
        row = self._scope.connection.execute(
            f"SELECT {_COLUMNS} FROM adapter_versions WHERE tenant_id = ? AND status = 'canary'",
            (self._scope.tenant.id,),
        ).fetchone()
        return None if row is None else self._row(row)

    def register_candidate(
        self,
        artefact: bytes,
        *,
        kind: str,
        lineage: dict[str, Any],
        metrics: dict[str, Any],
        run_id: str | None = None,
        extra: dict[str, bytes] | None = None,
    ) -> AdapterVersion:
        """Store the artefact (and ``extra`` blobs, such as the replay buffer) sealed under
        ``run/<run_id>/``, then record the candidate in one transaction.

        The blobs come first: a crash before the row commits leaves blobs no version points
        to, never a version without its artefact.
        """
        scope = self._scope
        run_id = run_id or secrets.token_hex(8)
        if not re.fullmatch(r"[0-9a-f]{8,64}", run_id):
            raise ValueError("a run id is 8-64 lowercase hex digits")
        sha = hashlib.sha256(artefact).hexdigest()
        scope.blobs.put(f"run/{run_id}/adapter", artefact)
        for name, data in sorted((extra or {}).items()):
            scope.blobs.put(f"run/{run_id}/{name}", data)
        with scope.write() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM adapter_versions WHERE tenant_id = ?",
                (scope.tenant.id,),
            ).fetchone()
            version = int(row[0])
            active = conn.execute(
                "SELECT version FROM adapter_versions WHERE tenant_id = ? AND status = 'active'",
                (scope.tenant.id,),
            ).fetchone()
            parent = lineage.get("parent", None if active is None else int(active[0]))
            now = utcnow()
            sealed, dek_version = scope.seal_metadata(
                conn,
                ADAPTER_VERSIONS,
                version,
                {"lineage": lineage, "metrics": metrics, "decision": {}},
            )
            conn.execute(
                f"INSERT INTO adapter_versions (tenant_id, {_COLUMNS}) "
                "VALUES (?, ?, 'candidate', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    scope.tenant.id,
                    version,
                    kind,
                    sha,
                    parent,
                    sealed,
                    dek_version,
                    now,
                    now,
                    run_id,
                ),
            )
            scope.audit_in(
                conn,
                "adapter.candidate",
                obj=f"v{version}",
                details={
                    "kind": kind,
                    "sha256": sha,
                    "parent": parent,
                    "run_id": run_id,
                    ROW_DIGESTS: row_digests(conn, VERSIONS_TABLE, [(scope.tenant.id, version)]),
                },
            )
        return self.get(version)

    def set_metrics(self, version: int, metrics: dict[str, Any]) -> AdapterVersion:
        """Record a candidate's evaluation (by the evaluator, never the trainer)."""
        scope = self._scope
        with scope.write() as conn:
            fields = {**self._sealed_fields(conn, version), "metrics": metrics}
            sealed, dek_version = scope.seal_metadata(conn, ADAPTER_VERSIONS, version, fields)
            cursor = conn.execute(
                "UPDATE adapter_versions SET sealed = ?, dek_version = ?, updated_at = ? "
                "WHERE tenant_id = ? AND version = ? AND status = 'candidate'",
                (sealed, dek_version, utcnow(), scope.tenant.id, version),
            )
            if cursor.rowcount != 1:
                raise ConflictError(f"adapter v{version} is not a candidate", version=version)
            scope.audit_in(
                conn,
                "adapter.evaluated",
                obj=f"v{version}",
                details={
                    **{k: metrics[k] for k in ("accuracy", "macro_f1", "n") if k in metrics},
                    ROW_DIGESTS: row_digests(conn, VERSIONS_TABLE, [(scope.tenant.id, version)]),
                },
            )
        return self.get(version)

    def load_artefact(self, version: AdapterVersion) -> bytes:
        data = self._scope.blobs.get(version.blob_name)
        if hashlib.sha256(data).hexdigest() != version.sha256:
            raise IntegrityError(
                f"adapter v{version.version} of {version.tenant!r} does not match its SHA-256"
            )
        return data

    def reject(self, version: int, *, decision: dict[str, Any]) -> AdapterVersion:
        self._transition(version, expect=("candidate",), to="rejected", decision=decision)
        return self.get(version)

    def promote(self, version: int, *, decision: dict[str, Any]) -> AdapterVersion:
        """Make a candidate the active version; the previous one is retired, atomically."""
        self._require_artefact(version)
        self._transition(version, expect=("candidate",), to="active", decision=decision)
        return self.get(version)

    def rollback(self, *, to: int | None = None, reason: str = "rollback") -> AdapterVersion:
        """Serve an earlier version again (by default the last one retired). A running
        canary rollout ends first (its canary rejected); without ``to``, that is all: the
        stable version it was compared with goes on serving alone."""
        if to is None and self.canary() is not None:
            with self._scope.write() as conn:
                self.end_canary_in(conn, reason=reason)
            active = self.active()
            assert active is not None  # a canary always runs beside an active version
            return active
        current = self.active()
        if to is None:
            retired = [v for v in self.list() if v.status == "retired"]
            if current is not None:
                retired = [v for v in retired if v.version < current.version]
            if not retired:
                raise InvalidInput(
                    f"tenant {self._scope.tenant.name!r} has no earlier version to roll back to"
                )
            to = retired[-1].version
        target = self.get(to)
        if target.status != "retired":
            raise ConflictError(
                f"adapter v{to} is {target.status}: only a version that served before can be "
                "rolled back to (a candidate is promoted, through its gates)",
                version=to,
            )
        self._require_artefact(to)
        self._transition(
            to,
            expect=("retired",),
            to="active",
            decision={"reason": reason, "rolled_back_from": current and current.version},
        )
        return self.get(to)

    def _require_artefact(self, version: int) -> None:
        names = {b.name for b in self._scope.blobs.list()}
        if self.get(version).blob_name not in names:
            raise IntegrityError(f"adapter v{version} has no stored artefact; it cannot serve")

    def _transition(
        self, version: int, *, expect: tuple[str, ...], to: str, decision: dict[str, Any]
    ) -> None:
        with self._scope.write() as conn:
            self.move_in(conn, version, expect=expect, to=to, decision=decision)

    def move_in(
        self,
        conn: sqlite3.Connection,
        version: int,
        *,
        expect: tuple[str, ...],
        to: str,
        decision: dict[str, Any],
    ) -> int | None:
        """Move a version to ``to`` inside the caller's write transaction and audit it; a
        version that becomes active retires the active one (returned). A candidate or a
        canary becomes active, or a candidate a canary, only while the tenant is active."""
        scope = self._scope
        row = conn.execute(
            "SELECT status FROM adapter_versions WHERE tenant_id = ? AND version = ?",
            (scope.tenant.id, version),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"tenant {scope.tenant.name!r} has no adapter v{version}")
        if row[0] in ("candidate", "canary") and to in ("active", "canary"):
            # checked inside the transaction: a quarantine cannot slip in between
            status = conn.execute(
                "SELECT status FROM tenants WHERE id = ?", (scope.tenant.id,)
            ).fetchone()[0]
            if status != "active":
                raise TenantQuarantined(
                    f"tenant {scope.tenant.name!r} is {status}: no promotion",
                    tenant=scope.tenant.name,
                )
        if row[0] not in expect:
            raise ConflictError(
                f"adapter v{version} is {row[0]}, expected {' or '.join(expect)}",
                version=version,
            )
        now = utcnow()
        previous = None
        if (row[0] == "candidate" and to in ("active", "canary")) or row[0] == "retired":
            self.end_canary_in(conn, reason=f"superseded by v{version}")
        if to == "active":
            active = conn.execute(
                "SELECT version FROM adapter_versions WHERE tenant_id = ? AND status = 'active'",
                (scope.tenant.id,),
            ).fetchone()
            if active is not None:
                previous = int(active[0])
                conn.execute(
                    "UPDATE adapter_versions SET status = 'retired', updated_at = ? "
                    "WHERE tenant_id = ? AND version = ?",
                    (now, scope.tenant.id, previous),
                )
        fields = {**self._sealed_fields(conn, version), "decision": decision}
        sealed, dek_version = scope.seal_metadata(conn, ADAPTER_VERSIONS, version, fields)
        conn.execute(
            "UPDATE adapter_versions SET status = ?, sealed = ?, dek_version = ?, "
            "updated_at = ? WHERE tenant_id = ? AND version = ?",
            (to, sealed, dek_version, now, scope.tenant.id, version),
        )
        action = {
            "active": "adapter.promote",
            "canary": "adapter.canary",
            "rejected": "adapter.reject",
        }[to]
        if decision.get("reason") == "rollback" or "rolled_back_from" in decision:
            action = "adapter.rollback"
        scope.audit_in(
            conn,
            action,
            obj=f"v{version}",
            details={
                "from_status": row[0],
                "retired": previous,
                **decision,
                ROW_DIGESTS: row_digests(
                    conn,
                    VERSIONS_TABLE,
                    [(scope.tenant.id, v) for v in (previous, version) if v is not None],
                ),
            },
        )
        return previous

    def end_canary_in(self, conn: sqlite3.Connection, *, reason: str) -> int | None:
        """Reject the running canary, if any, and end its rollout as rolled back, inside the
        caller's write transaction (audited ``rollout.rollback`` with the reason)."""
        scope = self._scope
        row = conn.execute(
            "SELECT id, version FROM rollouts WHERE tenant_id = ? AND state = 'running'",
            (scope.tenant.id,),
        ).fetchone()
        if row is None:
            return None
        rollout, version = int(row[0]), int(row[1])
        now = utcnow()
        conn.execute(
            "UPDATE rollouts SET state = 'rolled_back', ended_at = ?, updated_at = ? WHERE id = ?",
            (now, now, rollout),
        )
        self.move_in(conn, version, expect=("canary",), to="rejected", decision={"reason": reason})
        scope.audit_in(
            conn,
            "rollout.rollback",
            obj=f"v{version}",
            details={"rollout": rollout, "reason": reason, "automatic": False},
        )
        return version
