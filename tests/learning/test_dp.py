"""DP-SGD on real embeddings and the real frozen encoder: the fused engine computes the same
clipped gradient sums as Opacus, the noise has Opacus' distribution, Opacus' per-example
gradients of a LoRA adapter are the ones plain autograd gives, the clipping monitor warns
when C is off, Poisson sampling samples what the accountant assumes, and a DP head learns
while huge noise stops it from learning."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from silolearn.config import PrivacyConfig, TrainingConfig
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.learning.adapters import Features, HeadAdapter, LoraAdapter
from silolearn.learning.dp import (
    CLIP_EPSILON,
    ClipMonitor,
    DpPlan,
    LoraClassifier,
    dp_fit_head,
    dp_fit_lora,
    gaussian_noise,
    head_clipped_sum,
    opacus_clipped_sum,
    sampling,
)
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.privacy.accountant import MechanismEvent, calibrate_noise, epsilon

DELTA = 1e-5
LORA_TOKENS = 32
MONITOR = PrivacyConfig()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HOOK_WARNING = "Full backward hook is firing when gradients are computed"
"""Opacus registers full backward hooks on the first trainable layer, whose input (an
embedding, or a frozen encoder's state) does not require grad, and torch warns about it.
Per-example gradients only need the output gradient, so it is harmless."""
SCALAR_WARNING = "Converting a tensor with requires_grad=True to a scalar"
"""``dp_fit_lora`` logs its loss with ``float(loss)`` on a tensor that requires grad."""


@contextlib.contextmanager
def _ignoring(*messages: str) -> Iterator[None]:
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


@pytest.fixture(scope="module")
def encoder() -> FrozenEncoder:
    return FrozenEncoder.load(default_model_dir(), expected_sha256=None)


@pytest.fixture(scope="module")
def news(encoder: FrozenEncoder) -> dict[str, Any]:
    """480 BBC articles (5 topics) embedded at 64 tokens: the first 360 in time order train,
    the last 120 test."""
    rows = sample(bbc_news(), 480, seed=5)
    x = encoder.embed([r["text"] for r in rows], max_length=64)
    labels = sorted({r["label"] for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    y = torch.tensor([index[r["label"]] for r in rows])
    return {"labels": labels, "x": x, "y": y, "train": slice(0, 360), "test": slice(360, 480)}


def _plan(
    records: int,
    *,
    q: float,
    steps: int,
    sigma: float,
    max_grad_norm: float = 1.0,
    learning_rate: float = 0.05,
    target_epsilon: float | None = None,
) -> DpPlan:
    if target_epsilon is None:
        target_epsilon = epsilon([MechanismEvent(q, sigma, steps)], DELTA)
    return DpPlan(
        records=records,
        sampling_rate=q,
        noise_multiplier=sigma,
        steps=steps,
        max_grad_norm=max_grad_norm,
        learning_rate=learning_rate,
        target_epsilon=target_epsilon,
        delta=DELTA,
    )


def _fit(
    head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, plan: DpPlan, seed: int
) -> tuple[ClipMonitor, list[float]]:
    monitor = ClipMonitor(plan.max_grad_norm)
    losses = dp_fit_head(
        head,
        x,
        y,
        plan,
        weight_decay=0.0,
        monitor=monitor,
        sample_generator=torch.Generator().manual_seed(seed),
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )
    return monitor, losses


# -- the fused engine against Opacus --------------------------------------------------------


@pytest.mark.parametrize("clipped", ["some", "all", "none"])
@pytest.mark.parametrize("hidden", [0, 64])
def test_fused_clipped_sum_matches_opacus(news: dict[str, Any], hidden: int, clipped: str) -> None:
    """Acceptance: the fused engine's clipped sums equal Opacus' (noise off) to 1e-5."""
    labels = [f"label-{i:02d}" for i in range(20)]
    adapter = HeadAdapter(labels, hidden=hidden, seed=7)
    x = adapter.inputs(news["x"][:64])  # real embeddings, scaled as the head reads them
    y = torch.randint(0, 20, (64,), generator=torch.Generator().manual_seed(8))
    _, norms = head_clipped_sum(adapter.head, x, y, 1.0)
    c = {
        "some": float(norms.median()),
        "all": 0.5 * float(norms.min()),
        "none": 2.0 * float(norms.max()),
    }[clipped]
    share = float((norms > c).float().mean())
    assert {"some": 0.0 < share < 1.0, "all": share == 1.0, "none": share == 0.0}[clipped]

    ours, our_norms = head_clipped_sum(adapter.head, x, y, c)
    with _ignoring(HOOK_WARNING):
        theirs, their_norms = opacus_clipped_sum(adapter.head, (x,), y, c)
    assert ours.keys() == theirs.keys() == dict(adapter.head.named_parameters()).keys()
    differences = {name: float((ours[name] - theirs[name]).abs().max()) for name in ours}
    norm_difference = float((our_norms - their_norms).abs().max())
    print(
        f"\nhead 384->{hidden or ''}{'->' if hidden else ''}20, C={c:.4g} ({share:.0%} clipped, "
        f"norms {float(norms.min()):.3g}..{float(norms.max()):.3g}): max |fused - opacus| "
        + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
        + f"; norms {norm_difference:.2e}"
    )
    for name in ours:
        assert ours[name].shape == theirs[name].shape
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-5, msg=name)
        assert ours[name].abs().max() > 1e-3, name  # not vacuously close to zero
    torch.testing.assert_close(our_norms, their_norms, rtol=1e-5, atol=1e-5)


def test_noise_has_the_distribution_opacus_adds() -> None:
    from opacus.optimizers.optimizer import _generate_noise
    from scipy import stats

    sigma, c = 1.3, 0.7
    std = sigma * c
    like = torch.zeros(500, 400)
    ours = gaussian_noise(like, std, torch.Generator().manual_seed(1)).flatten().numpy()
    theirs = _generate_noise(std, like, torch.Generator().manual_seed(2)).flatten().numpy()
    assert ours.dtype == theirs.dtype == np.float32 and ours.size == 200_000
    test = stats.ks_2samp(ours, theirs)
    ours64 = ours.astype(np.float64)
    print(
        f"\nnoise std {std}: ours mean {ours64.mean():.2e} std {ours64.std():.5f}, "
        f"opacus std {theirs.astype(np.float64).std():.5f}; KS {test.statistic:.4f} "
        f"p={test.pvalue:.3f}"
    )
    assert test.pvalue > 1e-3
    for draws in (ours64, theirs.astype(np.float64)):
        assert draws.std() == pytest.approx(std, rel=0.01)
        assert abs(draws.mean()) < 0.01 * std  # 4.5 standard errors of the mean
    assert stats.kstest(ours64 / std, "norm").pvalue > 1e-3
    # a fresh generator for every run: no two draws repeat
    again = gaussian_noise(like, std, torch.Generator().manual_seed(3)).flatten().numpy()
    assert not np.array_equal(ours, again)


# -- LoRA under Opacus ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_batch(encoder: FrozenEncoder) -> tuple[list[str], torch.Tensor]:
    """6 short real snippets, 3 fresh and 3 rotten."""
    rows = [r for r in sample(rotten_tomatoes(), 300, seed=21) if len(r["text"]) < 120]
    fresh = [r for r in rows if r["label"] == "fresh"][:3]
    rotten = [r for r in rows if r["label"] == "rotten"][:3]
    picked = fresh + rotten
    return [r["text"] for r in picked], torch.tensor([0, 0, 0, 1, 1, 1])


def _lora(encoder: FrozenEncoder, seed: int) -> LoraAdapter:
    config = TrainingConfig()
    return LoraAdapter(
        ["fresh", "rotten"],
        encoder,
        hidden=0,
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        max_tokens=LORA_TOKENS,
        seed=seed,
    )


def _tokens(adapter: LoraAdapter, texts: list[str]) -> dict[str, torch.Tensor]:
    batch = adapter.encoder.tokenizer(
        texts, padding=True, truncation=True, max_length=LORA_TOKENS, return_tensors="pt"
    )
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _autograd_clipped_sum(
    module: torch.nn.Module, adapter: LoraAdapter, texts: list[str], y: torch.Tensor, c: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The reference: one example at a time through plain autograd (the module as it is, in
    eval mode: no dropout), clipped with Opacus' formula, summed."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    sums = {n: torch.zeros_like(p) for n, p in named}
    norms = []
    for i, text in enumerate(texts):
        logits = module(**_tokens(adapter, [text]))
        loss = torch.nn.functional.cross_entropy(logits, y[i : i + 1], reduction="sum")
        grads = torch.autograd.grad(loss, [p for _, p in named])
        norm = torch.stack([(g.double() ** 2).sum() for g in grads]).sum().sqrt()
        norms.append(float(norm))
        factor = min(1.0, c / (float(norm) + CLIP_EPSILON))
        for (n, _), g in zip(named, grads, strict=True):
            sums[n] += factor * g
    return sums, torch.tensor(norms)


def test_opacus_lora_gradients_match_per_example_autograd(
    encoder: FrozenEncoder, lora_batch: tuple[list[str], torch.Tensor]
) -> None:
    """Opacus with PEFT LoRA has been seen to corrupt updates silently (opacus#820): its
    clipped per-example sums must be the ones plain autograd gives, example by example."""
    texts, y = lora_batch
    adapter = _lora(encoder, seed=5)
    # B starts at zero, which makes A's gradient zero: give B a (seeded) value so that both
    # factors of every LoRA matrix are checked
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, parameter in adapter.lora_parameters().items():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    module = LoraClassifier(adapter)
    _, norms = _autograd_clipped_sum(module, adapter, texts, y, 1.0)
    c = float(norms.median())  # some examples clipped, some not
    reference, _ = _autograd_clipped_sum(module, adapter, texts, y, c)

    with _ignoring(HOOK_WARNING):
        sums, opacus_norms = opacus_clipped_sum(module, _tokens(adapter, texts), y, c)
    assert sums.keys() == reference.keys()
    assert sum("lora_B" in n for n in sums) == 12 and sum("lora_A" in n for n in sums) == 12
    scale = max(float(g.abs().max()) for g in reference.values())
    worst = max(float((sums[n] - reference[n]).abs().max()) for n in sums)
    print(f"\nLoRA, C={c:.3g}: max |opacus - autograd| {worst:.2e} (largest entry {scale:.3g})")
    for name, expected in reference.items():
        torch.testing.assert_close(sums[name], expected, rtol=0, atol=1e-5 * scale, msg=name)
        if "lora_" in name:
            assert expected.count_nonzero() > 0, name
    torch.testing.assert_close(opacus_norms.double(), norms.double(), rtol=1e-5, atol=0.0)


def test_dp_fit_lora_step_follows_the_clipped_gradient(
    encoder: FrozenEncoder, lora_batch: tuple[list[str], torch.Tensor]
) -> None:
    """One step of ``dp_fit_lora`` with every record sampled and negligible noise moves each
    parameter as AdamW's first step does with the reference gradient: by ``-lr * sign(g)``."""
    texts, y = lora_batch
    adapter = _lora(encoder, seed=9)
    module = LoraClassifier(adapter)
    c = 0.5
    reference, norms = _autograd_clipped_sum(module, adapter, texts, y, c)
    assert float(norms.min()) > c  # every example clipped
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    # (no epsilon: the accountant's discretised PLD of so little noise would not fit in memory)
    plan = _plan(
        len(texts),
        q=1.0,
        steps=1,
        sigma=1e-9,
        max_grad_norm=c,
        learning_rate=0.01,
        target_epsilon=math.inf,
    )
    lora_lr = 0.002
    monitor = ClipMonitor(c)
    with _ignoring(HOOK_WARNING, SCALAR_WARNING):
        dp_fit_lora(
            adapter,
            texts,
            y,
            plan,
            lora_learning_rate=lora_lr,
            weight_decay=0.0,
            monitor=monitor,
            sample_generator=torch.Generator().manual_seed(1),
            noise_generator=torch.Generator().manual_seed(2),
        )
    assert monitor.sampled == [len(texts)] and monitor.fractions == [1.0]
    clipping = monitor.summary(high=0.9, low=0.05)
    assert clipping["median_norm"] == pytest.approx(float(np.median(norms.numpy())), rel=1e-5)
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = lora_lr if "lora_" in name else plan.learning_rate
        gradient = reference[name] / plan.expected_batch_size
        moved = parameter.detach() - before[name]
        clear = gradient.abs() > 1e-5  # far above rounding and the 1e-9 noise
        if "lora_B" in name or "head" in name:
            assert clear.float().mean() > 0.5, name
            assert moved.count_nonzero() > 0, name
        torch.testing.assert_close(
            moved[clear], -lr * torch.sign(gradient[clear]), rtol=0, atol=lr * 1e-2, msg=name
        )


# -- the clipping monitor and Poisson sampling ----------------------------------------------


@pytest.mark.parametrize("regime", ["tiny", "huge", "moderate"])
def test_clip_monitor_warns_when_the_clipping_norm_is_off(
    news: dict[str, Any], regime: str
) -> None:
    adapter = HeadAdapter(news["labels"], hidden=0, seed=3)
    x, y = adapter.inputs(news["x"][news["train"]]), news["y"][news["train"]]
    _, norms = head_clipped_sum(adapter.head, x, y, 1.0)
    c = {"tiny": 1e-4, "huge": 1e6, "moderate": float(norms.median())}[regime]
    # a small learning rate: over 5 steps the gradient norms stay near where they start
    plan = _plan(len(y), q=64 / len(y), steps=5, sigma=1.0, max_grad_norm=c, learning_rate=1e-3)
    monitor, _ = _fit(adapter.head, x, y, plan, seed=4)
    summary = monitor.summary(high=MONITOR.clipped_high, low=MONITOR.clipped_low)
    fraction = summary["fraction_clipped"]["mean"]
    print(
        f"\nC={c:.4g}: clipped {fraction:.3f} on average, median norm "
        f"{summary['median_norm']:.4g}, warnings {summary['warnings']}"
    )
    assert summary["steps"] == 5 and summary["empty_steps"] == 0
    assert summary["max_grad_norm"] == c
    assert summary["median_norm"] == pytest.approx(float(norms.median()), rel=0.2)
    quantiles = summary["norm_quantiles"]
    assert quantiles["p10"] <= quantiles["p50"] == summary["median_norm"] <= quantiles["p90"]
    assert sum(summary["histogram"]) == 5 and len(summary["per_step"]) == 5
    messages = summary["warnings"]
    if regime == "tiny":
        assert fraction == 1.0 and summary["fraction_clipped"]["min"] == 1.0
        assert len(messages) == 1 and messages[0].startswith("most gradients were clipped")
        assert "C=0.0001" in messages[0] and "raise privacy.max_grad_norm" in messages[0]
    elif regime == "huge":
        assert fraction == 0.0
        assert len(messages) == 1 and messages[0].startswith("almost no gradient was clipped")
        assert "C=1e+06" in messages[0] and "lower privacy.max_grad_norm" in messages[0]
    else:
        assert MONITOR.clipped_low < fraction < MONITOR.clipped_high
        assert messages == []


def test_poisson_sampling_draws_the_expected_batch(news: dict[str, Any]) -> None:
    adapter = HeadAdapter(news["labels"], hidden=0, seed=3)
    x, y = adapter.inputs(news["x"][:400]), news["y"][:400]
    plan = _plan(400, q=0.25, steps=200, sigma=1.0, learning_rate=1e-3)
    monitor, losses = _fit(adapter.head, x, y, plan, seed=11)
    sizes = np.array(monitor.sampled)
    print(
        f"\nq=0.25 over 400 records, 200 steps: batch mean {sizes.mean():.2f} "
        f"(expected 100), std {sizes.std():.2f} (binomial {math.sqrt(400 * 0.25 * 0.75):.2f})"
    )
    assert len(sizes) == 200 and len(losses) == 50  # one loss per expected pass of 4 steps
    assert sizes.mean() == pytest.approx(100, rel=0.03)
    # the batch size varies as a binomial's does: Poisson sampling, not fixed batches
    assert 6.0 < sizes.std() < 11.5
    assert monitor.summary(high=0.9, low=0.05)["mean_batch"] == pytest.approx(sizes.mean())


def test_empty_poisson_batches_still_take_a_noisy_step(news: dict[str, Any]) -> None:
    adapter = HeadAdapter(news["labels"], hidden=0, seed=3)
    x, y = adapter.inputs(news["x"][:400]), news["y"][:400]
    monitor, _ = _fit(adapter.head, x, y, _plan(400, q=1 / 400, steps=40, sigma=1.0), seed=12)
    summary = monitor.summary(high=0.9, low=0.05)
    print(f"\nq=1/400, 40 steps: {summary['empty_steps']} empty, batches {monitor.sampled}")
    assert 0 < summary["empty_steps"] < 40
    assert summary["empty_steps"] == monitor.sampled.count(0)

    # with a vanishing rate every step is empty, and every step still moves every parameter
    fresh = HeadAdapter(news["labels"], hidden=0, seed=3)
    before = {n: p.detach().clone() for n, p in fresh.head.named_parameters()}
    plan = _plan(400, q=1e-9, steps=3, sigma=1.0, learning_rate=1e-3)
    monitor, _ = _fit(fresh.head, x, y, plan, seed=13)
    assert monitor.sampled == [0, 0, 0]
    summary = monitor.summary(high=0.9, low=0.05)
    assert summary["empty_steps"] == 3 and summary["fraction_clipped"]["mean"] is None
    assert summary["median_norm"] is None and summary["warnings"] == []
    for name, parameter in fresh.head.named_parameters():
        assert bool((parameter.detach() != before[name]).all()), name


# -- a DP head learns, and the noise matters ------------------------------------------------


def test_dp_head_learns_and_huge_noise_stops_it(news: dict[str, Any]) -> None:
    train, test = news["train"], news["test"]
    y_train, y_test = news["y"][train], news["y"][test].numpy()
    majority = Counter(y_test.tolist()).most_common(1)[0][1] / len(y_test)
    q, steps = sampling(len(y_train), 64, 15)
    # calibrated by RDP (quick), an upper bound: the tight PLD epsilon is a little below 8
    sigma = calibrate_noise(
        target_epsilon=8.0, delta=DELTA, sampling_rate=q, steps=steps, accountant="rdp"
    )
    results = {}
    for name, noise in (("epsilon 8", sigma), ("sigma 1000", 1000.0)):
        adapter = HeadAdapter(news["labels"], hidden=0, seed=0)
        plan = _plan(len(y_train), q=q, steps=steps, sigma=noise)
        _, losses = _fit(adapter.head, adapter.inputs(news["x"][train]), y_train, plan, seed=14)
        proba = adapter.predict_proba(Features(embeddings=news["x"][test]))
        accuracy = float((proba.argmax(axis=1) == y_test).mean())
        results[name] = (plan.target_epsilon, accuracy, losses)
        print(
            f"\n{name}: sigma {noise:.4g}, q {q:.3f}, {steps} steps, epsilon "
            f"{plan.target_epsilon:.3g}: held-out accuracy {accuracy:.3f} (majority "
            f"{majority:.3f}); loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        )
    eps, accuracy, losses = results["epsilon 8"]
    assert 6.0 < eps <= 8.0
    assert majority < 0.4
    assert accuracy > 0.6
    assert losses[-1] < losses[0]
    _, noisy, _ = results["sigma 1000"]
    assert noisy < majority + 0.1
