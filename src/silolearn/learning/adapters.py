"""Per-tenant adapters on the frozen base: a classifier ``head`` and ``lora``.

Both kinds sit behind one interface (``Adapter``): ``fit`` on a tenant's examples,
``predict_proba``, and ``to_bytes``/``load_adapter`` for the artefact the registry stores.

- ``head`` (the default) is a linear classifier, or a one-hidden-layer MLP, on the pooled,
  unit-length embedding of the frozen encoder. It trains on embeddings only, so the
  encoder runs once per record (and the embeddings are cached per tenant). By default it
  tunes itself (``learning.tuning``: L-BFGS with an L2 strength chosen by cross-validation
  grouped by content); ``tuning = "fixed"`` trains with the configured AdamW schedule.
- ``lora`` adds PEFT LoRA matrices to the encoder's attention ``query`` and ``value``
  projections plus a head; training back-propagates through the encoder, whose own weights
  stay frozen. It reads texts, not embeddings.

Each tenant has its own label space: an adapter carries its labels, in sorted order. A
round starts from its parent's weights (warm start); labels new in the round get fresh rows.

Training is deterministic for a seed: the generator seeds initialisation and shuffling,
torch runs deterministic algorithms on one thread, and the data order is the caller's (time
order). The artefact format is deterministic too (no timestamps, keys sorted), so equal
training gives equal bytes, which invariant I4 checks by SHA-256.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from silolearn.errors import IntegrityError, InvalidInput
from silolearn.learning.tuning import content_key

if TYPE_CHECKING:
    import torch

    from silolearn.config import TrainingConfig
    from silolearn.learning.encoder import FrozenEncoder
    from silolearn.learning.tuning import Tuned

MAGIC = b"SILOLEARN-ADAPTER\x001\n"
INPUT_SCALE = math.sqrt(384.0)
"""Unit-length embeddings are scaled so each coordinate has about unit variance."""
LORA_TARGETS = ("query", "value")

FloatArray = npt.NDArray[np.float32]
Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Features:
    """What an adapter reads: texts (``lora``), embeddings (``head``), or both."""

    texts: Sequence[str] | None = None
    embeddings: FloatArray | None = None

    def __len__(self) -> int:
        if self.embeddings is not None:
            return int(self.embeddings.shape[0])
        return len(self.texts or ())


@dataclass(frozen=True, slots=True)
class FitReport:
    steps: int
    epochs: int
    examples: int
    final_loss: float
    losses: tuple[float, ...]
    tuning: dict[str, Any] | None = None
    """What the self-tuning fit chose (``learning.tuning.Tuned``); None for a fixed one."""
    oof_predicted: tuple[int, ...] | None = None
    """Each training row's out-of-fold predicted label index at the chosen setting (a head
    fitted by cross-validation only: LoRA, DP and fixed fits have none). Not in
    ``to_dict``: the worker returns it apart, sealed as the run's ``oof`` blob."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "steps": self.steps,
            "epochs": self.epochs,
            "examples": self.examples,
            "final_loss": self.final_loss,
            "losses": list(self.losses),
        }
        if self.tuning is not None:
            out["tuning"] = self.tuning
        return out


def deterministic_torch() -> None:
    """One thread and deterministic kernels: the same inputs give the same bits."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _build_head(dim: int, hidden: int, n_labels: int) -> torch.nn.Module:
    import torch

    if hidden == 0:
        return torch.nn.Linear(dim, n_labels)
    return torch.nn.Sequential(
        torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_labels)
    )


def _output_layer(head: torch.nn.Module) -> torch.nn.Linear:
    import torch

    layer = head if isinstance(head, torch.nn.Linear) else head[-1]  # type: ignore[index]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def _objective_weights(
    y: npt.NDArray[np.int64], n_labels: int, weighting: str
) -> torch.Tensor | None:
    """The class weights of a class weighting (or of an objective asked for by name):
    inverse frequency for ``balanced`` (and the ``macro_f1`` objective), else none (log
    loss: the probabilities stay calibrated)."""
    return _class_weights(y, n_labels) if weighting in ("balanced", "macro_f1") else None


def _class_weights(y: npt.NDArray[np.int64], n_labels: int) -> torch.Tensor:
    """Inverse-frequency weights (labels absent from ``y`` get weight 0): a rare class
    counts as much as a common one, which is what macro-F1 rewards."""
    import torch

    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    weights = np.zeros(n_labels, dtype=np.float64)
    present = counts > 0
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class Adapter(ABC):
    """A tenant's trainable part on the frozen base."""

    kind: ClassVar[str]
    needs_text: ClassVar[bool]

    def __init__(self, labels: Sequence[str], hidden: int) -> None:
        if not labels:
            raise InvalidInput("an adapter needs at least one label")
        if list(labels) != sorted(set(labels)):
            raise ValueError("adapter labels are unique and sorted")
        self.labels: tuple[str, ...] = tuple(labels)
        self.hidden = hidden

    def label_index(self, labels: Sequence[str]) -> npt.NDArray[np.int64]:
        index = {label: i for i, label in enumerate(self.labels)}
        try:
            return np.array([index[label] for label in labels], dtype=np.int64)
        except KeyError as exc:
            raise InvalidInput(f"label {exc.args[0]!r} is not in this adapter's labels") from None

    @abstractmethod
    def fit(
        self,
        features: Features,
        labels: Sequence[str],
        *,
        config: TrainingConfig,
        seed: int,
        progress: Progress | None = None,
    ) -> FitReport: ...

    @abstractmethod
    def predict_proba(self, features: Features) -> FloatArray: ...

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    def header(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels), "hidden": self.hidden}

    def to_bytes(self) -> bytes:
        return pack_artefact(self.header(), self.tensors())


def pack_artefact(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """An artefact: magic, a JSON header (sorted keys) and raw float32 tensors in name order.
    Nothing in it depends on time or on the process that wrote it."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    layout = []
    payload = bytearray()
    for name in sorted(plain):
        array = plain[name].numpy().astype("<f4", copy=False)
        layout.append({"name": name, "shape": list(array.shape), "offset": len(payload)})
        payload += array.tobytes(order="C")
    encoded = json.dumps(
        {**header, "tensors": layout}, sort_keys=True, separators=(",", ":")
    ).encode()
    return MAGIC + struct.pack("<Q", len(encoded)) + encoded + bytes(payload)


def read_artefact(data: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    import torch

    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise IntegrityError("not a silolearn adapter artefact")
    (length,) = struct.unpack_from("<Q", data, len(MAGIC))
    start = len(MAGIC) + 8
    try:
        header = json.loads(data[start : start + length])
        base = start + length
        tensors = {}
        for entry in header["tensors"]:
            shape = tuple(int(d) for d in entry["shape"])
            count = int(np.prod(shape)) if shape else 1
            offset = base + int(entry["offset"])
            if offset + 4 * count > len(data):
                raise ValueError("truncated")
            array = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(shape)
            tensors[str(entry["name"])] = torch.from_numpy(array.astype(np.float32))
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"malformed adapter artefact: {exc}") from None
    return header, tensors


def load_adapter(data: bytes, *, encoder: FrozenEncoder | None = None) -> Adapter:
    """An adapter from its artefact; ``lora`` needs the frozen encoder it adapts."""
    header, tensors = read_artefact(data)
    kind = header.get("kind") if isinstance(header, dict) else None
    if kind == "lora" and encoder is None:
        raise ValueError("a lora adapter needs the frozen encoder")
    try:
        if kind == "head":
            return HeadAdapter.from_tensors(header, tensors)
        if kind == "lora":
            assert encoder is not None
            return LoraAdapter.from_tensors(header, tensors, encoder)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"malformed adapter artefact header: {exc!r}") from None
    raise IntegrityError(f"unknown adapter kind {kind!r}")


def _load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    import torch

    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = dict(module.named_parameters())
    if set(own) != set(expected):
        raise IntegrityError(
            f"adapter artefact has parameters {sorted(own)[:4]}..., expected "
            f"{sorted(expected)[:4]}..."
        )
    with torch.no_grad():
        for name, parameter in expected.items():
            if tuple(own[name].shape) != tuple(parameter.shape):
                raise IntegrityError(f"adapter parameter {name} has the wrong shape")
            parameter.copy_(own[name])


def _grow_head(
    head: torch.nn.Module,
    old_labels: Sequence[str],
    new_labels: Sequence[str],
    dim: int,
    hidden: int,
    generator: torch.Generator,
) -> torch.nn.Module:
    """A head for ``new_labels`` that keeps the rows of labels it already had."""
    import torch

    fresh = _build_head(dim, hidden, len(new_labels))
    _reset(fresh, generator)
    with torch.no_grad():
        if hidden:
            fresh[0].weight.copy_(head[0].weight)  # type: ignore[index]
            fresh[0].bias.copy_(head[0].bias)  # type: ignore[index]
        old_out, new_out = _output_layer(head), _output_layer(fresh)
        position = {label: i for i, label in enumerate(old_labels)}
        for j, label in enumerate(new_labels):
            if label in position:
                new_out.weight[j].copy_(old_out.weight[position[label]])
                new_out.bias[j].copy_(old_out.bias[position[label]])
    return fresh


def _reset(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded initialisation (PyTorch's default Linear init, drawn from ``generator``)."""
    import torch

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    import torch

    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


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
        self.head = _build_head(inputs, hidden, len(self.labels))
        _reset(self.head, torch.Generator().manual_seed(seed))

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
        _load_state(adapter.head, tensors, "head.")
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
        grown = _grow_head(
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
            weight=_objective_weights(y_np, len(self.labels), config.objective)
        )
        optimiser = torch.optim.AdamW(
            self.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.head.train()
        losses: list[float] = []
        steps = 0
        for epoch in range(config.epochs):
            total = 0.0
            for rows in _batches(len(y), config.batch_size, generator):
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
        self.head = _build_head(self.dim, hidden, len(self.labels))
        _reset(self.head, torch.Generator().manual_seed(seed))

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
        _load_state(adapter.head, tensors, "head.")
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
            self.head = _grow_head(
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
            weight=_objective_weights(y_np, len(self.labels), weighting)
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
            for rows in _batches(len(texts), batch_size, generator):
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


def fit_tuned_head(
    head: torch.nn.Module,
    x: torch.Tensor,
    y_np: npt.NDArray[np.int64],
    groups: list[str],
    *,
    n_labels: int,
    prior: dict[str, torch.Tensor] | None,
    config: TrainingConfig,
    seed: int,
) -> tuple[Tuned | None, float, int]:
    """Fit ``head`` in place by L-BFGS with the cross-validated L2 strength; returns what was
    chosen (None with too few distinct texts to cross-validate: then C = 1), the final
    unpenalised training loss and the number of loss evaluations."""
    import torch

    from silolearn.learning.tuning import (
        C_GRID,
        MLP_C_GRID,
        WEIGHTINGS,
        LbfgsProblem,
        assign_folds,
        choose_weighting,
        fold_count,
        grid_below,
        select_c,
        strength_for,
    )

    linear = isinstance(head, torch.nn.Linear)
    grid = grid_below(C_GRID if linear else MLP_C_GRID, config.max_c)
    max_iter = 150 if linear else 300
    start = copy.deepcopy(head)
    if linear:
        # convex: start from the prior (or zero), which the optimum does not depend on but
        # the number of iterations does
        with torch.no_grad():
            for name, p in start.named_parameters():
                p.copy_(prior[name] if prior is not None else torch.zeros_like(p))

    def maker(weights: torch.Tensor | None) -> Callable[[], LbfgsProblem]:
        def make() -> LbfgsProblem:
            return LbfgsProblem(
                copy.deepcopy(start), class_weights=weights, prior=prior, max_iter=max_iter
            )

        return make

    xd = x.float()
    y = torch.from_numpy(y_np)
    k = fold_count(groups, y_np, config.cv_folds)
    tuned: Tuned | None = None
    c = min(1.0, config.max_c or 1.0)
    weighting = "balanced" if config.objective == "macro_f1" else "none"
    if k >= 2:
        folds = assign_folds(groups, y_np, k, seed)
        candidates = []
        for option in WEIGHTINGS[config.objective]:
            candidates.append(
                select_c(
                    maker(_objective_weights(y_np, n_labels, option)),
                    xd,
                    y,
                    folds,
                    grid=grid,
                    objective="log_loss",
                    n_labels=n_labels,
                    input_scale=INPUT_SCALE,
                    one_standard_error=config.l2_choice == "one_standard_error",
                    weighting=option,
                )
            )
        tuned = choose_weighting(candidates)
        c, weighting = tuned.c, tuned.weighting
    make = maker(_objective_weights(y_np, n_labels, weighting))
    problem = make()
    calls = problem.fit(xd, y, strength_for(c, len(y), INPUT_SCALE))
    with torch.no_grad():
        for name, p in head.named_parameters():
            p.copy_(dict(problem.module.named_parameters())[name].float())
        final_loss = float(torch.nn.functional.cross_entropy(problem.module(xd), y))
    head.eval()
    return tuned, final_loss, calls


def new_adapter(
    kind: str,
    labels: Sequence[str],
    *,
    config: TrainingConfig,
    seed: int,
    encoder: FrozenEncoder | None,
    parent: Adapter | None,
    trunk: Trunk | None = None,
) -> Adapter:
    """A fresh adapter of ``kind`` for ``labels``, warm-started from ``parent`` when given;
    a ``head`` on the shared ``trunk`` when given."""
    adapter: HeadAdapter | LoraAdapter
    if trunk is not None and kind != "head":
        raise InvalidInput("the shared layer feeds head adapters only")
    if kind == "head":
        adapter = HeadAdapter(labels, hidden=config.head_hidden, dim=384, seed=seed, trunk=trunk)
    elif kind == "lora":
        if encoder is None:
            raise ValueError("a lora adapter needs the frozen encoder")
        adapter = LoraAdapter(
            labels,
            encoder,
            hidden=config.head_hidden,
            rank=config.lora_rank,
            alpha=config.lora_alpha,
            max_tokens=config.max_tokens,
            seed=seed,
        )
    else:
        raise InvalidInput(f"unknown adapter kind {kind!r}: use head or lora")
    if parent is not None:
        return adapter.warm_started(parent, seed)
    return adapter
