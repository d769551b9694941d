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

This module is the door: the interface and the artefact live in ``learning.adapter_base``,
the kinds in ``learning.head`` and ``learning.lora``, the head's cross-validated fit in
``learning.head_fit``; their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from silolearn.errors import IntegrityError, InvalidInput
from silolearn.learning.adapter_base import (
    INPUT_SCALE,
    MAGIC,
    Adapter,
    Features,
    FitReport,
    FloatArray,
    Progress,
    deterministic_torch,
    pack_artefact,
    read_artefact,
)
from silolearn.learning.head import HeadAdapter, Trunk
from silolearn.learning.head_fit import fit_tuned_head
from silolearn.learning.lora import LORA_TARGETS, LoraAdapter

if TYPE_CHECKING:
    from silolearn.config import TrainingConfig
    from silolearn.learning.encoder import FrozenEncoder

__all__ = [
    "INPUT_SCALE",
    "LORA_TARGETS",
    "MAGIC",
    "Adapter",
    "Features",
    "FitReport",
    "FloatArray",
    "HeadAdapter",
    "LoraAdapter",
    "Progress",
    "Trunk",
    "deterministic_torch",
    "fit_tuned_head",
    "load_adapter",
    "new_adapter",
    "pack_artefact",
    "read_artefact",
]


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
