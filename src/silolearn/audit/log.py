"""The hash-chained, append-only audit log (invariant I7).

Each event's hash is SHA-256 over a canonical encoding of its fields and the previous hash,
so editing, deleting or reordering a past event breaks the chain at that event. A signed
checkpoint of the head (Ed25519) is written every ``checkpoint_every`` events and when a
workspace closes; the newest one is also mirrored to a head file outside the database, so a
truncated tail is detected down to the last checkpoint. Rows of other tables an invariant
rests on (the privacy ledger, adapter versions) are bound to the chain by ``audit.rows``.

The details of a tenant's event are sealed under that tenant's metadata key (I6) by the
``DetailsSealer`` the workspace gives the log: what is stored, and hashed, is the sealed
form, so the chain verifies without any tenant key, a shredded tenant's included; only the
``row_digests`` stay in clear, since verification reads them.

Writers append inside ``BEGIN IMMEDIATE`` transactions: two processes appending at once
serialise on SQLite's write lock, and each reads the true last hash before linking to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silolearn.db import transaction
from silolearn.errors import AuditChainBroken, SiloError
from silolearn.locks import exclusive_lock, replace_durably

GENESIS = "0" * 64


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def canonical_details(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_digest(values: Sequence[Any]) -> str:
    """SHA-256 of the canonical encoding of a list of JSON values: what an event's hash is
    taken over, and what a bound row's digest is taken over (``audit.rows``)."""
    encoded = json.dumps(list(values), separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def event_hash(
    seq: int,
    ts: str,
    actor: str,
    tenant: str | None,
    action: str,
    obj: str | None,
    details: str,
    prev_hash: str,
) -> str:
    return canonical_digest([seq, ts, actor, tenant, action, obj, details, prev_hash])


SEALED_DETAILS = "sealed_details"
"""The key of a stored event's details that holds the rest of them sealed:
``{"tenant_id", "key_version", "box"}`` (the box in hex, which no label name can hide in)."""
CLEAR_DETAILS = ("row_digests",)
"""Details that stay in clear in a sealed event: ``audit verify`` reads them without keys."""


class DetailsSealer(Protocol):
    """Seals a tenant event's details as it is appended and opens them as it is read."""

    def seal_details(
        self, conn: sqlite3.Connection, tenant: str, seq: int, details: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The details to store for event ``seq`` of ``tenant`` (a name), or None to store
        them as they are (a tenant that has no metadata key)."""

    def open_details(self, seq: int, sealed: dict[str, Any]) -> dict[str, Any]:
        """The details sealed in ``sealed`` (the ``SEALED_DETAILS`` value); raises a
        ``SiloError`` when they cannot be opened (the tenant's keys are destroyed)."""


def append_event(
    conn: sqlite3.Connection,
    *,
    actor: str,
    action: str,
    tenant: str | None,
    obj: str | None,
    details: dict[str, Any],
    sealer: DetailsSealer | None = None,
) -> tuple[int, str]:
    """Link one event to the last one, inside the caller's open write transaction; returns
    its seq and hash. ``AuditLog.append_in`` is the way in; a schema migration, which has no
    ``AuditLog``, appends with this. With a ``sealer``, a tenant's details are sealed first."""
    row = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    prev_seq, prev_hash = (0, GENESIS) if row is None else (int(row[0]), str(row[1]))
    seq = prev_seq + 1
    ts = utcnow()
    if sealer is not None and tenant is not None:
        details = sealer.seal_details(conn, tenant, seq, details) or details
    body = canonical_details(details)
    digest = event_hash(seq, ts, actor, tenant, action, obj, body, prev_hash)
    conn.execute(
        "INSERT INTO audit_events (seq, ts, actor, tenant, action, object, details, "
        "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, ts, actor, tenant, action, obj, body, prev_hash, digest),
    )
    return seq, digest


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int
    ts: str
    actor: str
    tenant: str | None
    action: str
    object: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str
    sealed: bool = False
    """The event's details are sealed under keys this process cannot use (its tenant was
    shredded): ``details`` holds only what stays in clear."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "tenant": self.tenant,
            "action": self.action,
            "object": self.object,
            "details": self.details,
            "sealed": self.sealed,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    events: int
    checkpoints: int
    head_seq: int
    head_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
        }


def _checkpoint_message(seq: int, head: str, ts: str) -> bytes:
    return f"silolearn-audit-checkpoint\x00{seq}\x00{head}\x00{ts}".encode()


class AuditLog:
    """Appends events and checkpoints; verifies the chain."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        actor: str,
        head_file: Path,
        signing_key: Ed25519PrivateKey | None,
        checkpoint_every: int,
        sealer: DetailsSealer | None = None,
    ) -> None:
        """``signing_key`` is None in a process that may append but not sign: a training
        worker holds no workspace secret. Its events are covered by the next checkpoint its
        coordinator signs. ``sealer`` seals and opens tenants' event details (none: they are
        stored as given, and sealed ones are read as sealed)."""
        self._conn = conn
        self._sealer = sealer
        self.actor = actor
        self.head_file = head_file
        self._signing_key = signing_key
        self._verify_key = None if signing_key is None else signing_key.public_key()
        self.checkpoint_every = checkpoint_every
        self._unpublished = False
        self._in_write = False
        self._head_in_txn: tuple[sqlite3.Connection, tuple[int, str]] | None = None

    # -- appending --------------------------------------------------------------------------

    def append_in(
        self,
        conn: sqlite3.Connection,
        action: str,
        *,
        tenant: str | None = None,
        obj: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one event inside the caller's open write transaction; returns its seq."""
        seq, digest = append_event(
            conn,
            actor=self.actor,
            action=action,
            tenant=tenant,
            obj=obj,
            details=details or {},
            sealer=self._sealer,
        )
        if self._in_write:
            self._head_in_txn = (conn, (seq, digest))
        if seq % self.checkpoint_every == 0 and self._signing_key is not None:
            self._checkpoint_in(conn, seq, digest)
        return seq

    def append(
        self,
        action: str,
        *,
        tenant: str | None = None,
        obj: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one event in its own transaction."""
        with self.write() as conn:
            return self.append_in(conn, action, tenant=tenant, obj=obj, details=details)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; after it commits, a checkpoint made inside it is published
        to the head file (never before, so a rolled-back checkpoint is never published)."""
        self._in_write, self._head_in_txn = True, None
        try:
            with transaction(self._conn) as conn:
                yield conn
        finally:
            self._in_write, self._head_in_txn = False, None
        if self._unpublished:
            self._publish_head()

    def checkpoint(self) -> int:
        """Sign the current head (if not signed yet) and mirror it to the head file."""
        with self.write() as conn:
            row = conn.execute(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return 0
            seq, digest = int(row[0]), str(row[1])
            exists = conn.execute(
                "SELECT 1 FROM audit_checkpoints WHERE seq = ?", (seq,)
            ).fetchone()
            if not exists:
                self._checkpoint_in(conn, seq, digest)
        return seq

    def checkpoint_if_moved(self) -> None:
        """Sign the head when events were appended since the last checkpoint."""
        row = self._conn.execute(
            "SELECT (SELECT MAX(seq) FROM audit_events), (SELECT MAX(seq) FROM audit_checkpoints)"
        ).fetchone()
        if row[0] is not None and row[0] != row[1]:
            self.checkpoint()

    def _checkpoint_in(self, conn: sqlite3.Connection, seq: int, digest: str) -> None:
        if self._signing_key is None:
            raise AuditChainBroken(
                "this process holds no signing key: it cannot checkpoint", seq=seq
            )
        ts = utcnow()
        signature = self._signing_key.sign(_checkpoint_message(seq, digest, ts))
        conn.execute(
            "INSERT INTO audit_checkpoints (seq, hash, ts, signature) VALUES (?, ?, ?, ?)",
            (seq, digest, ts, signature),
        )
        self._unpublished = True

    def _publish_head(self) -> None:
        self._unpublished = False
        row = self._conn.execute(
            "SELECT seq, hash, ts, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            self._write_head(int(row[0]), str(row[1]), str(row[2]), bytes(row[3]))

    def _write_head(self, seq: int, digest: str, ts: str, signature: bytes) -> None:
        # the head only moves forward, even when two processes checkpoint out of order
        with exclusive_lock(self.head_file.with_suffix(".lock")):
            current = self._read_head()
            if current is not None and int(current["seq"]) >= seq:
                return
            head = {"seq": seq, "hash": digest, "ts": ts, "signature": signature.hex()}
            replace_durably(self.head_file, json.dumps(head).encode())

    def _read_head(self) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = json.loads(self.head_file.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            raise AuditChainBroken(
                f"audit head file {self.head_file} is not valid JSON", seq=None
            ) from None
        return head

    # -- reading ----------------------------------------------------------------------------

    def events(
        self,
        *,
        tenant: str | None = None,
        since: str | None = None,
        action: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        clauses: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if action is not None:
            clauses.append("(action = ? OR action LIKE ?)")
            params.extend([action, action + ".%"])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "ORDER BY seq"
        if limit is not None:
            order = "ORDER BY seq DESC LIMIT ?"
            params.append(limit)
        rows = self._conn.execute(
            "SELECT seq, ts, actor, tenant, action, object, details, prev_hash, hash "
            f"FROM audit_events {where} {order}",
            params,
        ).fetchall()
        events = [self._event(r) for r in rows]
        return sorted(events, key=lambda e: e.seq)

    def _event(self, row: Sequence[Any]) -> AuditEvent:
        """One stored event, its details opened when they are sealed and this log can."""
        seq, details = int(row[0]), json.loads(row[6])
        sealed = details.pop(SEALED_DETAILS, None) if isinstance(details, dict) else None
        opened = None if sealed is None else self._open(seq, sealed)
        if opened is not None:
            details = {**opened, **details}
        unreadable = sealed is not None and opened is None
        return AuditEvent(
            seq, row[1], row[2], row[3], row[4], row[5], details, row[7], row[8], unreadable
        )

    def _open(self, seq: int, sealed: Any) -> dict[str, Any] | None:
        if self._sealer is None or not isinstance(sealed, dict):
            return None
        try:
            return self._sealer.open_details(seq, sealed)
        except SiloError:
            return None

    # -- verification -----------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check the whole chain, every checkpoint and the head file.

        Raises ``AuditChainBroken`` naming the first sequence number that does not hold.
        """
        expected_seq = 1
        prev_hash = GENESIS
        hashes: dict[int, str] = {}
        cursor = self._conn.execute(
            "SELECT seq, ts, actor, tenant, action, object, details, prev_hash, hash "
            "FROM audit_events ORDER BY seq"
        )
        for seq, ts, actor, tenant, action, obj, details, stored_prev, stored_hash in cursor:
            if seq != expected_seq:
                raise AuditChainBroken(
                    f"audit event {expected_seq} is missing (next present is {seq})",
                    seq=expected_seq,
                )
            if stored_prev != prev_hash:
                raise AuditChainBroken(
                    f"audit event {seq} does not link to event {seq - 1} "
                    "(deleted, inserted or reordered events)",
                    seq=seq,
                )
            if event_hash(seq, ts, actor, tenant, action, obj, details, stored_prev) != stored_hash:
                raise AuditChainBroken(
                    f"audit event {seq} was altered (its hash does not match its content)",
                    seq=seq,
                )
            hashes[seq] = stored_hash
            prev_hash = stored_hash
            expected_seq += 1
        last_seq = expected_seq - 1

        checkpoints = self._conn.execute(
            "SELECT seq, hash, ts, signature FROM audit_checkpoints ORDER BY seq"
        ).fetchall()
        for seq, digest, ts, signature in checkpoints:
            self._check_checkpoint(int(seq), str(digest), str(ts), bytes(signature), hashes)
        head = self._read_head()
        if head is None and checkpoints:
            raise AuditChainBroken(f"audit head file {self.head_file} is missing", seq=last_seq + 1)
        if head is not None:
            self._check_checkpoint(
                int(head["seq"]),
                str(head["hash"]),
                str(head["ts"]),
                bytes.fromhex(str(head["signature"])),
                hashes,
            )
        return VerifyReport(
            events=last_seq,
            checkpoints=len(checkpoints),
            head_seq=last_seq,
            head_hash=prev_hash,
        )

    def signed_seq(self) -> int:
        """The newest event a valid signature covers, in the checkpoints or the head file (0
        if none): events after it could have been appended by anyone holding the database."""
        if self._verify_key is None:
            return 0
        signed = [
            (int(r[0]), str(r[1]), str(r[2]), bytes(r[3]))
            for r in self._conn.execute("SELECT seq, hash, ts, signature FROM audit_checkpoints")
        ]
        with contextlib.suppress(AuditChainBroken, KeyError, ValueError, TypeError):
            head = self._read_head()
            if head is not None:
                signed.append(
                    (
                        int(head["seq"]),
                        str(head["hash"]),
                        str(head["ts"]),
                        bytes.fromhex(str(head["signature"])),
                    )
                )
        best = 0
        for seq, digest, ts, signature in signed:
            if seq <= best:
                continue
            try:
                self._verify_key.verify(signature, _checkpoint_message(seq, digest, ts))
            except InvalidSignature:
                continue
            row = self._conn.execute(
                "SELECT hash FROM audit_events WHERE seq = ?", (seq,)
            ).fetchone()
            if row is not None and row[0] == digest:
                best = seq
        return best

    def _check_checkpoint(
        self, seq: int, digest: str, ts: str, signature: bytes, hashes: dict[int, str]
    ) -> None:
        try:
            if self._verify_key is None:
                raise AuditChainBroken("this process holds no key to verify checkpoints", seq=seq)
            self._verify_key.verify(signature, _checkpoint_message(seq, digest, ts))
        except InvalidSignature:
            raise AuditChainBroken(
                f"audit checkpoint at event {seq} has an invalid signature", seq=seq
            ) from None
        if seq not in hashes:
            first_missing = max(hashes, default=0) + 1
            raise AuditChainBroken(
                f"audit log truncated: a signed checkpoint covers event {seq} but the log "
                f"ends at event {first_missing - 1}",
                seq=first_missing,
            )
        if hashes[seq] != digest:
            raise AuditChainBroken(f"audit event {seq} differs from its signed checkpoint", seq=seq)
