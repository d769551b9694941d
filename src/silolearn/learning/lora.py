"""The ``lora`` adapter: PEFT LoRA matrices on the frozen encoder's attention ``query`` and
``value`` projections, plus a head. Training back-propagates through a private copy of the
encoder whose own weights stay frozen; the encoder other tenants share is never touched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import IntegrityError
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
    from silolearn.learning.encoder import FrozenEncoder
    from silolearn.learning.tuning import Tuned

LORA_TARGETS = ("query", "value")


class LoraAdapter(Adapter):
    """LoRA on the encoder's attention query/value projections, plus a head."""

    kind = "lora"
    needs_text = True

    def __init__(
        self,
        labels: Sequence[str],
        encoder: FrozenEncoder,
        *,
        hidden: int,
        rank: int,
        alpha: int,
        max_tokens: int,
        seed: int = 0,
    ) -> None:
        import torch
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__(labels, hidden)
        self.encoder = encoder
        self.rank, self.alpha, self.max_tokens = rank, alpha, max_tokens
        self.dim = encoder.dim
        # a private copy of the base: LoRA layers are injected into it, never into the
        # encoder other tenants' adapters share
        self.model = copy.deepcopy(encoder.model)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=list(LORA_TARGETS),
            lora_dropout=0.0,
            bias="none",
        )
        torch.manual_seed(seed)  # LoRA's own init draws from the global generator
        inject_adapter_in_model(config, self.model)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_("lora_" in name)
        self.model.eval()  # type: ignore[no-untyped-call]  # no dropout: deterministic
        self.head = build_head(self.dim, hidden, len(self.labels))
        seeded_init(self.head, torch.Generator().manual_seed(seed))

    def header(self) -> dict[str, Any]:
        return {
            **super().header(),
            "dim": self.dim,
            "rank": self.rank,
            "alpha": self.alpha,
            "max_tokens": self.max_tokens,
            "targets": list(LORA_TARGETS),
            "base_sha256": self.encoder.sha256,
        }

    def lora_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if "lora_" in n}

    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {f"head.{k}": v for k, v in self.head.named_parameters()}
        out.update({f"lora.{k}": v for k, v in self.lora_parameters().items()})
        return out

    @classmethod
    def from_tensors(
        cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], encoder: FrozenEncoder
    ) -> LoraAdapter:
        import torch

        if header.get("base_sha256") != encoder.sha256:
            raise IntegrityError("this lora adapter was trained on a different base model")
        adapter = cls(
            header["labels"],
            encoder,
            hidden=int(header["hidden"]),
            rank=int(header["rank"]),
            alpha=int(header["alpha"]),
            max_tokens=int(header["max_tokens"]),
        )
        load_state(adapter.head, tensors, "head.")
        lora = {k[len("lora.") :]: v for k, v in tensors.items() if k.startswith("lora.")}
        own = adapter.lora_parameters()
        if set(lora) != set(own):
            raise IntegrityError("lora artefact does not match the encoder's LoRA layout")
        with torch.no_grad():
            for name, parameter in own.items():
                parameter.copy_(lora[name])
        return adapter

    def warm_started(self, parent: Adapter, seed: int) -> LoraAdapter:
        import torch

        if parent.hidden != self.hidden:
            return self
        parent_head = getattr(parent, "head", None)
        if parent_head is not None:
            self.head = grow_head(
                parent_head,
                parent.labels,
                self.labels,
                self.dim,
                self.hidden,
                torch.Generator().manual_seed(seed),
            )
        if isinstance(parent, LoraAdapter) and parent.rank == self.rank:
            with torch.no_grad():
                theirs = parent.lora_parameters()
                for name, parameter in self.lora_parameters().items():
                    parameter.copy_(theirs[name])
        return self

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        from silolearn.learning.encoder import mean_pool_unit

        batch = self.encoder.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        )
        hidden = self.model(**batch).last_hidden_state
        return mean_pool_unit(hidden, batch["attention_mask"]) * INPUT_SCALE

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

        if features.texts is None:
            raise ValueError("a lora adapter trains on texts")
        texts = list(features.texts)
        y_np = self.label_index(labels)
        y = torch.from_numpy(y_np)
        auto = config.tuning == "auto"
        groups = [content_key(t) for t in texts]
        tuned: Tuned | None = None
        if auto:
            # the head starts from the tuned fit on the frozen embeddings (LoRA's B matrices
            # start at zero, so those are the adapted model's inputs at step 0): LoRA then
            # only has to improve on the frozen model's best linear read-out
            start = (
                torch.from_numpy(np.ascontiguousarray(features.embeddings, dtype=np.float32))
                * INPUT_SCALE
                if features.embeddings is not None
                else self._embed_all(texts)
            )
            tuned, _, _ = fit_tuned_head(
                self.head,
                start,
                y_np,
                groups,
                n_labels=len(self.labels),
                prior=None,
                config=config,
                seed=seed,
            )
        generator = torch.Generator().manual_seed(seed + 1)
        weighting = config.objective if tuned is None else tuned.weighting
        loss_fn = torch.nn.CrossEntropyLoss(
            weight=objective_weights(y_np, len(self.labels), weighting)
        )
        head_lr = config.lora_learning_rate if auto else config.learning_rate
        optimiser = torch.optim.AdamW(
            [
                {"params": list(self.lora_parameters().values()), "lr": config.lora_learning_rate},
                {"params": list(self.head.parameters()), "lr": head_lr},
            ],
            weight_decay=config.weight_decay,
        )
        losses: list[float] = []
        steps = 0
        batch_size = min(config.batch_size, 16)
        epochs = config.lora_epochs
        if auto:
            epochs = max(1, min(epochs, config.lora_budget_examples // max(len(texts), 1)))
        for epoch in range(epochs):
            total = 0.0
            for rows in shuffled_batches(len(texts), batch_size, generator):
                optimiser.zero_grad(set_to_none=True)
                embedded = self._embed([texts[int(i)] for i in rows])
                loss = loss_fn(self.head(embedded), y[rows])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(rows)
                steps += 1
                if progress is not None:
                    progress("step", {"epoch": epoch + 1, "step": steps})
            losses.append(total / max(len(texts), 1))
        if auto:
            # the read-out is tuned again on what the adapted encoder now produces
            tuned, final, _ = fit_tuned_head(
                self.head,
                self._embed_all(texts),
                y_np,
                groups,
                n_labels=len(self.labels),
                prior=None,
                config=config,
                seed=seed,
            )
            losses.append(final)
        return FitReport(
            steps,
            epochs,
            len(texts),
            losses[-1] if losses else 0.0,
            tuple(losses),
            tuning=None if tuned is None else tuned.to_dict(),
        )

    def _embed_all(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        with torch.no_grad():
            parts = [self._embed(texts[i : i + 32]) for i in range(0, len(texts), 32)]
        return torch.cat(parts).clone() if parts else torch.zeros((0, self.dim))

    def predict_proba(self, features: Features) -> FloatArray:
        import torch

        if features.texts is None:
            raise ValueError("a lora adapter predicts from texts")
        texts = list(features.texts)
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                logits = self.head(self._embed(texts[start : start + 32]))
                out[start : start + 32] = torch.softmax(logits, dim=1).numpy()
        return out
