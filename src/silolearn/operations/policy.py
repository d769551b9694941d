"""Tenants' schedule policies: what starts a tenant's rounds.

A tenant's effective policy is the ``[schedule]`` section's default with the tenant's own
override on top. The override is tenant metadata: it is stored sealed under the tenant's
metadata key (``schedule_policies``, schema 0014); who set it and when stay in clear. Every
change is audited ``schedule.policy`` with the keys changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from silolearn.config import SchedulePolicy
from silolearn.errors import InvalidInput
from silolearn.operations.times import stamp
from silolearn.storage.metadata import SCHEDULE_POLICIES

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

POLICY_KEYS = frozenset(SchedulePolicy.model_fields)


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """A tenant's effective policy, and what of it is the tenant's own."""

    tenant: str
    policy: SchedulePolicy
    override: dict[str, Any]
    """The keys the tenant's policy sets; the rest are the ``[schedule]`` defaults."""
    updated_at: str | None
    updated_by: str | None

    @property
    def manual_only(self) -> bool:
        return not self.policy.triggers

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "policy": self.policy.model_dump(),
            "manual_only": self.manual_only,
            "override": self.override,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


def validate_policy(values: dict[str, Any]) -> SchedulePolicy:
    """A policy from its values, or ``InvalidInput`` saying what is wrong with them."""
    try:
        return SchedulePolicy.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            ".".join(str(p) for p in err["loc"]) + ": " + err["msg"]
            if err["loc"]
            else err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise InvalidInput(f"schedule policy: {problems}") from None


class SchedulePolicies:
    """The schedule policies of one opened workspace's tenants."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    def get(self, tenant: str) -> TenantPolicy:
        info = self.ws.tenants.get(tenant)
        row = self.ws.conn.execute(
            "SELECT sealed, dek_version, updated_at, updated_by FROM schedule_policies "
            "WHERE tenant_id = ?",
            (info.id,),
        ).fetchone()
        override: dict[str, Any] = {}
        updated_at = updated_by = None
        if row is not None:
            fields = self.ws.metadata.open(SCHEDULE_POLICIES, info.id, info.id, row[0], row[1])
            override = dict(fields["policy"])
            updated_at, updated_by = str(row[2]), str(row[3])
        defaults = self.ws.settings.schedule.default_policy().model_dump()
        return TenantPolicy(
            tenant=info.name,
            policy=validate_policy({**defaults, **override}),
            override=override,
            updated_at=updated_at,
            updated_by=updated_by,
        )

    def set(
        self, tenant: str, changes: dict[str, Any], *, at: datetime, reset: bool = False
    ) -> TenantPolicy:
        """Set keys of the tenant's policy (``reset``: drop its override first, so the
        ``[schedule]`` defaults apply to every key not in ``changes``)."""
        unknown = set(changes) - POLICY_KEYS
        if unknown:
            raise InvalidInput(
                f"schedule policy: unknown keys {sorted(unknown)}; expected some of "
                f"{sorted(POLICY_KEYS)}"
            )
        current = self.get(tenant)
        override = {**({} if reset else current.override), **changes}
        defaults = self.ws.settings.schedule.default_policy().model_dump()
        policy = validate_policy({**defaults, **override})
        # what is stored is what was validated (e.g. a trigger list in its canonical form)
        override = {key: getattr(policy, key) for key in override}
        info = self.ws.tenants.get(tenant)
        with self.ws.audit.write() as conn:
            if not override:
                conn.execute("DELETE FROM schedule_policies WHERE tenant_id = ?", (info.id,))
            else:
                sealed, dek_version = self.ws.metadata.seal(
                    conn, SCHEDULE_POLICIES, info.id, info.id, {"policy": override}
                )
                conn.execute(
                    "INSERT INTO schedule_policies (tenant_id, sealed, dek_version, updated_at, "
                    "updated_by) VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET "
                    "sealed = excluded.sealed, dek_version = excluded.dek_version, "
                    "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                    (info.id, sealed, dek_version, stamp(at), self.ws.actor),
                )
            self.ws.audit.append_in(
                conn,
                "schedule.policy",
                tenant=info.name,
                obj=info.id,
                details={"set": changes, "reset": reset, "policy": policy.model_dump()},
            )
        return self.get(tenant)
