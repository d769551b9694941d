"""Differential privacy: the cost of a DP-SGD step against a non-private step and against
Opacus, for the ``head`` and ``lora`` adapters, and the time of the privacy accountants.

What is measured (one process; torch, numpy and the tokenizer on one thread, deterministic
kernels as in the training workers; seeded inputs, initialisation and noise):

* **(a) head step**, one training step on a fixed batch of ``--batch`` (default 256) inputs
  of 384 dimensions, 20 classes, for a linear head (384 x 20) and an MLP head
  (384-512-20, ReLU), both built by ``HeadAdapter``. Inputs are seeded random vectors of
  unit length times ``INPUT_SCALE``, i.e. what the head reads from the encoder's unit-length
  embeddings (the values do not change the cost). Paths, each on its own copy of the same
  head, AdamW, noise multiplier 1, clipping norm 1:

  - *non-private*: autograd forward, mean cross-entropy, backward, ``AdamW.step``;
  - *Opacus hooks*: ``PrivacyEngine().make_private(grad_sample_mode="hooks",
    poisson_sampling=False)`` on a loader of the same batch (per-example gradients by hooks,
    ``DPOptimizer`` clips, sums, adds noise); the step is fed the batch directly;
  - *Opacus ghost*: the same with ``grad_sample_mode="ghost"`` and the criterion wrapper it
    returns (per-example norms without per-example gradients, two backward passes);
  - *silolearn fused*: the inner step of ``dp_fit_head``: ``head_clipped_sum`` (no
    autograd), Gaussian noise on every coordinate, scale by 1 / batch, ``AdamW.step``;
  - *silolearn dp_fit_head*: the function itself, as a DP run calls it, on ``--batch``
    records at sampling rate 1 (so that every step holds the same full batch); beyond the
    fused step it draws the Poisson mask, records the norms in the ``ClipMonitor`` and runs
    a second forward pass for the loss it reports. Timed between its per-step progress
    events.

  Each path runs in blocks of steps long enough to take ``--block-seconds`` (calibrated on a
  warm-up block); the blocks of all paths take turns, ``--repeat`` rounds, and the median
  block gives the time per step (the fastest block is reported too). "x non-private" is a
  path's median time per step divided by the non-private one's. Before timing, the clipped
  sums of the fused engine and of Opacus (``opacus_clipped_sum``, noise off) are compared on
  the batch.
* **(b) lora step**: ``dp_fit_lora`` (Opacus ``GradSampleModule`` hooks and ``DPOptimizer``
  over PEFT LoRA in the frozen MiniLM encoder) against ``LoraAdapter.fit`` (the non-private
  trainer), both on the same ``--lora-batch`` (default 16) Rotten Tomatoes snippets, a seeded
  sample of ``silolearn.datasets.rotten_tomatoes()``: DP at sampling rate 1 over those 16
  records, non-private with one batch of all 16 per epoch, so both pad to the same length.
  Each call runs 1 + N steps (``--lora-steps``, default 4) on a fresh adapter; the two
  trainers take turns, ``--lora-rounds`` (default 3) calls each. The first step of a call
  (set-up, warm-up) is reported apart; the median of the other steps, timed between the
  trainers' own per-step progress events, counts. Peak memory: peak RSS above the start of
  the call (VmHWM). ``dp_fit_lora`` is first called once as shipped; if it fails, the
  modules that hold the LoRA matrices are put in training mode before the timed calls (see
  ``train_trainable_modules``) and the table says so.
* **(c) accountants**: the epsilon of ``--steps`` (default 10,000) Poisson-subsampled
  Gaussian steps at q = 0.01, sigma = 1.0, delta = 1e-5, through
  ``silolearn.privacy.accountant.epsilon(..., "pld" | "prv" | "rdp")`` and through the peer
  libraries called directly: dp-accounting's ``PLDAccountant`` (same discretisation, 1e-4)
  and ``RdpAccountant``, Opacus' ``PRVAccountant`` and ``RDPAccountant`` (their history set
  to the one merged entry that ``step`` would have built). Every call runs once unmeasured
  first (imports, lazy set-up); then ``--accountant-repeat`` interleaved rounds, median.

``--json`` prints the raw numbers instead of the tables. Quick run (under a minute here):
``python benchmarks/dp.py --repeat 3 --block-seconds 0.1 --lora-steps 2 --lora-rounds 1
--accountant-repeat 1``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

from _common import (
    PeakMemory,
    Table,
    add_output_flags,
    fmt_float,
    fmt_int,
    fmt_ratio,
    limit_threads,
    machine,
    median,
    print_json,
    rate,
    render,
)

# isort: split
# _common pins the thread pools of numpy's BLAS: it must be imported first.
import torch

from silolearn import datasets
from silolearn.config import PrivacyConfig, TrainingConfig
from silolearn.learning.adapters import (
    INPUT_SCALE,
    Features,
    HeadAdapter,
    LoraAdapter,
    deterministic_torch,
    new_adapter,
)
from silolearn.learning.dp import (
    ClipMonitor,
    DpPlan,
    dp_fit_head,
    dp_fit_lora,
    gaussian_noise,
    head_clipped_sum,
    opacus_clipped_sum,
)
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.privacy.accountant import MechanismEvent, epsilon

DIM, CLASSES, HIDDEN = 384, 20, 512
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
LEARNING_RATE = PrivacyConfig().learning_rate
WEIGHT_DECAY = TrainingConfig().weight_decay
SAMPLING_RATE, SIGMA, DELTA = 0.01, 1.0, 1e-5
Step = Callable[[int], float]
"""Runs ``k`` steps of a path, returns seconds per step."""


# ----------------------------------------------------------------------------- (a) head


def head_batch(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What a head reads: unit-length vectors scaled by ``INPUT_SCALE``, random labels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, DIM, generator=generator)
    x = x / x.norm(dim=1, keepdim=True) * INPUT_SCALE
    y = torch.randint(0, CLASSES, (batch,), generator=generator)
    return x, y


def new_head(hidden: int, seed: int) -> torch.nn.Module:
    labels = [f"class-{i:02d}" for i in range(CLASSES)]
    return HeadAdapter(labels, hidden=hidden, dim=DIM, seed=seed).head


def loop(step: Callable[[], object]) -> Step:
    def run(k: int) -> float:
        start = time.perf_counter()
        for _ in range(k):
            step()
        return (time.perf_counter() - start) / k

    return run


def non_private(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    optimiser = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    head.train()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(head(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()

    return loop(step)


def opacus_step(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str) -> Step:
    """``PrivacyEngine.make_private`` without Poisson sampling: the loader only tells Opacus
    the batch size; each step is fed the fixed batch directly."""
    from opacus import PrivacyEngine

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=len(y), shuffle=False
    )
    optimiser = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    engine = PrivacyEngine()
    criterion: Any = torch.nn.CrossEntropyLoss()
    common: dict[str, Any] = {
        "module": head,
        "optimizer": optimiser,
        "data_loader": loader,
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "poisson_sampling": False,
        "noise_generator": torch.Generator().manual_seed(1),
        "grad_sample_mode": mode,
    }
    if mode == "ghost":
        model, dp_optimiser, criterion, _ = engine.make_private(criterion=criterion, **common)
    else:
        model, dp_optimiser, _ = engine.make_private(**common)
    model.train()

    def step() -> None:
        dp_optimiser.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        loss.backward()
        dp_optimiser.step()

    return loop(step)


def fused_step(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    """The inner step of ``dp_fit_head`` on the fixed batch."""
    params = dict(head.named_parameters())
    optimiser = torch.optim.AdamW(params.values(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    noise = torch.Generator().manual_seed(1)
    std = NOISE_MULTIPLIER * MAX_GRAD_NORM
    scale = 1.0 / len(y)
    head.train()

    def step() -> None:
        sums, _norms = head_clipped_sum(head, x, y, MAX_GRAD_NORM)
        for name, p in params.items():
            p.grad = (sums[name] + gaussian_noise(p, std, noise)) * scale
        optimiser.step()

    return loop(step)


def dp_fit_head_steps(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    """``dp_fit_head`` itself at sampling rate 1 (every step is the whole batch): k + 1 steps,
    timed from the first step's progress event to the last (k steps)."""
    sampler, noise = torch.Generator().manual_seed(2), torch.Generator().manual_seed(1)

    def run(k: int) -> float:
        plan = DpPlan(
            records=len(y),
            sampling_rate=1.0,
            noise_multiplier=NOISE_MULTIPLIER,
            steps=k + 1,
            max_grad_norm=MAX_GRAD_NORM,
            learning_rate=LEARNING_RATE,
            target_epsilon=math.inf,
            delta=DELTA,
        )
        events: list[float] = []
        dp_fit_head(
            head,
            x,
            y,
            plan,
            weight_decay=WEIGHT_DECAY,
            monitor=ClipMonitor(MAX_GRAD_NORM),
            sample_generator=sampler,
            noise_generator=noise,
            progress=lambda _event, _details: events.append(time.perf_counter()),
        )
        return (events[-1] - events[0]) / k

    return run


def agreement(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Max absolute difference between the fused and Opacus clipped sums (noise off)."""
    ours, _ = head_clipped_sum(head, x, y, MAX_GRAD_NORM)
    theirs, _ = opacus_clipped_sum(copy.deepcopy(head), (x,), y, MAX_GRAD_NORM)
    return max(float((ours[name] - theirs[name]).abs().max()) for name in ours)


HEAD_PATHS: list[tuple[str, Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Step]]] = [
    ("non-private (autograd + AdamW)", non_private),
    (
        'Opacus 1.6 "hooks" (GradSampleModule + DPOptimizer)',
        lambda h, x, y: opacus_step(h, x, y, "hooks"),
    ),
    ('Opacus 1.6 "ghost" (ghost clipping)', lambda h, x, y: opacus_step(h, x, y, "ghost")),
    ("silolearn fused (head_clipped_sum + noise + AdamW)", fused_step),
    ("silolearn dp_fit_head (+ Poisson mask, monitor, loss)", dp_fit_head_steps),
]


def bench_head(
    name: str, hidden: int, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    head = new_head(hidden, args.seed)
    difference = agreement(head, x, y)
    runs: list[tuple[str, Step]] = [
        (label, build(copy.deepcopy(head), x, y)) for label, build in HEAD_PATHS
    ]
    blocks = []
    for _label, run in runs:
        run(2)  # warm-up: first-call costs, AdamW state
        per_step = run(3)
        blocks.append(max(3, min(2000, math.ceil(args.block_seconds / per_step))))
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(args.repeat):  # interleaved, so that drift of the machine hits all alike
        for i, (_label, run) in enumerate(runs):
            samples[i].append(run(blocks[i]))
    rows = []
    for (label, _), block, times in zip(runs, blocks, samples, strict=True):
        seconds = median(times)
        rows.append(
            {
                "path": label,
                "seconds_per_step": seconds,
                "best_seconds_per_step": min(times),
                "samples_per_s": rate(len(y), seconds),
                "steps_per_block": block,
                "block_seconds": times,
            }
        )
    base = rows[0]["seconds_per_step"]
    for row in rows:
        row["x_non_private"] = row["seconds_per_step"] / base
    return {
        "head": name,
        "parameters": sum(p.numel() for p in head.parameters()),
        "batch": len(y),
        "max_abs_diff_vs_opacus": difference,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- (b) lora


def step_times(events: list[float], start: float) -> tuple[float, list[float]]:
    """The first step (from ``start``) and the later ones, from per-step event times."""
    return events[0] - start, [b - a for a, b in itertools.pairwise(events)]


def train_trainable_modules(lora: LoraAdapter) -> None:
    """Put the modules that hold trainable parameters (the LoRA matrices) in training mode,
    the rest of the encoder staying in eval mode (no dropout). Opacus records a module's
    activations only in training mode; ``LoraAdapter`` leaves its whole model in eval mode,
    and ``dp_fit_lora`` at commit db450de did not switch anything back, so it failed ("No
    activations detected"). Used only if the call as it stands fails."""
    for module in lora.model.modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            module.train()


def bench_lora(args: argparse.Namespace) -> dict[str, Any]:
    rows = datasets.sample(datasets.rotten_tomatoes(), args.lora_batch, seed=args.seed)
    texts = [r["text"] for r in rows]
    labels = [str(r["label"]) for r in rows]
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])  # as Adapter.label_index
    encoder = FrozenEncoder.load(default_model_dir(), expected_sha256=None)
    config = TrainingConfig()
    steps = 1 + args.lora_steps
    tokens = encoder.tokenizer(texts, truncation=True, max_length=config.max_tokens)["input_ids"]
    lengths = [len(t) for t in tokens]

    def adapter() -> LoraAdapter:
        made = new_adapter(
            "lora", names, config=config, seed=args.seed, encoder=encoder, parent=None
        )
        assert isinstance(made, LoraAdapter)
        return made

    def plain_run(lora: LoraAdapter, count: int, events: list[float]) -> None:
        """LoraAdapter.fit with batches of the whole set: one step per epoch."""
        lora.fit(
            Features(texts=texts),
            labels,
            config=config.model_copy(update={"lora_epochs": count, "batch_size": len(texts)}),
            seed=args.seed,
            progress=lambda _event, _details: events.append(time.perf_counter()),
        )

    def dp_run(lora: LoraAdapter, count: int, events: list[float]) -> None:
        """dp_fit_lora at sampling rate 1 over the same records: every step the whole set."""
        plan = DpPlan(
            records=len(texts),
            sampling_rate=1.0,
            noise_multiplier=NOISE_MULTIPLIER,
            steps=count,
            max_grad_norm=MAX_GRAD_NORM,
            learning_rate=LEARNING_RATE,
            target_epsilon=math.inf,
            delta=DELTA,
        )
        dp_fit_lora(
            lora,
            texts,
            y,
            plan,
            lora_learning_rate=config.lora_learning_rate,
            weight_decay=config.weight_decay,
            monitor=ClipMonitor(MAX_GRAD_NORM),
            sample_generator=torch.Generator().manual_seed(2),
            noise_generator=torch.Generator().manual_seed(1),
            progress=lambda _event, _details: events.append(time.perf_counter()),
        )

    # dp_fit_lora as shipped, one step on a throw-away adapter
    shipped_error = None
    try:
        dp_run(adapter(), 1, [])
    except ValueError as exc:
        if "No activations detected" not in str(exc):
            raise
        shipped_error = f"{type(exc).__name__}: {exc}"
    dp_label = "DP dp_fit_lora (Opacus hooks + DPOptimizer)"
    paths = [
        ("non-private LoraAdapter.fit", plain_run, False),
        (dp_label + (" [LoRA layers in train mode]" if shipped_error else ""), dp_run, True),
    ]
    firsts: list[list[float]] = [[] for _ in paths]
    later: list[list[float]] = [[] for _ in paths]
    peaks: list[list[float]] = [[] for _ in paths]
    method = ""
    trainable = 0
    for _ in range(args.lora_rounds):  # the calls take turns: the machine's drift hits both
        for i, (_label, run, private) in enumerate(paths):
            lora = adapter()
            trainable = sum(t.numel() for t in lora.tensors().values())
            if private and shipped_error is not None:
                train_trainable_modules(lora)
            events: list[float] = []
            with PeakMemory() as memory:
                start = time.perf_counter()
                run(lora, steps, events)
            first, rest = step_times(events, start)
            firsts[i].append(first)
            later[i].extend(rest)
            peaks[i].append(memory.mb)
            method = memory.method
            del lora
    out = []
    for i, (label, _run, _private) in enumerate(paths):
        seconds = median(later[i])
        out.append(
            {
                "path": label,
                "seconds_per_step": seconds,
                "samples_per_s": rate(len(texts), seconds),
                "x_non_private": seconds / median(later[0]),
                "first_step_seconds": median(firsts[i]),
                "peak_mb": median(peaks[i]),
                "step_seconds": later[i],
            }
        )
    return {
        "batch": len(texts),
        "rounds": args.lora_rounds,
        "timed_steps": len(later[0]),
        "mean_tokens": sum(lengths) / len(lengths),
        "padded_tokens": max(lengths),
        "max_tokens": config.max_tokens,
        "rank": config.lora_rank,
        "trainable": trainable,
        "memory_method": method,
        "dp_fit_lora_as_shipped": shipped_error or "ok",
        "rows": out,
    }


# ----------------------------------------------------------------------------- (c) accountants


def accountant_calls(steps: int) -> list[tuple[str, str, Callable[[], float]]]:
    """(label, peer label, call): silolearn's accountants and the peer libraries directly."""
    from dp_accounting import dp_event, pld, rdp
    from opacus.accountants import PRVAccountant, RDPAccountant

    events = [MechanismEvent(SAMPLING_RATE, SIGMA, steps)]

    def ours(how: str) -> Callable[[], float]:
        return lambda: epsilon(events, DELTA, how)

    def dp_accounting(kind: str) -> float:
        acc: Any = pld.PLDAccountant() if kind == "pld" else rdp.RdpAccountant()
        event = dp_event.PoissonSampledDpEvent(SAMPLING_RATE, dp_event.GaussianDpEvent(SIGMA))
        acc.compose(event, steps)
        return float(acc.get_epsilon(DELTA))

    def opacus(kind: str) -> float:
        acc: Any = PRVAccountant() if kind == "prv" else RDPAccountant()
        acc.history = [(SIGMA, SAMPLING_RATE, steps)]  # what `steps` calls of step() leave
        return float(acc.get_epsilon(DELTA))

    pld_peer = "dp-accounting PLDAccountant"
    prv_peer = "Opacus PRVAccountant"
    rdp_peer = "dp-accounting RdpAccountant"
    return [
        ('silolearn epsilon(..., "pld")', pld_peer, ours("pld")),
        (pld_peer, pld_peer, lambda: dp_accounting("pld")),
        ('silolearn epsilon(..., "prv")', prv_peer, ours("prv")),
        (prv_peer, prv_peer, lambda: opacus("prv")),
        ('silolearn epsilon(..., "rdp")', rdp_peer, ours("rdp")),
        (rdp_peer, rdp_peer, lambda: dp_accounting("rdp")),
        ("Opacus RDPAccountant", "Opacus RDPAccountant", lambda: opacus("rdp")),
    ]


def bench_accountants(args: argparse.Namespace) -> dict[str, Any]:
    calls = accountant_calls(args.steps)
    values = [call() for _, _, call in calls]  # warm-up: imports, lazy set-up
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(args.accountant_repeat):
        for i, (_, _, call) in enumerate(calls):
            start = time.perf_counter()
            call()
            samples[i].append(time.perf_counter() - start)
    seconds = {label: median(times) for (label, _, _), times in zip(calls, samples, strict=True)}
    rows = [
        {
            "path": label,
            "peer": peer,
            "epsilon": value,
            "seconds": seconds[label],
            "x_peer": seconds[label] / seconds[peer],
            "runs": times,
        }
        for (label, peer, _), value, times in zip(calls, values, samples, strict=True)
    ]
    return {
        "steps": args.steps,
        "sampling_rate": SAMPLING_RATE,
        "noise_multiplier": SIGMA,
        "delta": DELTA,
        "repeat": args.accountant_repeat,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- tables


def tables_for(result: dict[str, Any]) -> list[Table]:
    tables = []
    for head in result["heads"]:
        table = Table(
            f"DP step, {head['head']} head ({fmt_int(head['parameters'])} parameters), "
            f"batch {head['batch']}, 1 thread",
            ["path", "ms/step", "samples/s", "x non-private", "best ms/step", "steps/block"],
            note=(
                f"ms/step: median of {result['repeat']} interleaved blocks per path; best: the "
                "fastest block (closest to the cost on an idle machine). Fused vs Opacus "
                f"clipped sums (noise off): max abs difference "
                f"{head['max_abs_diff_vs_opacus']:.1e}. Inputs: seeded random unit vectors "
                "x INPUT_SCALE, random labels."
            ),
        )
        for r in head["rows"]:
            table.add(
                r["path"],
                fmt_float(r["seconds_per_step"] * 1e3, 3),
                fmt_int(r["samples_per_s"]),
                fmt_ratio(r["x_non_private"]),
                fmt_float(r["best_seconds_per_step"] * 1e3, 3),
                fmt_int(r["steps_per_block"]),
            )
        tables.append(table)

    lora = result.get("lora")
    if lora:
        table = Table(
            f"LoRA step (rank {lora['rank']}, {fmt_int(lora['trainable'])} trainable), batch "
            f"{lora['batch']} Rotten Tomatoes texts (mean {lora['mean_tokens']:.0f} tokens, "
            f"padded to {lora['padded_tokens']}), 1 thread",
            ["path", "ms/step", "samples/s", "x non-private", "first step s", "peak MB"],
            note=(
                f"Median of {lora['timed_steps']} steps: {lora['rounds']} calls of each trainer "
                "(taking turns), each timed after its first step (first step s: set-up and "
                "warm-up, median). Peak MB: peak RSS above the start of a call, median. "
                + (
                    "dp_fit_lora ran unmodified."
                    if lora["dp_fit_lora_as_shipped"] == "ok"
                    else f"dp_fit_lora as shipped: `{lora['dp_fit_lora_as_shipped']}`; timed "
                    "with the modules holding LoRA matrices put in train mode first."
                )
            ),
        )
        for r in lora["rows"]:
            table.add(
                r["path"],
                fmt_int(r["seconds_per_step"] * 1e3),
                fmt_float(r["samples_per_s"], 1),
                fmt_ratio(r["x_non_private"]),
                fmt_float(r["first_step_seconds"], 2),
                fmt_int(r["peak_mb"]),
            )
        tables.append(table)

    acc = result["accountants"]
    by_path = {r["path"]: r["seconds"] for r in acc["rows"]}
    rdp_vs_opacus = by_path['silolearn epsilon(..., "rdp")'] / by_path["Opacus RDPAccountant"]
    table = Table(
        f"epsilon of {fmt_int(acc['steps'])} steps, q={acc['sampling_rate']}, "
        f"sigma={acc['noise_multiplier']}, delta={acc['delta']:g}",
        ["path", "epsilon", "ms", "x peer"],
        note=(
            f"Median of {acc['repeat']} interleaved runs after a warm-up call each. x peer: "
            "time divided by the same library's accountant called directly (silolearn's rdp "
            f"is dp-accounting's; against Opacus RDPAccountant it takes {rdp_vs_opacus:.2f}x)."
        ),
    )
    for r in acc["rows"]:
        table.add(
            r["path"],
            fmt_float(r["epsilon"], 4),
            fmt_float(r["seconds"] * 1e3, 1),
            fmt_ratio(r["x_peer"]),
        )
    tables.append(table)
    return tables


# ----------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="batch of the head steps")
    parser.add_argument(
        "--repeat", type=int, default=11, help="interleaved blocks per head path (median)"
    )
    parser.add_argument(
        "--block-seconds", type=float, default=0.1, help="target length of a block of steps"
    )
    parser.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the LoRA comparison (loads the encoder; default: on)",
    )
    parser.add_argument("--lora-batch", type=int, default=16, help="texts per LoRA step")
    parser.add_argument(
        "--lora-steps", type=int, default=4, help="timed LoRA steps per call, after the first"
    )
    parser.add_argument(
        "--lora-rounds", type=int, default=3, help="calls of each LoRA trainer, taking turns"
    )
    parser.add_argument("--steps", type=int, default=10_000, help="DP-SGD steps to account")
    parser.add_argument(
        "--accountant-repeat", type=int, default=5, help="interleaved runs per accountant"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs, heads and sample")
    add_output_flags(parser)
    args = parser.parse_args()
    for name in (
        "batch",
        "repeat",
        "lora_batch",
        "lora_steps",
        "lora_rounds",
        "steps",
        "accountant_repeat",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def versions() -> dict[str, str]:
    out = {}
    for package in ("torch", "opacus", "dp-accounting", "peft", "transformers"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    # before transformers and huggingface_hub are imported: nothing is downloaded
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Opacus' notices: non-secure RNG (ours is seeded here too), hooks on inputs without grad
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    limit_threads()
    deterministic_torch()  # as in the workers: one thread, deterministic kernels
    torch.manual_seed(args.seed)

    result: dict[str, Any] = {
        "benchmark": "dp",
        "machine": {**machine(), "torch_threads": torch.get_num_threads(), **versions()},
        "repeat": args.repeat,
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "heads": [],
    }
    x, y = head_batch(args.batch, args.seed)
    result["heads"].append(bench_head(f"linear {DIM}x{CLASSES}", 0, x, y, args))
    result["heads"].append(bench_head(f"MLP {DIM}-{HIDDEN}-{CLASSES}", HIDDEN, x, y, args))
    if args.lora:
        result["lora"] = bench_lora(args)
    result["accountants"] = bench_accountants(args)
    result["seconds"] = time.perf_counter() - began

    if args.json:
        print_json(result)
        return
    info = result["machine"]
    print(
        f"Machine: {info['cpus']} CPUs ({info['processor']}), Python {info['python']}, torch "
        f"{info.get('torch')} on {info['torch_threads']} thread, Opacus {info.get('opacus')}, "
        f"dp-accounting {info.get('dp-accounting')}; whole run {result['seconds']:.0f} s.\n"
    )
    render(tables_for(result), markdown=args.markdown)


if __name__ == "__main__":
    main()
