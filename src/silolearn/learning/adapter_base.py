"""The adapter interface and what both kinds of adapter share: the features they read, the
report of a fit, seeded layers, and the artefact the registry stores.

Everything here is deterministic for a seed: initialisation and shuffling draw from the
caller's generator, and the artefact has no timestamps and sorted keys, so equal training
gives equal bytes (invariant I4 checks them by SHA-256).
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    import torch

    from silolearn.config import TrainingConfig

MAGIC = b"SILOLEARN-ADAPTER\x001\n"
INPUT_SCALE = math.sqrt(384.0)
"""Unit-length embeddings are scaled so each coordinate has about unit variance."""

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


def build_head(dim: int, hidden: int, n_labels: int) -> torch.nn.Module:
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


def objective_weights(
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


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
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


def grow_head(
    head: torch.nn.Module,
    old_labels: Sequence[str],
    new_labels: Sequence[str],
    dim: int,
    hidden: int,
    generator: torch.Generator,
) -> torch.nn.Module:
    """A head for ``new_labels`` that keeps the rows of labels it already had."""
    import torch

    fresh = build_head(dim, hidden, len(new_labels))
    seeded_init(fresh, generator)
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


def seeded_init(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded initialisation (PyTorch's default Linear init, drawn from ``generator``)."""
    import torch

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    import torch

    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]
