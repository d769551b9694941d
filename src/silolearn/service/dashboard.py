"""The dashboard: server-rendered pages (Jinja2, autoescaped) behind the API's own tokens.

One logs in at ``/dashboard/login`` by pasting a token of any role; it is kept for the
browser's session in an ``HttpOnly``, ``SameSite=Strict`` cookie and checked on every page
exactly as a bearer token is (live, within its rate, its tenant; every denial audited).
Each page shows the sections the token's roles may see (``TENANT_SECTIONS``,
``WORKSPACE_SECTIONS``) and computes nothing else. A tenant's page
(``/dashboard/tenants/{t}``) has its serving version and data health for every role; its
versions with accuracy over versions (a Plotly chart), gate verdicts and privacy ledger for
a trainer or an auditor; its incidents for an auditor. The workspace page (``/dashboard``,
a workspace-wide token) lists tenants, and for an admin or an auditor the incidents and
the audit chain verified. Nothing on any page is a record's text. A token of tenant A
asking for tenant B's page gets the 404 of a tenant that does not exist. Scripts are files
of this package or of plotly's (no CDN, no inline script: the Content-Security-Policy
allows scripts from this origin only).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from jinja2 import Environment, PackageLoader
from starlette.concurrency import run_in_threadpool

from silolearn.clock import SYSTEM
from silolearn.errors import AuditChainBroken, RateLimited, SiloError, Unauthenticated
from silolearn.ingest.health import tenant_health
from silolearn.monitoring.incidents import Incidents
from silolearn.operations.scheduler import schedule_view
from silolearn.pipeline import list_gate_runs
from silolearn.privacy.ledger import tenant_scope
from silolearn.registry.rollout import RolloutStore
from silolearn.registry.versions import AdapterRegistry
from silolearn.service.auth import gatekeeper
from silolearn.service.state import Service, service_of
from silolearn.storage.scope import Purpose
from silolearn.tenancy.access import ROLES, Principal
from silolearn.workspace import Workspace

PREFIX = "/dashboard"
COOKIE = "silolearn_token"
EVERY_ROLE = frozenset(ROLES)
TENANT_SECTIONS: dict[str, frozenset[str]] = {
    "serving": EVERY_ROLE,
    "health": EVERY_ROLE,
    "versions": frozenset({"trainer", "auditor"}),
    "gates": frozenset({"trainer", "auditor"}),
    "ledger": frozenset({"trainer", "auditor"}),
    "incidents": frozenset({"auditor"}),
    "schedule": frozenset({"trainer", "auditor"}),
}
"""A tenant page's sections, and the roles that see each."""
WORKSPACE_SECTIONS: dict[str, frozenset[str]] = {
    "tenants": EVERY_ROLE,
    "incidents": frozenset({"admin", "auditor"}),
    "chain": frozenset({"admin", "auditor"}),
}
"""The workspace page's sections (a workspace-wide token), and the roles that see each."""
MAX_TOKEN = 200
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""Scripts from this origin only; inline styles because Plotly sets them on what it draws."""
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_STATIC = resources.files("silolearn.service") / "static"
_PLOTLY = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
STATIC_FILES = {
    "plotly.min.js": (_PLOTLY, "text/javascript"),
    "dashboard.js": (Path(str(_STATIC / "dashboard.js")), "text/javascript"),
    "dashboard.css": (Path(str(_STATIC / "dashboard.css")), "text/css"),
}

templates = Environment(
    loader=PackageLoader("silolearn.service", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def install(app: FastAPI) -> None:
    app.include_router(router)


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _error_page(exc: SiloError, principal: Principal | None = None) -> HTMLResponse:
    return _retry_after(
        exc,
        _page("error.html", exc.http_status, error=exc.code, message=str(exc), principal=principal),
    )


def _retry_after(exc: SiloError, page: HTMLResponse) -> HTMLResponse:
    """A page refusing a token over its rate says when to come back, as the API does."""
    if isinstance(exc, RateLimited):
        page.headers["Retry-After"] = str(exc.details.get("retry_after", 1))
    return page


def _principal(request: Request, tenant: str | None) -> Principal:
    token = request.cookies.get(COOKIE)
    credentials = (
        None
        if token is None
        else HTTPAuthorizationCredentials(scheme="Bearer", credentials=token[:MAX_TOKEN])
    )
    return gatekeeper(request).check(request, credentials, roles=(), tenant=tenant)


def shown(sections: dict[str, frozenset[str]], principal: Principal) -> frozenset[str]:
    """The sections ``principal``'s roles may see."""
    return frozenset(name for name, roles in sections.items() if principal.roles & roles)


def _to_login() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)


@router.get("/login")
def login_form() -> HTMLResponse:
    return _page("login.html")


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=4)
    token = (form.get("token") or [""])[0].strip()[:MAX_TOKEN]
    credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    try:
        await run_in_threadpool(
            gatekeeper(request).check, request, credentials, roles=(), tenant=None
        )
    except SiloError as exc:
        return _retry_after(exc, _page("login.html", exc.http_status, message=str(exc)))
    response = RedirectResponse(PREFIX, status_code=303, headers=HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = _to_login()
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


@router.get("")
def home(request: Request) -> Response:
    try:
        principal = _principal(request, None)
    except Unauthenticated:
        return _to_login()
    except SiloError as exc:
        return _error_page(exc)
    if not principal.workspace_wide:
        return RedirectResponse(
            f"{PREFIX}/tenants/{principal.tenant}", status_code=303, headers=HEADERS
        )
    service = service_of(request)
    sections = shown(WORKSPACE_SECTIONS, principal)
    with service.workspace(principal) as ws:
        context = workspace_view(ws, sections)
    return _page("workspace.html", principal=principal, shown=sections, **context)


@router.get("/tenants/{tenant}")
def tenant_page(tenant: str, request: Request) -> Response:
    try:
        principal = _principal(request, tenant[:64])
        service = service_of(request)
        sections = shown(TENANT_SECTIONS, principal)
        with service.workspace(principal) as ws:
            context = tenant_view(service, ws, tenant, sections)
    except Unauthenticated:
        return _to_login()
    except SiloError as exc:
        return _error_page(exc)
    return _page("tenant.html", principal=principal, shown=sections, **context)


@router.get("/static/{name}")
def static(name: str) -> Response:
    found = STATIC_FILES.get(name)
    if found is None:
        return Response(status_code=404)
    path, media_type = found
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def versions_figure(versions: list[dict[str, Any]], feedback: dict[int, float]) -> dict[str, Any]:
    """The Plotly figure of accuracy over versions: each version's accuracy on the tenant's
    eval set and, where production feedback named its predictions, the share it got right."""
    measured = [v for v in versions if isinstance(v["accuracy"], int | float)]
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "eval accuracy",
            "x": [v["version"] for v in measured],
            "y": [v["accuracy"] for v in measured],
            "text": [v["status"] for v in measured],
            "hovertemplate": "v%{x}: %{y:.3f} (%{text})<extra></extra>",
        }
    ]
    if feedback:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "feedback accuracy",
                "x": sorted(feedback),
                "y": [feedback[v] for v in sorted(feedback)],
                "marker": {"symbol": "diamond", "size": 10},
            }
        )
    return {
        "data": data,
        "layout": {
            "height": 320,
            "margin": {"l": 50, "r": 20, "t": 20, "b": 45},
            "xaxis": {"title": {"text": "version"}, "dtick": 1},
            "yaxis": {"title": {"text": "accuracy"}, "range": [0, 1.02]},
            "legend": {"orientation": "h"},
        },
        "config": {"displaylogo": False, "responsive": True},
    }


def tenant_view(
    service: Service, ws: Workspace, tenant: str, sections: frozenset[str]
) -> dict[str, Any]:
    """What a tenant's page shows of ``sections``: metadata and counts, never a record's
    text; what a section not shown would hold is not read."""
    info = ws.tenants.get(tenant)
    scope = ws.scope(tenant, purpose=Purpose.REGISTRY)
    registry = AdapterRegistry(scope)
    versions = [
        {
            "version": v.version,
            "status": v.status,
            "kind": v.kind,
            "parent": v.parent,
            "accuracy": v.metrics.get("accuracy"),
            "macro_f1": v.metrics.get("macro_f1"),
            "n": v.metrics.get("n"),
            "created_at": v.created_at,
            "updated_at": v.updated_at,
        }
        for v in registry.list()
    ]
    view: dict[str, Any] = {
        "tenant": info,
        "serving": next((v for v in versions if v["status"] == "active"), None),
    }
    if "versions" in sections:
        feedback = {
            int(version): value
            for (name, version), value in service.metrics.feedback_accuracy().items()
            if name == tenant
        }
        view["versions"] = versions
        view["figure"] = versions_figure(versions, feedback)
        view["rollouts"] = [r.to_dict() for r in reversed(RolloutStore(scope).history())]
    if "gates" in sections:
        view["gate_runs"] = _gate_runs(ws, tenant)
    if "ledger" in sections:
        view["ledger"] = ws.ledger().summary(tenant_scope(info.id))
    if "incidents" in sections:
        view["incidents"] = _incidents(ws, tenant)
    if "schedule" in sections:
        view["schedule"] = schedule_view(
            ws, tenant, service.clock.now(), limit=10, wall=service.clock is SYSTEM
        )
    if "health" in sections:
        view["health"] = tenant_health(ws, tenant)
        view["stats"] = ws.tenants.stats(info)
    return view


def _gate_runs(ws: Workspace, tenant: str) -> list[dict[str, Any]]:
    return [
        {
            "version": r["version"],
            "trigger": r["trigger"],
            "passed": r["passed"],
            "severity": r["severity"],
            "created_at": r["created_at"],
            "verdicts": [
                {
                    "gate": v.get("gate"),
                    "passed": v.get("passed"),
                    "applicable": v.get("applicable", True),
                    "severity": v.get("severity"),
                }
                for v in r["verdicts"]
            ],
        }
        for r in list_gate_runs(ws, tenant)
    ]


def _incidents(ws: Workspace, tenant: str | None) -> list[dict[str, Any]]:
    keys = ("id", "tenant", "severity", "kind", "version", "status", "summary", "created_at")
    return [{k: i.get(k) for k in keys} for i in Incidents(ws).list(tenant=tenant)]


def workspace_view(ws: Workspace, sections: frozenset[str]) -> dict[str, Any]:
    """What the workspace page shows of ``sections``: tenants, incidents and the audit
    chain's state."""
    tenants = []
    for info in ws.tenants.list():
        try:
            active = AdapterRegistry(ws.scope(info.name, purpose=Purpose.REGISTRY)).active()
        except SiloError:  # a shredded tenant: nothing of it opens any more
            active = None
        tenants.append(
            {
                "name": info.name,
                "status": info.status,
                "created_at": info.created_at,
                "serving": None if active is None else active.version,
            }
        )
    view: dict[str, Any] = {"tenants": tenants}
    if "incidents" in sections:
        view["incidents"] = _incidents(ws, None)
    if "chain" in sections:
        try:
            report = ws.audit.verify()
            chain: dict[str, Any] = {"ok": True, **report.to_dict()}
        except AuditChainBroken as exc:
            chain = {"ok": False, "message": str(exc), **exc.details}
        chain["signed_seq"] = ws.audit.signed_seq()
        view["chain"] = chain
    return view
