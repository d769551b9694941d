"""The coordinator's book of a federated run, kept by the ServerApp: the starting weights,
the ledger before and after each round, each round's audit, the shared version at the end,
and the result file the coordinator reads (``flwr run``'s exit code says nothing)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import SiloError
from silolearn.federation.aggregate import digest
from silolearn.federation.plan import FederationPlan
from silolearn.learning.shared import DIM, SharedStore, trunk_artefact

if TYPE_CHECKING:
    from silolearn.workspace import Workspace


class RoundBook:
    """What the ServerApp writes into the coordinator's workspace, round by round."""

    def __init__(self, workdir: Path, plan: FederationPlan, result: dict[str, Any]) -> None:
        from silolearn.workspace import Workspace

        self.workdir = workdir
        self.run_id = workdir.name
        self.plan = plan
        self.result = result
        self.ws = Workspace.open(workdir.parent.parent, actor="federation")
        self.store = SharedStore(self.ws)
        self.weights: list[np.ndarray] | None = None
        self.parent: int | None = None

    @property
    def obj(self) -> str:
        return f"federation/{self.run_id}"

    def initial_weights(self) -> list[np.ndarray]:
        latest = self.store.latest()
        self.parent = None if latest is None else latest.version
        return initial_weights(self.ws)

    def before_round(self, server_round: int) -> None:
        """The ledger's preflight: a round that could pass the federation's budget in its
        worst accepted case (``min_sites`` survivors) is refused before any site trains."""
        from silolearn.federation.privacy import preflight

        dp = self.plan.client_dp()
        if dp is not None:
            preflight(self.ws, self.plan.federation, dp, run_id=self.run_id)

    def after_round(
        self, server_round: int, got: dict[str, Any], weights: list[np.ndarray], *, seconds: float
    ) -> float | None:
        """The ledger's charge of the noise the survivors achieved, and the round's audit;
        the epsilon after the round."""
        from silolearn.federation.lineage import RoundRecord, audit_round
        from silolearn.federation.privacy import charge

        survivors = int(got["replies"])
        dp = self.plan.client_dp()
        charged = None
        if dp is not None:
            charged = charge(
                self.ws,
                self.plan.federation,
                dp,
                run_id=self.run_id,
                round_no=server_round,
                survivors=survivors,
            )
        record = RoundRecord.of(
            server_round,
            sampled=got["sampled"],
            replied=got["nodes"],
            charge=charged,
            aggregate_sha256=digest(weights),
            seconds=round(seconds, 3),
            failures=int(got["failures"]),
            received_sha256=got["sha256"],
            **({"stages": got["stages"]} if "stages" in got else {}),
        )
        audit_round(self.ws, self.plan.federation, self.run_id, record)
        self.result["rounds"].append(record.to_dict())
        self.weights = weights
        return record.epsilon_after

    def round_failed(self, server_round: int, error: SiloError, got: dict[str, Any]) -> None:
        """A failed round: audited and never versioned; charged only without SecAgg+, where
        every update that reached the coordinator was seen (SecAgg+ unmasked nothing)."""
        from silolearn.federation.lineage import audit_round_failed
        from silolearn.federation.privacy import charge

        dp = self.plan.client_dp()
        replies = int(got.get("replies", 0))
        charged = None
        if dp is not None and not self.plan.secagg and replies:
            charged = charge(
                self.ws,
                self.plan.federation,
                dp,
                run_id=self.run_id,
                round_no=server_round,
                survivors=replies,
            )
        audit_round_failed(
            self.ws,
            self.plan.federation,
            self.run_id,
            server_round,
            error,
            sampled=got.get("sampled", ()),
            replied=got.get("nodes", ()),
            charge=charged,
            **({"stages": got["stages"]} if "stages" in got else {}),
        )

    def failed(self, error: SiloError) -> None:
        self.ws.audit.append(
            "federation.failed", obj=self.obj, details={"error": error.code, **error.details}
        )

    def commit(self, superlink_run_id: str | None) -> int:
        """The last round's aggregate as a new shared version with its federated lineage."""
        import torch

        from silolearn.federation.lineage import RoundRecord, record_lineage
        from silolearn.learning.adapters import pack_artefact

        assert self.weights is not None
        tensors = {
            "trunk.weight": torch.from_numpy(np.array(self.weights[0], dtype=np.float32)),
            "trunk.bias": torch.from_numpy(np.array(self.weights[1], dtype=np.float32)),
        }
        hidden = int(tensors["trunk.weight"].shape[0])
        next_version = 1 + (self.parent or 0)
        trunk_bytes = trunk_artefact(tensors["trunk.weight"], tensors["trunk.bias"], next_version)
        rounds = self.result["rounds"]
        lineage: dict[str, Any] = {
            "origin": "federation",
            "federation": self.plan.federation,
            "run_id": self.run_id,
            "parent": self.parent,
            "hidden": hidden,
            "trunk_sha256": hashlib.sha256(trunk_bytes).hexdigest(),
            "members": [],
            "plan": self.plan.to_dict(),
            "privacy": {
                "mode": "client-level dp" if self.plan.private else "none",
                "charge": {"epsilon_after": rounds[-1]["epsilon_after"] if rounds else None},
            },
        }
        header = {"kind": "shared", "dim": DIM, "hidden": hidden, "members": {}}
        version = self.store.add(pack_artefact(header, tensors), lineage).version
        record_lineage(
            self.ws,
            version=version,
            federation=self.plan.federation,
            run_id=self.run_id,
            rounds=[RoundRecord.from_dict(r) for r in rounds],
            superlink_run_id=superlink_run_id,
        )
        return version

    def write_result(self) -> None:
        path = self.workdir / "result.json"
        path.write_text(json.dumps(self.result, indent=2, sort_keys=True))
        self.ws.close()


def initial_weights(ws: Workspace) -> list[np.ndarray]:
    """The trunk a federated run starts from: the latest shared version's, or a seeded
    initialisation (as the shared layer's)."""
    import torch

    from silolearn.learning.adapters import read_artefact

    store = SharedStore(ws)
    latest = store.latest()
    hidden = ws.settings.shared.hidden
    if latest is not None:
        _, tensors = read_artefact(store.artefact(latest.version))
        if int(tensors["trunk.weight"].shape[0]) == hidden:
            return [tensors["trunk.weight"].numpy(), tensors["trunk.bias"].numpy()]
    generator = torch.Generator().manual_seed(ws.settings.training.seed)
    bound = math.sqrt(6.0 / DIM)  # He-uniform for a ReLU layer
    weight = (torch.rand(hidden, DIM, generator=generator) * 2 - 1) * bound
    return [weight.numpy(), np.zeros(hidden, dtype=np.float32)]
