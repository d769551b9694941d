"""Commands: `access ...` (grant, revoke, review): the tokens of the HTTP API."""

from __future__ import annotations

from typing import Annotated

import typer

from silolearn.cli.base import JsonOpt, WorkspaceOpt, _table, app, command, emit, opened, out
from silolearn.errors import InvalidInput
from silolearn.tenancy.access import ROLES, parse_duration

access_app = typer.Typer(
    help="Tokens of the HTTP API: just-in-time grants, revocation, review.",
    no_args_is_help=True,
)
app.add_typer(access_app, name="access")


@access_app.command("grant")
@command
def access_grant(
    role: Annotated[
        list[str],
        typer.Option(
            "--role", help=f"A role (repeatable): {', '.join(ROLES)}.", show_default=False
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).", show_default=False)],
    tenant: Annotated[
        str | None, typer.Option(help="The tenant the token is bound to.", show_default=False)
    ] = None,
    workspace_wide: Annotated[
        bool, typer.Option("--workspace-wide", help="Bind the token to every tenant instead.")
    ] = False,
    duration: Annotated[
        str, typer.Option("--for", help="How long it lasts: 90s, 30m, 2h, 7d, 1w.")
    ] = "8h",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grant a token for a while; it is printed once and never stored (only a keyed hash)."""
    if (tenant is None) == (not workspace_wide):
        raise InvalidInput("name one tenant with --tenant, or ask for --workspace-wide")
    lasting = parse_duration(duration)
    with opened(workspace) as ws:
        issued = ws.access().grant(tenant=tenant, roles=role, duration=lasting, reason=reason)
    grant = issued.grant

    def human() -> None:
        out.print(
            f"token (shown once, keep it secret): {issued.token}", highlight=False, soft_wrap=True
        )
        bound = f"tenant {grant.tenant}" if grant.tenant else "the whole workspace"
        out.print(
            f"grant {grant.id}: {', '.join(grant.roles)} on {bound}, expires {grant.expires_at}",
            highlight=False,
        )

    emit(as_json, {"token": issued.token, "expires_at": grant.expires_at}, human)


@access_app.command("revoke")
@command
def access_revoke(
    grant: Annotated[str, typer.Argument(help="The grant's id (g-...) or its token.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "revoked",
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a grant: its token is refused from the next request on."""
    with opened(workspace) as ws:
        revoked = ws.access().revoke(grant, reason=reason)
    emit(
        as_json,
        revoked.to_dict(),
        lambda: out.print(f"revoked {revoked.id} at {revoked.revoked_at}", highlight=False),
    )


@access_app.command("review")
@command
def access_review(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's grants.")] = None,
    include_ended: Annotated[
        bool, typer.Option("--all", help="Expired and revoked grants too.")
    ] = False,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every live grant and its last use (with --all, ended ones too)."""
    with opened(workspace) as ws:
        rows = [g.to_dict() for g in ws.access().review(tenant=tenant, include_ended=include_ended)]
    emit(
        as_json,
        rows,
        lambda: out.print(
            _table(
                "grants" if include_ended else "live grants",
                ["grant", "tenant", "roles", "state", "expires", "last used", "by", "reason"],
                [
                    [
                        r["id"],
                        r["tenant"] or "(workspace)",
                        ",".join(r["roles"]),
                        r["state"],
                        r["expires_at"][:19],
                        (r["last_used_at"] or "never")[:19],
                        r["granted_by"],
                        r["reason"][:40],
                    ]
                    for r in rows
                ],
            )
        ),
    )
