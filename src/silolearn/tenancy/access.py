"""Who may do what over the API: principals holding bearer tokens, bound to one tenant (or to
the whole workspace) and to roles, for a limited time.

A token is ``slt_<grant id>_<secret>``: random, shown once, stored only as a keyed hash
(HMAC-SHA256 under the workspace's ``access-tokens`` secret, which the key manager holds,
never the database). Each row also carries a MAC binding its id, hash, tenant, roles,
expiry and revocation under the same secret: a row edited with the database file in hand
(a longer expiry, another role, a revocation undone) no longer authenticates anyone.

Grants are just in time: each has a reason and an expiry (at most ``[service]
max_grant_hours``); a revocation takes effect on the next request, which looks the token up
again. Grants and revocations are audited here; denials where they happen (the service).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from silolearn.audit.log import AuditLog, utcnow
from silolearn.db import transaction
from silolearn.errors import ConflictError, InvalidInput, NotFoundError, Unauthenticated
from silolearn.security.keys import KeyManager
from silolearn.tenancy.tenants import TenantRegistry

ROLES = ("reader", "contributor", "trainer", "auditor", "admin")
"""``reader`` predicts; ``contributor`` ingests and gives feedback; ``trainer`` starts rounds,
promotes and rolls back; ``auditor`` reads the audit log, incidents, ledgers and gate
verdicts (never record contents); ``admin`` manages tenants and tokens. No role implies
another."""
TOKEN_PREFIX = "slt_"
SECRET_PURPOSE = "access-tokens"
LAST_USE_RESOLUTION = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token: a request is not a write."""
MAX_REASON = 500

_TOKEN = re.compile(r"slt_(g-[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_COLUMNS = (
    "id, tenant_id, tenant, roles, reason, granted_by, created_at, expires_at, revoked_at, "
    "revoked_by, last_used_at, token_hash, mac"
)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``7d``, ``1w``: how long a grant lasts."""
    match = _DURATION.fullmatch(text or "")
    if match is None:
        raise InvalidInput(
            f"not a duration: {str(text)[:40]!r} (a number and a unit among s, m, h, d, w: e.g. 2h)"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise InvalidInput("a grant lasts longer than zero")
    return timedelta(seconds=seconds)


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant as stored, without its token."""

    id: str
    tenant_id: str | None
    tenant: str | None
    """The tenant's current name; its name when granted if it no longer exists."""
    tenant_exists: bool
    roles: tuple[str, ...]
    reason: str
    granted_by: str
    created_at: str
    expires_at: str
    revoked_at: str | None
    revoked_by: str | None
    last_used_at: str | None

    def state(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if _parse_stamp(self.expires_at) <= (now or _now()):
            return "expired"
        if self.tenant_id is not None and not self.tenant_exists:
            return "tenant gone"
        return "live"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "workspace_wide": self.tenant_id is None,
            "roles": list(self.roles),
            "reason": self.reason,
            "granted_by": self.granted_by,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
            "last_used_at": self.last_used_at,
            "state": self.state(),
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from: a live grant, its tenant resolved now."""

    grant_id: str
    tenant_id: str | None
    tenant: str | None
    roles: frozenset[str]
    expires_at: str

    @property
    def actor(self) -> str:
        """The audit log's actor for what this principal does."""
        return f"token:{self.grant_id}"

    @property
    def workspace_wide(self) -> bool:
        return self.tenant_id is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "grant": self.grant_id,
            "tenant": self.tenant,
            "workspace_wide": self.workspace_wide,
            "roles": sorted(self.roles),
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class Issued:
    """A new grant and its token, which is never stored and never shown again."""

    grant: Grant
    token: str


class AccessRegistry:
    """Grants, revocations, reviews and token checks of one opened workspace."""

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        keys: KeyManager,
        audit: AuditLog,
        tenants: TenantRegistry,
        max_grant: timedelta,
    ) -> None:
        self._conn = conn
        self._keys = keys
        self._audit = audit
        self._tenants = tenants
        self._max_grant = max_grant

    # -- keyed hashes -----------------------------------------------------------------------

    def _secret(self) -> bytes:
        return self._keys.workspace_secret(SECRET_PURPOSE)

    def _token_hash(self, token: str) -> bytes:
        return hmac.new(self._secret(), b"token\x00" + token.encode(), hashlib.sha256).digest()

    def _mac(
        self,
        grant_id: str,
        token_hash: bytes,
        tenant_id: str | None,
        roles: str,
        expires_at: str,
        revoked_at: str | None,
    ) -> bytes:
        fields = (grant_id, token_hash.hex(), tenant_id or "", roles, expires_at, revoked_at or "")
        message = "\x00".join(("grant", *fields))
        return hmac.new(self._secret(), message.encode(), hashlib.sha256).digest()

    # -- granting and revoking --------------------------------------------------------------

    def grant(
        self,
        *,
        tenant: str | None,
        roles: list[str] | tuple[str, ...],
        duration: timedelta,
        reason: str,
    ) -> Issued:
        """A new token for ``tenant`` (None: the whole workspace) with ``roles``, expiring
        after ``duration``; audited ``access.grant`` with the reason."""
        wanted = tuple(sorted(set(roles)))
        if not wanted:
            raise InvalidInput(f"a grant needs at least one role among {', '.join(ROLES)}")
        unknown = [r for r in wanted if r not in ROLES]
        if unknown:
            raise InvalidInput(
                f"unknown role {unknown[0][:40]!r}: one of {', '.join(ROLES)}", roles=unknown
            )
        if duration <= timedelta(0):
            raise InvalidInput("a grant lasts longer than zero")
        if duration > self._max_grant:
            hours = self._max_grant.total_seconds() / 3600
            raise InvalidInput(
                f"a grant lasts at most {hours:g}h ([service] max_grant_hours)",
                max_hours=hours,
            )
        reason = (reason or "").strip()
        if not reason or len(reason) > MAX_REASON:
            raise InvalidInput(f"a grant needs a reason of 1-{MAX_REASON} characters")
        info = None if tenant is None else self._tenants.get(tenant)
        grant_id = "g-" + secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}{grant_id}_{secrets.token_urlsafe(32)}"
        token_hash = self._token_hash(token)
        now = _now()
        created, expires = _stamp(now), _stamp(now + duration)
        role_text = ",".join(wanted)
        tenant_id = None if info is None else info.id
        mac = self._mac(grant_id, token_hash, tenant_id, role_text, expires, None)
        with self._audit.write() as conn:
            conn.execute(
                f"INSERT INTO access_tokens ({_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?)",
                (
                    grant_id,
                    tenant_id,
                    tenant,
                    role_text,
                    reason,
                    self._audit.actor,
                    created,
                    expires,
                    token_hash,
                    mac,
                ),
            )
            self._audit.append_in(
                conn,
                "access.grant",
                tenant=tenant,
                obj=grant_id,
                details={
                    "roles": list(wanted),
                    "workspace_wide": tenant is None,
                    "expires_at": expires,
                    "reason": reason,
                },
            )
        return Issued(self.get(grant_id), token)

    def revoke(self, which: str, *, reason: str, tenant: str | None = None) -> Grant:
        """Revoke a grant, named by its id or by its token; ``tenant`` confines the lookup to
        that tenant's grants (a tenant's admin revoking over the API). Audited."""
        grant_id = self._grant_id_of(which)
        grant = self.get(grant_id)
        if tenant is not None and grant.tenant_id != self._tenants.get(tenant).id:
            raise NotFoundError(f"no grant {grant_id!r}", grant=grant_id)
        if grant.revoked_at is not None:
            raise ConflictError(
                f"grant {grant_id} was revoked already ({grant.revoked_at})", grant=grant_id
            )
        reason = (reason or "").strip()[:MAX_REASON] or "revoked"
        with self._audit.write() as conn:
            row = conn.execute(
                "SELECT token_hash, tenant_id, roles, expires_at FROM access_tokens "
                "WHERE id = ? AND revoked_at IS NULL",
                (grant_id,),
            ).fetchone()
            if row is None:
                raise ConflictError(f"grant {grant_id} was revoked already", grant=grant_id)
            revoked = utcnow()
            mac = self._mac(grant_id, bytes(row[0]), row[1], str(row[2]), str(row[3]), revoked)
            conn.execute(
                "UPDATE access_tokens SET revoked_at = ?, revoked_by = ?, mac = ? WHERE id = ?",
                (revoked, self._audit.actor, mac, grant_id),
            )
            self._audit.append_in(
                conn,
                "access.revoke",
                tenant=grant.tenant if grant.tenant_exists else None,
                obj=grant_id,
                details={"reason": reason},
            )
        return self.get(grant_id)

    def _grant_id_of(self, which: str) -> str:
        token = _TOKEN.fullmatch(which or "")
        if token is not None:
            return token.group(1)
        if re.fullmatch(r"g-[0-9a-f]{16}", which or ""):
            return which
        raise InvalidInput("name a grant by its id (g-...) or its token (slt_...)")

    # -- reading ----------------------------------------------------------------------------

    def get(self, grant_id: str) -> Grant:
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM access_tokens WHERE id = ?", (grant_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no grant {grant_id[:40]!r}", grant=grant_id[:40])
        return self._grant(row)

    def review(self, *, tenant: str | None = None, include_ended: bool = False) -> list[Grant]:
        """Every live grant (with ``include_ended``, expired and revoked ones too), of one
        tenant or of all, newest first, with its last use."""
        clauses, params = [], []
        if tenant is not None:
            clauses.append("tenant_id = ?")
            params.append(self._tenants.get(tenant).id)
        if not include_ended:
            clauses.append("revoked_at IS NULL AND expires_at > ?")
            params.append(utcnow())
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM access_tokens {where} ORDER BY created_at DESC", params
        ).fetchall()
        grants = [self._grant(r) for r in rows]
        return grants if include_ended else [g for g in grants if g.state() == "live"]

    def _grant(self, row: tuple[Any, ...]) -> Grant:
        tenant_id = None if row[1] is None else str(row[1])
        name, exists = (None if row[2] is None else str(row[2])), True
        if tenant_id is not None:
            current = self._conn.execute(
                "SELECT name FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()
            exists = current is not None
            if exists:
                name = str(current[0])
        return Grant(
            id=str(row[0]),
            tenant_id=tenant_id,
            tenant=name,
            tenant_exists=exists,
            roles=tuple(str(row[3]).split(",")),
            reason=str(row[4]),
            granted_by=str(row[5]),
            created_at=str(row[6]),
            expires_at=str(row[7]),
            revoked_at=row[8],
            revoked_by=row[9],
            last_used_at=row[10],
        )

    # -- authenticating ---------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token stands for, now; ``Unauthenticated`` (with the reason
        in ``details``) when it is malformed, unknown, altered, revoked, expired, or its
        tenant is gone. Records the last use (at most once a minute)."""
        if not _TOKEN.fullmatch(token or ""):
            raise Unauthenticated("the bearer token is not a silolearn token", reason="malformed")
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM access_tokens WHERE token_hash = ?",
            (self._token_hash(token),),
        ).fetchone()
        if row is None:
            raise Unauthenticated("the bearer token is not known", reason="unknown")
        grant_id, tenant_id, roles, expires_at, revoked_at = (
            str(row[0]),
            row[1],
            str(row[3]),
            str(row[7]),
            row[8],
        )
        expected = self._mac(grant_id, bytes(row[11]), tenant_id, roles, expires_at, revoked_at)
        if not hmac.compare_digest(expected, bytes(row[12])):
            raise Unauthenticated("the bearer token is not known", reason="altered")
        if revoked_at is not None:
            raise Unauthenticated("the bearer token was revoked", reason="revoked")
        now = _now()
        if _parse_stamp(expires_at) <= now:
            raise Unauthenticated("the bearer token has expired", reason="expired")
        name = None
        if tenant_id is not None:
            current = self._conn.execute(
                "SELECT name FROM tenants WHERE id = ?", (tenant_id,)
            ).fetchone()
            if current is None:
                raise Unauthenticated(
                    "the bearer token's tenant no longer exists", reason="tenant gone"
                )
            name = str(current[0])
        last_used = row[10]
        if last_used is None or now - _parse_stamp(last_used) >= LAST_USE_RESOLUTION:
            with transaction(self._conn) as conn:
                conn.execute(
                    "UPDATE access_tokens SET last_used_at = ? WHERE id = ?",
                    (_stamp(now), grant_id),
                )
        return Principal(
            grant_id=grant_id,
            tenant_id=tenant_id,
            tenant=name,
            roles=frozenset(roles.split(",")),
            expires_at=expires_at,
        )
