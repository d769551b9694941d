"""The record of federated learning: every round audited, every federated shared version's
lineage sealed and bound to the audit chain, and a site's pin or refusal of a version (I7).

The API, all the federation's runtime calls::

    record = RoundRecord(round_no=i, sampled=(...), replied=(...), charge=charged, ...)
    audit_round(ws, "net", run_id, record)                # coordinator; each site when told
    audit_round_failed(ws, "net", run_id, i, error, sampled=(...), replied=(...))
    audit_contribution(site_ws, "net", run_id, i, noise, tenants=..., records=..., ...)
    record_lineage(ws, version=v, federation="net", run_id=r, rounds=[record, ...])
    federated_lineage(ws, v)                              # -> FederatedLineage | None
    pin(site_ws, v, reason=...) / refuse(site_ws, v, reason=...) / follow(site_ws, reason=...)
    decisions(site_ws)

**Rounds.** ``federation.round`` (object ``federation/<run id>``) says who was sampled,
who replied and who dropped, the noise planned and achieved, the epsilon after the round
and the aggregate's digest; a failed round is ``federation.round_failed`` with the error.
A site appends ``federation.contribute`` when its update leaves it (the norm before
clipping, whether it was clipped, the noise std it added, its tenants and records) and
``federation.round`` once it learns the round's outcome, so both chains tell the round.

**Lineage.** ``federated_lineage`` is one row per federated shared version: the federation,
the run, the number of rounds and the epsilon after them in clear; the rounds (sites per
round, noise, epsilon) sealed under the workspace's shared-model key, which seals the
versions themselves. Rows are append-only and bound to the audit chain (``audit.rows``), so
``silolearn audit verify`` reports a lineage edited, deleted or inserted behind silolearn's
back.

**Pin and refuse.** A site decides what its tenants may use of the shared versions it
received: ``pin`` pins every member to one version (``SharedStore.pin``), ``refuse`` marks
a version never to be given to a tenant (members pinned to it follow the latest usable one
again; a refusal is final), ``follow`` lets every member follow the latest usable version.
Decisions are append-only rows bound to the audit chain; ``SharedStore.pinned`` skips
refused versions and ``SharedStore.pin`` refuses them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.audit.rows import ROW_DIGESTS, BoundTable, row_digests
from silolearn.errors import ConflictError, InvalidInput, SiloError
from silolearn.federation.privacy import RoundCharge, SiteNoise
from silolearn.learning.shared import SharedStore

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

LINEAGE_TABLE = BoundTable(
    "federated_lineage",
    key=("version",),
    content=("federation", "run_id", "rounds", "epsilon_after", "sealed", "created_at"),
)
DECISIONS_TABLE = BoundTable(
    "federation_decisions",
    key=("id",),
    content=("federation", "version", "trunk_sha256", "decision", "reason", "decided_at"),
)
BOUND_TABLES = (LINEAGE_TABLE, DECISIONS_TABLE)
"""The federation's tables whose rows the audit chain covers (``silolearn audit verify``)."""
LINEAGE_KIND = "federated-lineage"
"""The kind bound into a sealed lineage (its object id is ``v<version>``)."""


def _obj(run_id: str) -> str:
    return f"federation/{run_id}"


# -- rounds --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One federated round as the coordinator saw it; JSON both ways, so the coordinator
    can send it to the sites."""

    round_no: int
    sampled: tuple[str, ...]
    """The sites (node ids, as text: they are unsigned 64-bit) asked to train."""
    replied: tuple[str, ...]
    """The sites whose update is in the aggregate."""
    aggregate_sha256: str | None = None
    charge: dict[str, Any] | None = None
    """``RoundCharge.to_dict()`` of a private round (noise planned and achieved, epsilon)."""
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        outsiders = sorted(set(self.replied) - set(self.sampled))
        if outsiders:
            raise InvalidInput(f"round {self.round_no}: sites {outsiders} replied unsampled")

    @property
    def dropped(self) -> tuple[str, ...]:
        return _dropped(self.sampled, self.replied)

    @property
    def epsilon_after(self) -> float | None:
        return None if self.charge is None else float(self.charge["epsilon_after"])

    @classmethod
    def of(
        cls,
        round_no: int,
        *,
        sampled: Sequence[str | int],
        replied: Sequence[str | int],
        charge: RoundCharge | None = None,
        aggregate_sha256: str | None = None,
        seconds: float | None = None,
        **extra: Any,
    ) -> RoundRecord:
        return cls(
            round_no,
            tuple(str(s) for s in sampled),
            tuple(str(s) for s in replied),
            aggregate_sha256,
            None if charge is None else charge.to_dict(),
            seconds,
            extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round_no,
            "sampled": list(self.sampled),
            "replied": list(self.replied),
            "dropped": list(self.dropped),
            "sites_sampled": len(self.sampled),
            "sites_replied": len(self.replied),
            "aggregate_sha256": self.aggregate_sha256,
            "privacy": self.charge,
            "epsilon_after": self.epsilon_after,
            "seconds": self.seconds,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        known = {"round", "sampled", "replied", "dropped", "sites_sampled", "sites_replied"}
        known |= {"aggregate_sha256", "privacy", "epsilon_after", "seconds"}
        return cls(
            int(data["round"]),
            tuple(str(s) for s in data["sampled"]),
            tuple(str(s) for s in data["replied"]),
            data.get("aggregate_sha256"),
            data.get("privacy"),
            data.get("seconds"),
            {k: v for k, v in data.items() if k not in known},
        )


def _dropped(sampled: Sequence[str], replied: Sequence[str]) -> tuple[str, ...]:
    """The sampled sites whose update is not in the aggregate, in sampling order."""
    answered = set(replied)
    return tuple(s for s in sampled if s not in answered)


def audit_round(
    ws: Workspace, federation: str, run_id: str, record: RoundRecord, *, side: str = "coordinator"
) -> None:
    """``federation.round``: who took part, who dropped, the noise, the epsilon after."""
    ws.audit.append(
        "federation.round",
        obj=_obj(run_id),
        details={"federation": federation, "run_id": run_id, "side": side, **record.to_dict()},
    )


def audit_round_failed(
    ws: Workspace,
    federation: str,
    run_id: str,
    round_no: int,
    error: SiloError,
    *,
    sampled: Sequence[str | int] = (),
    replied: Sequence[str | int] = (),
    side: str = "coordinator",
    charge: RoundCharge | None = None,
    **extra: Any,
) -> None:
    """``federation.round_failed``: the round released no aggregate. ``charge`` is what the
    ledger charged for it anyway (without SecAgg+ the coordinator saw every update that
    reached it), ``None`` when nothing was charged."""
    ws.audit.append(
        "federation.round_failed",
        obj=_obj(run_id),
        details={
            "federation": federation,
            "run_id": run_id,
            "side": side,
            "round": round_no,
            "sampled": [str(s) for s in sampled],
            "replied": [str(s) for s in replied],
            "dropped": list(_dropped([str(s) for s in sampled], [str(r) for r in replied])),
            "error": error.code,
            "message": error.message,
            "charged": charge is not None,
            "privacy": None if charge is None else charge.to_dict(),
            **extra,
        },
    )


def audit_contribution(
    ws: Workspace,
    federation: str,
    run_id: str,
    round_no: int,
    noise: SiteNoise,
    *,
    tenants: Sequence[str],
    records: Sequence[int],
    trained_from: str | None = None,
    sent_sha256: str | None = None,
    **extra: Any,
) -> None:
    """``federation.contribute``, on a site: what left it in round ``round_no`` (before
    masking), from which tenants and how many of their records."""
    ws.audit.append(
        "federation.contribute",
        obj=_obj(run_id),
        details={
            "federation": federation,
            "run_id": run_id,
            "round": round_no,
            "tenants": list(tenants),
            "records": [int(n) for n in records],
            "trained_from": trained_from,
            "sent_sha256": sent_sha256,
            **noise.to_dict(),
            **extra,
        },
    )


# -- lineage -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FederatedLineage:
    version: int
    federation: str
    run_id: str
    rounds: tuple[RoundRecord, ...]
    epsilon_after: float
    superlink_run_id: str | None
    created_at: str

    @property
    def sites_per_round(self) -> list[int]:
        return [len(r.replied) for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "federation": self.federation,
            "run_id": self.run_id,
            "rounds": [r.to_dict() for r in self.rounds],
            "sites_per_round": self.sites_per_round,
            "epsilon_after": self.epsilon_after,
            "superlink_run_id": self.superlink_run_id,
            "created_at": self.created_at,
        }


def record_lineage(
    ws: Workspace,
    *,
    version: int,
    federation: str,
    run_id: str,
    rounds: Sequence[RoundRecord],
    superlink_run_id: str | None = None,
) -> FederatedLineage:
    """Record the federated lineage of shared ``version`` (already in ``SharedStore``):
    sealed, append-only, bound to the audit chain by its ``federation.lineage`` event.
    ``ConflictError`` when the version already has one."""
    if not rounds:
        raise InvalidInput("a federated version comes from at least one round")
    SharedStore(ws).get(version)
    spent = [r.epsilon_after for r in rounds if r.epsilon_after is not None]
    epsilon_after = spent[-1] if spent else 0.0
    body = {
        "rounds": [r.to_dict() for r in rounds],
        "superlink_run_id": superlink_run_id,
    }
    box = ws.shared_key().seal(
        json.dumps(body, sort_keys=True).encode(), kind=LINEAGE_KIND, object_id=f"v{version}"
    )
    created = utcnow()
    with ws.audit.write() as conn:
        if conn.execute("SELECT 1 FROM federated_lineage WHERE version = ?", (version,)).fetchone():
            raise ConflictError(f"shared version {version} already has its federated lineage")
        conn.execute(
            "INSERT INTO federated_lineage (version, federation, run_id, rounds, epsilon_after, "
            "sealed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (version, federation, run_id, len(rounds), epsilon_after, box, created),
        )
        ws.audit.append_in(
            conn,
            "federation.lineage",
            obj=f"shared/v{version}",
            details={
                "federation": federation,
                "run_id": run_id,
                "rounds": len(rounds),
                "sites_per_round": [len(r.replied) for r in rounds],
                "epsilon_after": epsilon_after,
                ROW_DIGESTS: row_digests(conn, LINEAGE_TABLE, [(version,)]),
            },
        )
    return FederatedLineage(
        version, federation, run_id, tuple(rounds), epsilon_after, superlink_run_id, created
    )


def federated_lineage(ws: Workspace, version: int) -> FederatedLineage | None:
    """The federated lineage of shared ``version`` (``None``: not a federated version).
    A sealed part that does not open under this workspace's key is a ``DecryptionError``."""
    row = ws.conn.execute(
        "SELECT federation, run_id, epsilon_after, sealed, created_at FROM federated_lineage "
        "WHERE version = ?",
        (version,),
    ).fetchone()
    if row is None:
        return None
    plain = ws.shared_key().open(bytes(row[3]), kind=LINEAGE_KIND, object_id=f"v{version}")
    body = json.loads(plain)
    return FederatedLineage(
        version,
        str(row[0]),
        str(row[1]),
        tuple(RoundRecord.from_dict(r) for r in body["rounds"]),
        float(row[2]),
        body.get("superlink_run_id"),
        str(row[4]),
    )


# -- a site's decisions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    id: int
    federation: str
    version: int | None
    trunk_sha256: str | None
    decision: str
    reason: str
    decided_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "federation": self.federation,
            "version": self.version,
            "trunk_sha256": self.trunk_sha256,
            "decision": self.decision,
            "reason": self.reason,
            "decided_at": self.decided_at,
        }


def decisions(ws: Workspace) -> list[Decision]:
    """Every decision of this site, oldest first."""
    rows = ws.conn.execute(
        "SELECT id, federation, version, trunk_sha256, decision, reason, decided_at "
        "FROM federation_decisions ORDER BY id"
    ).fetchall()
    return [
        Decision(
            int(r[0]),
            str(r[1]),
            None if r[2] is None else int(r[2]),
            None if r[3] is None else str(r[3]),
            str(r[4]),
            str(r[5]),
            str(r[6]),
        )
        for r in rows
    ]


def pin(ws: Workspace, version: int, *, reason: str, federation: str = "") -> Decision:
    """Pin every member of this site to shared ``version``; a refused one is a conflict."""
    store = SharedStore(ws)
    target = store.get(version)
    if version in store.refused():
        raise ConflictError(
            f"shared version {version} was refused on this site: pin another one",
            version=version,
        )
    for member in store.members():
        store.pin(member["tenant"], version)
    return _decide(ws, federation, version, target.trunk_sha256, "pin", reason)


def refuse(ws: Workspace, version: int, *, reason: str, federation: str = "") -> Decision:
    """Refuse shared ``version`` on this site: it is never given to a tenant again, and
    members pinned to it follow the latest usable version."""
    store = SharedStore(ws)
    target = store.get(version)
    decided = _decide(ws, federation, version, target.trunk_sha256, "refuse", reason)
    for member in store.members():
        if member["pinned_version"] == version:
            store.pin(member["tenant"], None)
    return decided


def follow(ws: Workspace, *, reason: str, federation: str = "") -> Decision:
    """Every member of this site follows the latest shared version it has not refused."""
    store = SharedStore(ws)
    for member in store.members():
        if member["pinned_version"] is not None:
            store.pin(member["tenant"], None)
    return _decide(ws, federation, None, None, "follow", reason)


def _decide(
    ws: Workspace,
    federation: str,
    version: int | None,
    trunk_sha256: str | None,
    decision: str,
    reason: str,
) -> Decision:
    if not reason.strip():
        raise InvalidInput("a site's decision on a shared version says why (reason)")
    decided = utcnow()
    with ws.audit.write() as conn:
        cursor = conn.execute(
            "INSERT INTO federation_decisions (federation, version, trunk_sha256, decision, "
            "reason, decided_at) VALUES (?, ?, ?, ?, ?, ?)",
            (federation, version, trunk_sha256, decision, reason, decided),
        )
        row_id = int(cursor.lastrowid or 0)
        ws.audit.append_in(
            conn,
            f"federation.{decision}",
            obj="shared" if version is None else f"shared/v{version}",
            details={
                "federation": federation,
                "version": version,
                "trunk_sha256": trunk_sha256,
                "reason": reason,
                ROW_DIGESTS: row_digests(conn, DECISIONS_TABLE, [(row_id,)]),
            },
        )
    return Decision(row_id, federation, version, trunk_sha256, decision, reason, decided)
