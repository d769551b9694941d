"""Authentication, authorisation and rate limits of every API request.

A request names its token in ``Authorization: Bearer slt_...``. In this order: the token
must be live (``Unauthenticated``, 401); the token must be within its rate
(``RateLimited``, 429 with ``Retry-After``); a route of a tenant must be the token's tenant,
unless the token is workspace-wide (otherwise ``TenantNotFound``, 404, word for word what a
tenant that does not exist gets: a token of tenant A never learns whether tenant B exists);
the token must hold the route's role (``AccessDenied``, 403). Every denial is audited
``access.denied`` with the route, the grant and the reason, under the token's own tenant.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from silolearn.errors import AccessDenied, RateLimited, SiloError, TenantNotFound, Unauthenticated
from silolearn.service.pool import WorkspacePool
from silolearn.tenancy.access import Principal

ANONYMOUS = "anonymous"
THROTTLE_AUDIT_SECONDS = 1.0
"""A token over its rate is audited at most once a second, with the refusals in between."""

bearer = HTTPBearer(auto_error=False, description="A token from `silolearn access grant`.")


class RateLimiter:
    """A token bucket per grant: ``rate`` requests a second sustained, ``burst`` at once."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._refused: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        """None when the request may go; else the seconds until one may."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def refusal_to_audit(self, key: str) -> int | None:
        """How many refusals of ``key`` to record now (this one and those not recorded since
        the last), or None to only count this one."""
        now = time.monotonic()
        with self._lock:
            since, count = self._refused.get(key, (-math.inf, 0))
            if now - since >= THROTTLE_AUDIT_SECONDS:
                self._refused[key] = (now, 0)
                return count + 1
            self._refused[key] = (since, count + 1)
            return None


@dataclass(frozen=True, slots=True)
class Gatekeeper:
    """Checks each request's token, rate, tenant and role; audits every denial."""

    pool: WorkspacePool
    limiter: RateLimiter

    def check(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None,
        *,
        roles: tuple[str, ...],
        tenant: str | None,
    ) -> Principal:
        """The principal of a request that needs any of ``roles`` (none: any live token)
        on ``tenant`` (None: a route of no tenant)."""
        route = f"{request.method} {request.url.path}"
        principal = self._authenticate(route, credentials)
        retry = self.limiter.take(principal.grant_id)
        if retry is not None:
            refused = self.limiter.refusal_to_audit(principal.grant_id)
            if refused is not None:
                self._deny(route, principal, "rate limited", 429, refused=refused)
            raise RateLimited(
                "too many requests for this token: retry later",
                retry_after=max(1, math.ceil(retry)),
            )
        if tenant is not None and not principal.workspace_wide and tenant != principal.tenant:
            self._deny(route, principal, "not its tenant", 404)
            raise TenantNotFound(f"no tenant named {tenant[:60]!r}", tenant=tenant[:60])
        self._require_roles(route, principal, roles)
        return principal

    def require_roles(self, request: Request, principal: Principal, *roles: str) -> None:
        """For a route that checks the tenant of what it names first: the role, after."""
        self._require_roles(f"{request.method} {request.url.path}", principal, roles)

    def _require_roles(self, route: str, principal: Principal, roles: tuple[str, ...]) -> None:
        if roles and not principal.roles & set(roles):
            needed = " or ".join(roles)
            self._deny(route, principal, f"role {needed} not held", 403)
            raise AccessDenied(
                f"this token does not hold the {needed} role this request needs",
                roles=list(roles),
            )

    def check_tenant(
        self, request: Request, principal: Principal, tenant_id: str | None, missing: SiloError
    ) -> None:
        """For a route that names an object rather than a tenant (a job, a grant): the
        object's tenant must be the token's, else ``missing``, the error of an object that
        does not exist. Checked before the role, like a tenant in a route's path."""
        if principal.workspace_wide or tenant_id == principal.tenant_id:
            return
        self._deny(f"{request.method} {request.url.path}", principal, "not its tenant", 404)
        raise missing

    def deny(self, request: Request, principal: Principal, reason: str, status: int) -> None:
        """Audit a denial a route decides itself (what it names is not the token's)."""
        self._deny(f"{request.method} {request.url.path}", principal, reason, status)

    def _authenticate(
        self, route: str, credentials: HTTPAuthorizationCredentials | None
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            self._deny(route, None, "no bearer token", 401)
            raise Unauthenticated("this request needs a bearer token", reason="no token")
        with self.pool.borrow() as ws:
            try:
                return ws.access().authenticate(credentials.credentials)
            except Unauthenticated as exc:
                reason = str(exc.details.get("reason", "unknown"))
                self._deny(route, None, reason, 401)
                raise

    def _deny(
        self, route: str, principal: Principal | None, reason: str, status: int, **extra: Any
    ) -> None:
        actor = ANONYMOUS if principal is None else principal.actor
        with self.pool.borrow(actor) as ws:
            ws.audit.append(
                "access.denied",
                tenant=None if principal is None else principal.tenant,
                obj=route[:300],
                details={
                    "grant": None if principal is None else principal.grant_id,
                    "reason": reason,
                    "status": status,
                    **extra,
                },
            )


def gatekeeper(request: Request) -> Gatekeeper:
    gate: Gatekeeper = request.app.state.service.gate
    return gate


def allow(*roles: str) -> Any:
    """The dependency of a route that needs any of ``roles`` (none: any live token) and,
    for a tenant's route, the tenant named in its path."""

    def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> Principal:
        tenant = request.path_params.get("tenant")
        return gatekeeper(request).check(request, credentials, roles=roles, tenant=tenant)

    dependency.__name__ = "allow_" + ("_or_".join(roles) or "any_token")
    return Depends(dependency)


Reader = Annotated[Principal, allow("reader")]
Contributor = Annotated[Principal, allow("contributor")]
Trainer = Annotated[Principal, allow("trainer")]
Auditor = Annotated[Principal, allow("auditor")]
Admin = Annotated[Principal, allow("admin")]
TrainerOrAuditor = Annotated[Principal, allow("trainer", "auditor")]
MonitorReader = Annotated[Principal, allow("auditor", "trainer", "admin")]
"""What the monitors found (drift, performance): it names labels and slice values."""
AnyToken = Annotated[Principal, allow()]
