"""The shared layer: one model that learns from every tenant that opts in, only under DP (I9).

Between the frozen encoder and the tenants' heads sits an optional *trunk*: a projection
``h = relu(W x + b)`` of the scaled embedding ``x``; a member's head reads ``[x, h]``.
The trunk is trained by DP-SGD over the union of the members' records, and no gradient
computation ever mixes tenants (I2):

1. each member's own isolated worker (its scope, its key, its Landlock sandbox) reads its
   labelled records and reports how many it has and an opaque digest of each label;
2. the coordinator plans the run (Poisson rate ``q`` = batch / all records, steps, noise
   calibrated to the run's epsilon) and charges the ``shared`` scope's ledger, or refuses
   before any step;
3. each step, every member samples its own records at rate ``q`` and returns the *clipped*
   sum of its examples' gradients with respect to the trunk and to its own output rows
   (the fused engine of ``learning.dp``); the coordinator adds the members' sums, adds
   Gaussian noise of std ``sigma * C`` to every coordinate **once**, divides by the expected
   batch size and steps the optimiser; members get the new trunk and their own rows back.

The coordinator's side (planning, the ledger, the noise, the members' relays) is
``silolearn.rounds.shared.SharedTrainer``; this module keeps the shared versions' store
and what a member's round receives. The output rows are a training scaffold: a member's
rows only ever see that member's gradients, and the coordinator knows a member's labels
only as keyed digests. Members never receive another member's rows, and tenants that have
not joined never receive anything.
A member *pins* a shared version (or follows the latest its site has not refused: a
federated site refuses versions with ``silolearn.federation.lineage.refuse``); its next
round trains its head on that version's trunk, frozen inside its own adapter artefact, so
a new shared version changes nothing a tenant serves until that tenant's own round passes
its gates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import (
    ConflictError,
    NotFoundError,
)

if TYPE_CHECKING:
    import torch

    from silolearn.workspace import Workspace

DIM = 384
Progress = Callable[[str, int, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class SharedVersion:
    version: int
    sha256: str
    lineage: dict[str, Any]
    created_at: str

    @property
    def trunk_sha256(self) -> str:
        return str(self.lineage["trunk_sha256"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "trunk_sha256": self.trunk_sha256,
            "lineage": self.lineage,
            "created_at": self.created_at,
        }


def trunk_artefact(weight: torch.Tensor, bias: torch.Tensor, version: int) -> bytes:
    """The part of a shared version that tenants receive: the trunk, nothing else."""
    from silolearn.learning.adapters import pack_artefact

    header = {"kind": "trunk", "dim": DIM, "hidden": int(weight.shape[0]), "version": version}
    return pack_artefact(header, {"trunk.weight": weight, "trunk.bias": bias})


class SharedStore:
    """Versions of the shared model (sealed with the workspace's shared key) and members."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    @property
    def _key(self) -> Any:
        return self.ws.shared_key()

    # -- versions --------------------------------------------------------------------------

    def versions(self) -> list[SharedVersion]:
        rows = self.ws.conn.execute(
            "SELECT version, sha256, lineage, created_at FROM shared_versions ORDER BY version"
        ).fetchall()
        return [SharedVersion(int(r[0]), str(r[1]), json.loads(r[2]), str(r[3])) for r in rows]

    def latest(self) -> SharedVersion | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def get(self, version: int) -> SharedVersion:
        for v in self.versions():
            if v.version == version:
                return v
        raise NotFoundError(f"the shared model has no version {version}", version=version)

    def artefact(self, version: int) -> bytes:
        row = self.ws.conn.execute(
            "SELECT sha256, box FROM shared_versions WHERE version = ?", (version,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"the shared model has no version {version}", version=version)
        data: bytes = self._key.open(bytes(row[1]), kind="shared", object_id=f"v{version}")
        if hashlib.sha256(data).hexdigest() != str(row[0]):
            from silolearn.errors import IntegrityError

            raise IntegrityError(f"shared version {version} does not match its SHA-256")
        return data

    def trunk(self, version: int) -> tuple[bytes, str]:
        """The trunk artefact of ``version`` and its SHA-256 (what a member pins)."""
        from silolearn.learning.adapters import read_artefact

        _, tensors = read_artefact(self.artefact(version))
        data = trunk_artefact(tensors["trunk.weight"], tensors["trunk.bias"], version)
        return data, hashlib.sha256(data).hexdigest()

    def add(self, artefact: bytes, lineage: dict[str, Any]) -> SharedVersion:
        sha = hashlib.sha256(artefact).hexdigest()
        with self.ws.audit.write() as conn:
            row = conn.execute("SELECT MAX(version) FROM shared_versions").fetchone()
            version = 1 + int(row[0] or 0)
            lineage = {**lineage, "version": version}
            box = self._key.seal(artefact, kind="shared", object_id=f"v{version}")
            created = utcnow()
            conn.execute(
                "INSERT INTO shared_versions (version, sha256, box, lineage, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, sha, box, json.dumps(lineage, sort_keys=True), created),
            )
            self.ws.audit.append_in(
                conn,
                "shared.version",
                obj=f"shared/v{version}",
                details={
                    "sha256": sha,
                    "trunk_sha256": lineage["trunk_sha256"],
                    "members": [m["tenant"] for m in lineage["members"]],
                    "epsilon_after": lineage["privacy"]["charge"]["epsilon_after"],
                },
            )
        return SharedVersion(version, sha, lineage, created)

    # -- members ---------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        rows = self.ws.conn.execute(
            "SELECT t.name, m.tenant_id, m.joined_at, m.pinned_version FROM shared_members m "
            "JOIN tenants t ON t.id = m.tenant_id ORDER BY t.name"
        ).fetchall()
        return [
            {"tenant": r[0], "tenant_id": r[1], "joined_at": r[2], "pinned_version": r[3]}
            for r in rows
        ]

    def member(self, tenant: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = None
        for m in self.members():
            if m["tenant"] == tenant:
                found = m
        return found

    def join(self, tenant: str) -> dict[str, Any]:
        info = self.ws.tenants.get(tenant)
        with self.ws.audit.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO shared_members (tenant_id, joined_at) VALUES (?, ?)",
                (info.id, utcnow()),
            )
            self.ws.audit.append_in(conn, "shared.join", tenant=tenant, obj="shared")
        member = self.member(tenant)
        assert member is not None
        return member

    def leave(self, tenant: str) -> None:
        info = self.ws.tenants.get(tenant)
        with self.ws.audit.write() as conn:
            gone = conn.execute(
                "DELETE FROM shared_members WHERE tenant_id = ?", (info.id,)
            ).rowcount
            if not gone:
                raise NotFoundError(f"tenant {tenant!r} is not on the shared layer")
            self.ws.audit.append_in(conn, "shared.leave", tenant=tenant, obj="shared")

    def pin(self, tenant: str, version: int | None) -> dict[str, Any]:
        """Pin ``tenant`` to a shared version (``None``: follow the latest)."""
        info = self.ws.tenants.get(tenant)
        if self.member(tenant) is None:
            raise ConflictError(f"tenant {tenant!r} has not joined the shared layer")
        if version is not None:
            self.get(version)
            if version in self.refused():
                raise ConflictError(
                    f"shared version {version} was refused on this site: it is never given "
                    "to a tenant",
                    version=version,
                )
        with self.ws.audit.write() as conn:
            conn.execute(
                "UPDATE shared_members SET pinned_version = ? WHERE tenant_id = ?",
                (version, info.id),
            )
            self.ws.audit.append_in(
                conn, "shared.pin", tenant=tenant, obj="shared", details={"version": version}
            )
        member = self.member(tenant)
        assert member is not None
        return member

    def refused(self) -> set[int]:
        """Versions this site refused (``silolearn.federation.lineage.refuse``, final):
        never given to a tenant."""
        rows = self.ws.conn.execute(
            "SELECT DISTINCT version FROM federation_decisions WHERE decision = 'refuse'"
        ).fetchall()
        return {int(r[0]) for r in rows}

    def pinned(self, tenant: str) -> SharedVersion | None:
        """The shared version ``tenant``'s next round trains on (``None``: not a member, or
        no version yet): its pinned one, or the latest this site has not refused."""
        member = self.member(tenant)
        if member is None:
            return None
        refused = self.refused()
        if member["pinned_version"] is not None and member["pinned_version"] not in refused:
            return self.get(int(member["pinned_version"]))
        usable = [v for v in self.versions() if v.version not in refused]
        return usable[-1] if usable else None


def shared_trunk_for(ws: Workspace, tenant: str) -> dict[str, Any] | None:
    """What a member's training round receives: its pinned version's trunk, or ``None``."""
    store = SharedStore(ws)
    version = store.pinned(tenant)
    if version is None:
        return None
    data, sha = store.trunk(version.version)
    ws.audit.append(
        "shared.read",
        tenant=tenant,
        obj=f"shared/v{version.version}",
        details={"trunk_sha256": sha, "purpose": "training"},
    )
    return {"version": version.version, "sha256": sha, "artefact": data}
