"""DP-SGD: per-example clipping, Gaussian noise and Poisson sampling, and their monitoring.

One DP-SGD step: every training example is included independently with probability ``q``
(Poisson sampling, which is what the accountant assumes); each included example's gradient
is clipped to norm at most ``C``; the clipped gradients are summed, Gaussian noise of
standard deviation ``sigma * C`` is added to every coordinate, and the result is divided by
the *expected* batch size ``q * N`` before the optimiser step.

Two engines compute the clipped sum:

- **fused** (the ``head`` adapter and the shared layer): for a stack of linear layers applied
  to one vector per example, example ``i``'s gradient of a layer is the outer product
  ``g_i a_i^T`` of its output gradient and its input, so its squared norm is
  ``|g_i|^2 (|a_i|^2 + 1)`` (with the bias) and the clipped sum is ``(c * G)^T A``: the same
  matrix products as the non-private backward pass plus a few vector norms. The output
  gradient of softmax cross-entropy is written out (``softmax - onehot``); no autograd.
- **Opacus** (``lora``, and any module): ``GradSampleModule`` computes per-example gradients
  with hooks, ``DPOptimizer`` clips, sums and adds noise.

Both clip with Opacus' formula ``min(1, C / (norm + 1e-6))`` so they agree to rounding.
Noise and sampling come from generators seeded by the operating system's randomness, never
from the run seed: a run seed is in the lineage, and anyone who could replay the noise could
subtract it.

Under DP the loss is unweighted: inverse-frequency class weights are computed from the data
and would leak its label counts.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from silolearn.errors import InvalidInput
from silolearn.privacy.accountant import MechanismEvent

if TYPE_CHECKING:
    import torch

Progress = Callable[[str, dict[str, Any]], None]

CLIP_EPSILON = 1e-6
"""Added to a norm before dividing by it (Opacus' constant, so both engines agree)."""


@dataclass(frozen=True, slots=True)
class DpPlan:
    """What a DP run does, fixed (and charged to the ledger) before it starts."""

    records: int
    sampling_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float
    learning_rate: float
    target_epsilon: float
    delta: float

    @property
    def expected_batch_size(self) -> float:
        return self.sampling_rate * self.records

    @property
    def event(self) -> MechanismEvent:
        return MechanismEvent(self.sampling_rate, self.noise_multiplier, self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "sampling_rate": self.sampling_rate,
            "noise_multiplier": self.noise_multiplier,
            "steps": self.steps,
            "max_grad_norm": self.max_grad_norm,
            "learning_rate": self.learning_rate,
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "expected_batch_size": self.expected_batch_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DpPlan:
        return cls(
            records=int(data["records"]),
            sampling_rate=float(data["sampling_rate"]),
            noise_multiplier=float(data["noise_multiplier"]),
            steps=int(data["steps"]),
            max_grad_norm=float(data["max_grad_norm"]),
            learning_rate=float(data["learning_rate"]),
            target_epsilon=float(data["target_epsilon"]),
            delta=float(data["delta"]),
        )


def sampling(records: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Poisson rate and steps for ``epochs`` expected passes at ``batch_size`` per step."""
    if records < 1:
        raise InvalidInput("a DP run needs at least one record")
    q = min(1.0, batch_size / records)
    return q, max(1, math.ceil(epochs / q))


def secret_generator() -> torch.Generator:
    """A generator seeded from the operating system's randomness (not from the run seed)."""
    import torch

    return torch.Generator().manual_seed(secrets.randbits(63))


# -- clipping monitor ----------------------------------------------------------------------


@dataclass
class ClipMonitor:
    """Per-step share of sampled examples whose gradient was clipped, and their norms."""

    max_grad_norm: float
    fractions: list[float] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)
    _norms: list[Any] = field(default_factory=list)
    """Per-step norm tensors, turned into statistics only by ``summary``."""

    def record(self, norms: torch.Tensor) -> float:
        n = int(norms.shape[0])
        self.sampled.append(n)
        if n == 0:
            return float("nan")
        values = norms.detach()
        fraction = float((values > self.max_grad_norm).sum()) / n
        self.fractions.append(fraction)
        self._norms.append(values)
        return fraction

    def record_counts(self, sampled: int, clipped: int, median: float | None) -> None:
        """A step whose norms were measured elsewhere (the shared layer's tenant workers)."""
        self.sampled.append(sampled)
        if sampled:
            self.fractions.append(clipped / sampled)
            if median is not None:
                self.medians.append(median)

    def summary(self, *, high: float, low: float) -> dict[str, Any]:
        fractions = np.array(self.fractions, dtype=np.float64)
        if self._norms:
            import torch

            norms = torch.cat(self._norms).to(torch.float64).numpy()
        else:
            norms = np.array(self.medians, dtype=np.float64)
        out: dict[str, Any] = {
            "max_grad_norm": self.max_grad_norm,
            "steps": len(self.sampled),
            "empty_steps": sum(1 for n in self.sampled if n == 0),
            "mean_batch": float(np.mean(self.sampled)) if self.sampled else 0.0,
            "fraction_clipped": _distribution(fractions),
            "median_norm": float(np.median(norms)) if norms.size else None,
            "norm_quantiles": {f"p{q}": float(np.quantile(norms, q / 100)) for q in (10, 50, 90)}
            if norms.size
            else {},
            "histogram": _histogram(fractions),
            "per_step": [round(float(f), 4) for f in _thin(fractions, 1000)],
        }
        mean = out["fraction_clipped"]["mean"]
        median = "not measured here" if out["median_norm"] is None else f"{out['median_norm']:.3g}"
        warnings = []
        if mean is not None and mean > high:
            warnings.append(
                f"most gradients were clipped (on average {mean:.0%} per step, above "
                f"{high:.0%}): the clipping norm C={self.max_grad_norm:g} is small against the "
                f"median gradient norm ({median}), so the update direction is "
                "distorted; raise privacy.max_grad_norm"
            )
        if mean is not None and mean < low:
            warnings.append(
                f"almost no gradient was clipped (on average {mean:.1%} per step, below "
                f"{low:.0%}): C={self.max_grad_norm:g} is large against the median gradient "
                f"norm ({median}), so the noise (scaled by C) drowns the signal; "
                "lower privacy.max_grad_norm"
            )
        out["warnings"] = warnings
        return out


def _distribution(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "min": None, "p10": None, "p50": None, "p90": None, "max": None}
    return {
        "mean": float(values.mean()),
        "min": float(values.min()),
        "p10": float(np.quantile(values, 0.1)),
        "p50": float(np.quantile(values, 0.5)),
        "p90": float(np.quantile(values, 0.9)),
        "max": float(values.max()),
    }


def _histogram(values: np.ndarray) -> list[int]:
    counts, _ = np.histogram(values, bins=10, range=(0.0, 1.0))
    return [int(c) for c in counts]


def _thin(values: np.ndarray, limit: int) -> np.ndarray:
    if values.size <= limit:
        return values
    index = np.linspace(0, values.size - 1, limit).round().astype(int)
    thinned: np.ndarray = values[index]
    return thinned


# -- the fused engine ----------------------------------------------------------------------


def clip_and_sum(
    layers: Sequence[tuple[str, torch.Tensor, torch.Tensor]], max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The clipped, summed gradients of linear layers from per-example factors.

    ``layers`` holds ``(name, G, A)`` per linear layer: ``G`` (batch x out) the gradient of
    each example's loss with respect to the layer's output, ``A`` (batch x in) its input.
    Example ``i``'s gradient is ``G_i A_i^T`` for the weight and ``G_i`` for the bias; its
    norm over all layers is clipped to ``max_grad_norm``. Returns ``{name.weight, name.bias}``
    sums and the per-example norms before clipping."""
    import torch

    squared = torch.zeros(layers[0][1].shape[0], dtype=layers[0][1].dtype)
    for _, g, a in layers:
        squared += (g * g).sum(dim=1) * ((a * a).sum(dim=1) + 1.0)
    norms = squared.sqrt()
    factor = (max_grad_norm / (norms + CLIP_EPSILON)).clamp(max=1.0)
    sums: dict[str, torch.Tensor] = {}
    for name, g, a in layers:
        scaled = g * factor[:, None]
        sums[f"{name}.weight"] = scaled.T @ a
        sums[f"{name}.bias"] = scaled.sum(dim=0)
    return sums, norms


def softmax_xent_grad(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy of each example) / d(its logits) = softmax - onehot."""
    import torch

    g = torch.softmax(logits, dim=1)
    g[torch.arange(len(y)), y] -= 1.0
    return g


def head_layers(head: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """The linear layers of a head (``Linear`` or ``Sequential`` of Linear/ReLU), in order,
    with their parameter-name prefixes; anything else is not supported by the fused engine."""
    import torch

    if isinstance(head, torch.nn.Linear):
        return [("", head)]
    if not isinstance(head, torch.nn.Sequential):
        raise TypeError(f"the fused DP engine does not support {type(head).__name__}")
    out = []
    for name, module in head.named_children():
        if isinstance(module, torch.nn.Linear):
            out.append((name, module))
        elif not isinstance(module, torch.nn.ReLU):
            raise TypeError(f"the fused DP engine does not support {type(module).__name__}")
    return out


def head_clipped_sum(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clipped, summed per-example gradients of a Linear / Linear-ReLU-...-Linear head under
    softmax cross-entropy; keys are the head's own parameter names."""
    sums, norms, _ = _head_clipped_sum(head, x, y, max_grad_norm)
    return sums, norms


def _head_clipped_sum(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``head_clipped_sum`` and the logits it computed on the way."""
    import torch

    layers = head_layers(head)
    with torch.no_grad():
        inputs, pre = [], []
        a = x
        for i, (_, layer) in enumerate(layers):
            inputs.append(a)
            z = torch.addmm(layer.bias, a, layer.weight.T)
            pre.append(z)
            a = torch.relu(z) if i < len(layers) - 1 else z
        logits = a
        g = softmax_xent_grad(logits, y)
        factors: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        for i in range(len(layers) - 1, -1, -1):
            name, layer = layers[i]
            factors.append((name, g, inputs[i]))
            if i:
                g = (g @ layer.weight) * (pre[i - 1] > 0)
        sums, norms = clip_and_sum(factors, max_grad_norm)
    return {k.lstrip("."): v for k, v in sums.items()}, norms, logits


def gaussian_noise(like: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    import torch

    return torch.normal(0.0, std, size=like.shape, generator=generator, dtype=like.dtype)


def dp_fit_head(
    head: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: DpPlan,
    *,
    weight_decay: float,
    monitor: ClipMonitor,
    sample_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> list[float]:
    """DP-SGD on a head with the fused engine; returns the per-epoch mean training loss
    (a diagnostic for the tenant, computed on the sampled batches)."""
    import torch

    n = int(x.shape[0])
    if n != plan.records:
        raise ValueError(f"the plan is for {plan.records} records, the data has {n}")
    sample_generator = sample_generator or secret_generator()
    noise_generator = noise_generator or secret_generator()
    params = dict(head.named_parameters())
    optimiser = torch.optim.AdamW(params.values(), lr=plan.learning_rate, weight_decay=weight_decay)
    std = plan.noise_multiplier * plan.max_grad_norm
    scale = 1.0 / plan.expected_batch_size
    steps_per_epoch = max(1, round(1.0 / plan.sampling_rate))
    losses: list[float] = []
    epoch_loss, epoch_count = 0.0, 0
    head.train()
    for step in range(plan.steps):
        mask = torch.rand(n, generator=sample_generator) < plan.sampling_rate
        rows = mask.nonzero().squeeze(1)
        if len(rows):
            yb = y[rows]
            sums, norms, logits = _head_clipped_sum(head, x[rows], yb, plan.max_grad_norm)
            monitor.record(norms)
            # the loss of the sampled batch from the logits already computed: a diagnostic
            picked = torch.log_softmax(logits, dim=1).gather(1, yb[:, None])
            epoch_loss -= float(picked.sum())
            epoch_count += len(rows)
        else:
            sums = {name: torch.zeros_like(p) for name, p in params.items()}
            monitor.record(torch.zeros(0))
        for name, p in params.items():
            p.grad = (sums[name] + gaussian_noise(p, std, noise_generator)) * scale
        optimiser.step()
        if (step + 1) % steps_per_epoch == 0 or step + 1 == plan.steps:
            losses.append(epoch_loss / max(epoch_count, 1))
            epoch_loss, epoch_count = 0.0, 0
            if progress is not None:
                progress("epoch", {"epoch": len(losses), "loss": losses[-1], "step": step + 1})
    head.eval()
    return losses


# -- the Opacus engine ---------------------------------------------------------------------


def _trainable_in_training_mode(module: torch.nn.Module) -> None:
    """Opacus records activations only of modules in training mode. The frozen encoder stays
    in eval mode (no dropout, deterministic); only the modules that own trainable parameters
    (LoRA matrices, the head: linear layers, unaffected by the mode) are switched."""
    for sub in module.modules():
        if any(p.requires_grad for p in sub.parameters(recurse=False)):
            sub.train()


@contextlib.contextmanager
def _opacus_hooks_quiet() -> Iterator[None]:
    """Opacus' full backward hooks fire on outputs when no input requires a gradient (token
    ids never do); torch warns about it every time, harmlessly."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Full backward hook is firing when gradients are computed"
        )
        yield


def opacus_clipped_sum(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor] | dict[str, torch.Tensor],
    y: torch.Tensor,
    max_grad_norm: float,
    *,
    grad_sample_mode: str = "hooks",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clipped, summed per-example gradients of ``module`` (cross-entropy on its output)
    computed by Opacus, noise off; keys are ``module``'s trainable parameter names. The
    reference the fused engine is tested against, and the engine for modules it cannot do."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    _trainable_in_training_mode(module)
    gsm = GradSampleModule(module, batch_first=True, loss_reduction="sum")
    try:
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        optimiser = DPOptimizer(
            torch.optim.SGD([p for _, p in named], lr=0.0),
            noise_multiplier=0.0,
            max_grad_norm=max_grad_norm,
            expected_batch_size=None,
            loss_reduction="sum",
        )
        optimiser.zero_grad(set_to_none=True)
        with _opacus_hooks_quiet():
            out = gsm(**inputs) if isinstance(inputs, dict) else gsm(*inputs)
            loss = torch.nn.functional.cross_entropy(out, y, reduction="sum")
            loss.backward()  # type: ignore[no-untyped-call]
        per_param = [p.grad_sample.reshape(len(y), -1) for _, p in named]  # type: ignore[attr-defined]
        norms = torch.stack([g.norm(2, dim=1) for g in per_param], dim=1).norm(2, dim=1)
        optimiser.clip_and_accumulate()
        sums = {n: p.summed_grad.detach().clone() for n, p in named}  # type: ignore[attr-defined]
        optimiser.zero_grad(set_to_none=True)
    finally:
        gsm._close()
    return sums, norms


class LoraClassifier:
    """Wraps a ``LoraAdapter`` as one ``nn.Module`` (encoder with LoRA, pooling, head) so
    Opacus can attach to it."""

    def __new__(cls, adapter: Any) -> Any:
        import torch

        from silolearn.learning.adapters import INPUT_SCALE
        from silolearn.learning.encoder import mean_pool_unit

        class _Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = adapter.model
                self.head = adapter.head

            def forward(
                self, input_ids: torch.Tensor, attention_mask: torch.Tensor
            ) -> torch.Tensor:
                hidden = self.model(
                    input_ids=input_ids, attention_mask=attention_mask
                ).last_hidden_state
                return self.head(mean_pool_unit(hidden, attention_mask) * INPUT_SCALE)  # type: ignore[no-any-return]

        return _Module()


def dp_fit_lora(
    adapter: Any,
    texts: Sequence[str],
    y: torch.Tensor,
    plan: DpPlan,
    *,
    lora_learning_rate: float,
    weight_decay: float,
    monitor: ClipMonitor,
    sample_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> list[float]:
    """DP-SGD on a LoRA adapter (LoRA matrices and head) with Opacus' per-example gradients
    and ``DPOptimizer``; an empty Poisson batch still takes a (pure noise) step."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    n = len(texts)
    if n != plan.records:
        raise ValueError(f"the plan is for {plan.records} records, the data has {n}")
    sample_generator = sample_generator or secret_generator()
    noise_generator = noise_generator or secret_generator()
    module = LoraClassifier(adapter)
    _trainable_in_training_mode(module)
    gsm = GradSampleModule(module, batch_first=True, loss_reduction="sum")
    lora = [p for name, p in module.named_parameters() if p.requires_grad and "lora_" in name]
    head = list(module.head.parameters())
    base = torch.optim.AdamW(
        [
            {"params": lora, "lr": lora_learning_rate},
            {"params": head, "lr": plan.learning_rate},
        ],
        weight_decay=weight_decay,
    )
    optimiser = DPOptimizer(
        base,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=None,
        loss_reduction="sum",
        generator=noise_generator,
    )
    scale = 1.0 / plan.expected_batch_size
    std = plan.noise_multiplier * plan.max_grad_norm
    losses: list[float] = []
    try:
        for step in range(plan.steps):
            optimiser.zero_grad(set_to_none=True)
            mask = torch.rand(n, generator=sample_generator) < plan.sampling_rate
            rows = [int(i) for i in mask.nonzero().squeeze(1)]
            if rows:
                batch = adapter.encoder.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=adapter.max_tokens,
                    return_tensors="pt",
                )
                with _opacus_hooks_quiet():
                    logits = gsm(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    )
                    loss = torch.nn.functional.cross_entropy(logits, y[rows], reduction="sum")
                    loss.backward()  # type: ignore[no-untyped-call]
                per_param = [p.grad_sample.reshape(len(rows), -1) for p in optimiser.params]
                monitor.record(
                    torch.stack([g.norm(2, dim=1) for g in per_param], dim=1).norm(2, dim=1)
                )
                optimiser.pre_step()  # clip, sum, add noise (into p.grad)
                losses.append(float(loss.detach()) / len(rows))
            else:
                monitor.record(torch.zeros(0))
                for p in optimiser.params:
                    p.grad = gaussian_noise(p, std, noise_generator)
            for p in optimiser.params:
                assert p.grad is not None
                p.grad.mul_(scale)
            base.step()
            if progress is not None:
                progress("step", {"step": step + 1, "of": plan.steps})
    finally:
        gsm._close()
        for sub in module.modules():
            sub.eval()
    return losses
