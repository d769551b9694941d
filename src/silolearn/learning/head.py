"""The ``head`` adapter: a linear classifier, or a one-hidden-layer MLP, on the frozen
encoder's pooled, unit-length embedding (for a shared-layer member, also on the features of
the pinned shared trunk). It trains on embeddings only, so the encoder runs once per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from silolearn.learning.adapter_base import (
    INPUT_SCALE,
    Adapter,
    Features,
    FitReport,
    FloatArray,
    Progress,
    build_head,
    grow_head,
    load_state,
    objective_weights,
    seeded_init,
    shuffled_batches,
)
from silolearn.learning.head_fit import fit_tuned_head
from silolearn.learning.tuning import content_key

if TYPE_CHECKING:
    import torch

    from silolearn.config import TrainingConfig


@dataclass(frozen=True)
class Trunk:
    """A pinned version of the shared layer, frozen inside a tenant's head adapter: the head
    reads ``[x, relu(W x + b)]`` of the scaled embedding ``x``."""

    version: int
    sha256: str
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def hidden(self) -> int:
        return int(self.weight.shape[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.cat([x, torch.relu(torch.addmm(self.bias, x, self.weight.T))], dim=1)


class HeadAdapter(Adapter):
    kind = "head"
    needs_text = False

    def __init__(
        self,
        labels: Sequence[str],
        *,
        hidden: int,
        dim: int = 384,
        seed: int = 0,
        trunk: Trunk | None = None,
    ) -> None:
        import torch

        super().__init__(labels, hidden)
        self.dim = dim
        self.trunk = trunk
        self.prior: dict[str, torch.Tensor] | None = None
        """The parent's weights a warm-started tuned fit is pulled towards (L2-SP)."""
        inputs = dim + (trunk.hidden if trunk is not None else 0)
        self.head = build_head(inputs, hidden, len(self.labels))
        seeded_init(self.head, torch.Generator().manual_seed(seed))

    def header(self) -> dict[str, Any]:
        out = {**super().header(), "dim": self.dim}
        if self.trunk is not None:
            out["trunk"] = {"version": self.trunk.version, "sha256": self.trunk.sha256}
        return out

    @classmethod
    def from_tensors(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HeadAdapter:
        trunk = None
        if "trunk" in header:
            trunk = Trunk(
                int(header["trunk"]["version"]),
                str(header["trunk"]["sha256"]),
                tensors["trunk.weight"],
                tensors["trunk.bias"],
            )
        adapter = cls(
            header["labels"], hidden=int(header["hidden"]), dim=int(header["dim"]), trunk=trunk
        )
        load_state(adapter.head, tensors, "head.")
        return adapter

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {f"head.{k}": v for k, v in self.head.named_parameters()}
        if self.trunk is not None:
            out["trunk.weight"] = self.trunk.weight
            out["trunk.bias"] = self.trunk.bias
        return out

    def inputs(self, embeddings: FloatArray) -> torch.Tensor:
        """What the head reads: the scaled embedding, and the trunk's features of it."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)) * INPUT_SCALE
        if self.trunk is not None:
            with torch.no_grad():
                x = self.trunk.features(x)
        return x

    def warm_started(self, parent: Adapter, seed: int) -> HeadAdapter:
        """This adapter's label space with the parent's weights where they fit (not across
        a change of shared trunk: the head's inputs would mean something else)."""
        import torch

        if not isinstance(parent, HeadAdapter) or parent.hidden != self.hidden:
            return self
        mine = None if self.trunk is None else self.trunk.sha256
        theirs = None if parent.trunk is None else parent.trunk.sha256
        if mine != theirs:
            return self
        grown = grow_head(
            parent.head,
            parent.labels,
            self.labels,
            self.dim + (self.trunk.hidden if self.trunk is not None else 0),
            self.hidden,
            torch.Generator().manual_seed(seed),
        )
        self.head = grown
        self.prior = _prior_of(grown, parent.labels, self.labels)
        return self

    def fit(
        self,
        features: Features,
        labels: Sequence[str],
        *,
        config: TrainingConfig,
        seed: int,
        progress: Progress | None = None,
    ) -> FitReport:
        import torch

        if features.embeddings is None:
            raise ValueError("a head adapter trains on embeddings")
        x = self.inputs(features.embeddings)
        y_np = self.label_index(labels)
        if config.tuning == "auto":
            groups = (
                [content_key(t) for t in features.texts]
                if features.texts is not None
                else [str(i) for i in range(len(y_np))]
            )
            return self._fit_tuned(x, y_np, groups, config=config, seed=seed, progress=progress)
        y = torch.from_numpy(y_np)
        generator = torch.Generator().manual_seed(seed + 1)
        loss_fn = torch.nn.CrossEntropyLoss(
            weight=objective_weights(y_np, len(self.labels), config.objective)
        )
        optimiser = torch.optim.AdamW(
            self.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.head.train()
        losses: list[float] = []
        steps = 0
        for epoch in range(config.epochs):
            total = 0.0
            for rows in shuffled_batches(len(y), config.batch_size, generator):
                optimiser.zero_grad(set_to_none=True)
                loss = loss_fn(self.head(x[rows]), y[rows])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
                steps += 1
            losses.append(total / max(len(y), 1))
            if progress is not None:
                progress("epoch", {"epoch": epoch + 1, "loss": losses[-1]})
        self.head.eval()
        return FitReport(steps, config.epochs, len(y), losses[-1] if losses else 0.0, tuple(losses))

    def _fit_tuned(
        self,
        x: torch.Tensor,
        y_np: npt.NDArray[np.int64],
        groups: list[str],
        *,
        config: TrainingConfig,
        seed: int,
        progress: Progress | None,
    ) -> FitReport:
        """Cross-validate the L2 strength on the run's records, then fit on all of them."""
        tuned, final_loss, calls = fit_tuned_head(
            self.head,
            x,
            y_np,
            groups,
            n_labels=len(self.labels),
            prior=self.prior,
            config=config,
            seed=seed,
        )
        if progress is not None:
            progress("tuned", {"c": tuned.c if tuned else None, "loss": final_loss})
        return FitReport(
            calls,
            0,
            len(y_np),
            final_loss,
            (final_loss,),
            tuning=None if tuned is None else tuned.to_dict(),
            oof_predicted=None if tuned is None else tuned.oof_predicted,
        )

    def predict_proba(self, features: Features) -> FloatArray:
        import torch

        if features.embeddings is None:
            raise ValueError("a head adapter predicts from embeddings")
        x = self.inputs(features.embeddings)
        with torch.inference_mode():
            logits = self.head(x)
            return torch.softmax(logits, dim=1).numpy().astype(np.float32)


def _prior_of(
    head: torch.nn.Module, old_labels: Sequence[str], new_labels: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The parent's weights as a prior centre: its rows for the labels it knew, zero rows
    for labels new in this round (the hidden layer of an MLP keeps the parent's)."""
    import torch

    prior = {n: p.detach().clone().float() for n, p in head.named_parameters()}
    known = set(old_labels)
    out_name = next(n for n in reversed(list(prior)) if n.endswith("weight"))
    with torch.no_grad():
        for j, label in enumerate(new_labels):
            if label not in known:
                prior[out_name][j].zero_()
    return prior
