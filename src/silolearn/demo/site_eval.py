"""How well a shared model serves one site's tenant: its accuracy on the tenant's own eval
records, against round 0 (the trunk a run started from, no output row learned) and the
best constant answer of the same records. Read by the federated demo and
``benchmarks/federated.py``; the eval records are read through the tenant's evaluation
scope and embedded by the workspace's recorded base model (I3), never by a training
process (I5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import InvalidInput
from silolearn.learning.shared import SharedStore
from silolearn.storage.scope import Purpose

if TYPE_CHECKING:
    import torch

    from silolearn.learning.encoder import FrozenEncoder
    from silolearn.workspace import Workspace


@dataclass(frozen=True)
class EvalSet:
    """A tenant's eval records with a label its training records have, embedded."""

    tenant: str
    tenant_id: str
    labels: list[str]
    """The training records' labels, sorted: the order of the tenant's output rows."""
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def embed(
        cls,
        tenant: str,
        tenant_id: str,
        labels: list[str],
        records: Sequence[tuple[str, str]],
        encoder: FrozenEncoder,
        max_length: int,
    ) -> EvalSet:
        """``records`` (text, label) whose label is one of ``labels``, embedded as the
        shared layer reads them (at the tokens the sites train at)."""
        import torch

        from silolearn.learning.adapters import INPUT_SCALE

        kept = [(text, label) for text, label in records if label in labels]
        if not kept:
            raise InvalidInput(f"no labelled eval record to judge tenant {tenant!r} by")
        x = (
            torch.from_numpy(encoder.embed([text for text, _ in kept], max_length=max_length))
            * INPUT_SCALE
        )
        y = torch.tensor([labels.index(label) for _, label in kept])
        return cls(tenant, tenant_id, labels, x, y)

    @property
    def size(self) -> int:
        return int(self.y.shape[0])

    @property
    def constant_answer(self) -> float:
        """The accuracy of the best constant answer on these records (a yardstick)."""
        return max(float((self.y == k).float().mean()) for k in range(len(self.labels)))

    def joined(self, other: EvalSet) -> EvalSet:
        """These records and ``other``'s, judged as one set (the same tenant and labels)."""
        import torch

        if (other.tenant_id, other.labels) != (self.tenant_id, self.labels):
            raise InvalidInput(f"eval sets of {self.tenant!r} and {other.tenant!r} differ")
        x, y = torch.cat([self.x, other.x]), torch.cat([self.y, other.y])
        return EvalSet(self.tenant, self.tenant_id, self.labels, x, y)

    def accuracy(self, trunk: Sequence[np.ndarray], rows: Sequence[Any] | None) -> float:
        """Accuracy of ``[x, relu(trunk x)]`` read by ``rows`` (weight, bias); ``None``: no
        row learned yet, every label equally likely (the first label answers)."""
        return float(self.correct(trunk, rows).mean())

    def correct(self, trunk: Sequence[np.ndarray], rows: Sequence[Any] | None) -> np.ndarray:
        """Per record, whether the model of :meth:`accuracy` answers it right (for paired
        comparisons of two models on the same records)."""
        import torch

        if rows is None:
            logits = torch.zeros(self.size, len(self.labels))
        else:
            w, b = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in trunk)
            features = torch.cat([self.x, torch.relu(self.x @ w.T + b)], dim=1)
            weight, bias = (torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in rows)
            logits = features @ weight.T + bias
        return (logits.argmax(1) == self.y).numpy()


def encoder_for(ws: Workspace) -> FrozenEncoder:
    """The workspace's base model, its digest checked against the one recorded (I3)."""
    from silolearn.learning.encoder import FrozenEncoder, base_model_record

    record = base_model_record(ws)
    return FrozenEncoder.load(record.path, expected_sha256=record.sha256)


def eval_set(ws: Workspace, tenant: str, encoder: FrozenEncoder) -> EvalSet:
    """``tenant``'s eval records, read through its evaluation scope and embedded."""
    eval_ = ws.scope(tenant, purpose=Purpose.EVALUATION).eval.read()
    return EvalSet.embed(
        tenant,
        ws.tenants.get(tenant).id,
        train_labels(ws, tenant),
        [(s.record.text, str(s.record.label)) for s in eval_ if s.record.label is not None],
        encoder,
        ws.settings.training.max_tokens,
    )


def held_out_set(
    ws: Workspace, tenant: str, records: Sequence[tuple[str, str]], encoder: FrozenEncoder
) -> EvalSet:
    """``records`` (text, label) of ``tenant``'s source that it never ingested, embedded to
    judge it like its eval records (a larger sample than its own eval split)."""
    return EvalSet.embed(
        tenant,
        ws.tenants.get(tenant).id,
        train_labels(ws, tenant),
        records,
        encoder,
        ws.settings.training.max_tokens,
    )


def train_labels(ws: Workspace, tenant: str) -> list[str]:
    """The labels of ``tenant``'s training records, sorted: the order of its output rows."""
    train = ws.scope(tenant, purpose=Purpose.TRAINING).train.read()
    return sorted({str(s.record.label) for s in train if s.record.label is not None})


def shared_model(ws: Workspace, version: int, tenant_id: str) -> tuple[list[np.ndarray], Any]:
    """The trunk of shared ``version`` and the output rows it holds for ``tenant_id``."""
    from silolearn.learning.adapters import read_artefact

    store = SharedStore(ws)
    _, tensors = read_artefact(store.artefact(version))
    trunk = [tensors["trunk.weight"].numpy(), tensors["trunk.bias"].numpy()]
    rows = (tensors[f"rows.{tenant_id}.weight"], tensors[f"rows.{tenant_id}.bias"])
    return trunk, rows
