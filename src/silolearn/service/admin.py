"""What an admin does (role ``admin``): tenants, and the tokens of the API.

A tenant's admin sees and manages only its tenant (its grants included, and a grant it makes
is for its tenant); creating tenants and workspace-wide grants takes a workspace-wide
admin."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from silolearn.errors import AccessDenied, NotFoundError, TenantNotFound
from silolearn.service.auth import Admin, AnyToken
from silolearn.service.state import service_of
from silolearn.tenancy.access import ROLES, Principal, parse_duration

router = APIRouter(tags=["admin"])

TenantPath = Annotated[str, Path(description="The tenant's name.", max_length=64)]
Role = Literal["reader", "contributor", "trainer", "auditor", "admin"]
assert set(get_args(Role)) == set(ROLES)


class TenantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=64)
    pii_policy: Literal["redact", "tokenize", "reject"] | None = None


class GrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    tenant: StrictStr | None = Field(
        default=None, max_length=64, description="None: the whole workspace."
    )
    roles: list[Role] = Field(min_length=1, max_length=len(ROLES))
    duration: StrictStr = Field(alias="for", max_length=32, description="e.g. 2h, 30m, 7d")
    reason: StrictStr = Field(min_length=1, max_length=500)


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: StrictStr = Field(default="revoked", min_length=1, max_length=500)


def _workspace_wide(request: Request, principal: Principal, what: str) -> None:
    if principal.workspace_wide:
        return
    service_of(request).gate.deny(request, principal, f"{what} needs a workspace-wide admin", 403)
    raise AccessDenied(f"{what} takes a workspace-wide admin token")


@router.get("/whoami", tags=["access"])
def whoami(principal: AnyToken) -> dict[str, Any]:
    """The token's grant: its tenant, roles and expiry (any live token)."""
    return principal.to_dict()


@router.get("/tenants")
def list_tenants(request: Request, principal: Admin) -> list[dict[str, Any]]:
    """Tenants: every one for a workspace-wide admin, its own for a tenant's admin."""
    with service_of(request).workspace(principal) as ws:
        tenants = ws.tenants.list()
    return [t.to_dict() for t in tenants if principal.workspace_wide or t.id == principal.tenant_id]


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantRequest, request: Request, principal: Admin) -> dict[str, Any]:
    """Create a tenant (a workspace-wide admin)."""
    _workspace_wide(request, principal, "creating a tenant")
    with service_of(request).workspace(principal) as ws:
        return ws.create_tenant(body.name, pii_policy=body.pii_policy).to_dict()


@router.get("/tenants/{tenant}")
def show_tenant(tenant: TenantPath, request: Request, principal: Admin) -> dict[str, Any]:
    """A tenant's status, policy and counts."""
    with service_of(request).workspace(principal) as ws:
        return ws.tenant(tenant).show()


@router.post("/access/grants", status_code=201, tags=["access"])
def grant(body: GrantRequest, request: Request, principal: AnyToken) -> dict[str, Any]:
    """A new token (role ``admin``), shown once in this answer (``token``) and never again."""
    service = service_of(request)
    if body.tenant is not None and not principal.workspace_wide and body.tenant != principal.tenant:
        service.gate.deny(request, principal, "not its tenant", 404)
        raise TenantNotFound(f"no tenant named {body.tenant!r}", tenant=body.tenant)
    service.gate.require_roles(request, principal, "admin")
    if body.tenant is None:
        _workspace_wide(request, principal, "a workspace-wide grant")
    with service.workspace(principal) as ws:
        issued = ws.access().grant(
            tenant=body.tenant,
            roles=list(body.roles),
            duration=parse_duration(body.duration),
            reason=body.reason,
        )
    return {"token": issued.token, "expires_at": issued.grant.expires_at, **_grant(issued.grant)}


def _grant(grant: Any) -> dict[str, Any]:
    row: dict[str, Any] = grant.to_dict()
    return {"grant": row}


@router.get("/access/grants", tags=["access"])
def review(request: Request, principal: Admin) -> list[dict[str, Any]]:
    """Every live grant (of the admin's tenant, or all) and its last use."""
    with service_of(request).workspace(principal) as ws:
        grants = ws.access().review(tenant=principal.tenant)
    return [g.to_dict() for g in grants]


@router.delete("/access/grants/{grant_id}", tags=["access"])
def revoke(
    grant_id: Annotated[str, Path(max_length=64)],
    request: Request,
    principal: AnyToken,
    body: RevokeRequest | None = None,
) -> dict[str, Any]:
    """Revoke a grant (role ``admin``): its token is refused from the next request on."""
    service = service_of(request)
    missing = NotFoundError(f"no grant {grant_id[:40]!r}", grant=grant_id[:40])
    with service.workspace(principal) as ws:
        registry = ws.access()
        try:
            target = registry.get(grant_id)
        except NotFoundError:
            raise missing from None
        service.gate.check_tenant(request, principal, target.tenant_id, missing)
        service.gate.require_roles(request, principal, "admin")
        return registry.revoke(
            grant_id, reason="revoked" if body is None else body.reason
        ).to_dict()
