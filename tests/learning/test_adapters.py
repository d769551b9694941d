"""Adapters on the real frozen encoder and real data: determinism of training and of the
artefact bytes, learning, warm start with a growing label space, LoRA that trains its own
matrices and leaves the shared base bit-identical, and corrupted artefacts refused."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from silolearn.config import TrainingConfig
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.errors import IntegrityError, InvalidInput
from silolearn.learning.adapters import (
    MAGIC,
    Adapter,
    Features,
    FitReport,
    HeadAdapter,
    LoraAdapter,
    deterministic_torch,
    load_adapter,
    new_adapter,
)
from silolearn.learning.encoder import FrozenEncoder, default_model_dir
from silolearn.learning.metrics import classification_metrics
from silolearn.learning.tuning import C_GRID, assign_folds, fold_count

FloatArray = npt.NDArray[np.float32]
LORA_TOKENS = 32


@pytest.fixture(scope="module", autouse=True)
def _deterministic() -> Iterator[None]:
    """What the training worker does (one thread, deterministic kernels), undone after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    deterministic_torch()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> FrozenEncoder:
    return FrozenEncoder.load(default_model_dir(), expected_sha256=None)


@pytest.fixture(scope="module")
def critics(encoder: FrozenEncoder) -> tuple[FloatArray, list[str]]:
    """150 Rotten Tomatoes snippets (fresh / rotten / plot), embedded at 64 tokens."""
    rows = sample(rotten_tomatoes(), 150, seed=7)
    return encoder.embed([r["text"] for r in rows], max_length=64), [r["label"] for r in rows]


@pytest.fixture(scope="module")
def news(encoder: FrozenEncoder) -> dict[str, Any]:
    """300 BBC articles (5 topics) embedded at 64 tokens: the first 200 in time order train,
    the last 100 test."""
    rows = sample(bbc_news(), 300, seed=3)
    x = encoder.embed([r["text"] for r in rows], max_length=64)
    y = [r["label"] for r in rows]
    return {"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:]}


@pytest.fixture(scope="module")
def lora_data() -> tuple[list[str], list[str]]:
    """24 short real snippets, 12 fresh and 12 rotten, in time order."""
    rows = [r for r in sample(rotten_tomatoes(), 400, seed=13) if len(r["text"]) < 160]
    fresh = [r for r in rows if r["label"] == "fresh"][:12]
    rotten = [r for r in rows if r["label"] == "rotten"][:12]
    picked = sorted(fresh + rotten, key=lambda r: r["timestamp"])
    return [r["text"] for r in picked], [r["label"] for r in picked]


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


LORA_CONFIG = TrainingConfig(max_tokens=LORA_TOKENS, lora_epochs=1)


@pytest.fixture(scope="module")
def lora_run(encoder: FrozenEncoder, lora_data: tuple[list[str], list[str]]) -> dict[str, Any]:
    """One LoRA adapter, with everything snapshotted before and after its fit."""
    texts, labels = lora_data
    base_before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    probe_before = encoder.embed(texts[:3], max_length=LORA_TOKENS)
    adapter = _lora(encoder, seed=3)
    lora_before = {k: v.detach().clone() for k, v in adapter.lora_parameters().items()}
    proba_before = adapter.predict_proba(Features(texts=texts))
    report = adapter.fit(Features(texts=texts), labels, config=LORA_CONFIG, seed=3)
    return {
        "adapter": adapter,
        "report": report,
        "base_before": base_before,
        "probe_before": probe_before,
        "lora_before": lora_before,
        "proba_before": proba_before,
    }


def _predict(adapter: Adapter, x: FloatArray) -> list[str]:
    proba = adapter.predict_proba(Features(embeddings=x))
    return [adapter.labels[int(i)] for i in proba.argmax(axis=1)]


def _flip(data: bytes, position: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[position] ^= 1 << bit
    return bytes(out)


def _header_end(data: bytes) -> int:
    (length,) = struct.unpack_from("<Q", data, len(MAGIC))
    return len(MAGIC) + 8 + int(length)


# -- head -----------------------------------------------------------------------------------


def test_head_training_and_artefact_are_deterministic(
    critics: tuple[FloatArray, list[str]],
) -> None:
    x, y = critics
    labels = sorted(set(y))
    assert labels == ["fresh", "plot", "rotten"]
    config = TrainingConfig(tuning="fixed", epochs=20)

    def trained(seed: int) -> HeadAdapter:
        adapter = HeadAdapter(labels, hidden=0, seed=seed)
        report = adapter.fit(Features(embeddings=x), y, config=config, seed=seed)
        assert report.epochs == 20 and report.examples == 150 and len(report.losses) == 20
        assert report.steps == 20 * 3  # ceil(150 / 64) batches an epoch
        return adapter

    first, again, other = trained(11), trained(11), trained(12)
    data = first.to_bytes()
    assert data == again.to_bytes()
    assert data != other.to_bytes()
    assert data.startswith(MAGIC)
    header = json.loads(data[len(MAGIC) + 8 : _header_end(data)])
    assert header["kind"] == "head" and header["labels"] == labels and header["hidden"] == 0
    assert [t["name"] for t in header["tensors"]] == ["head.bias", "head.weight"]
    assert len(data) == _header_end(data) + 4 * (3 + 3 * 384)

    loaded = load_adapter(data)
    assert isinstance(loaded, HeadAdapter) and loaded.labels == first.labels
    assert loaded.to_bytes() == data
    features = Features(embeddings=x)
    assert np.array_equal(loaded.predict_proba(features), first.predict_proba(features))
    proba = first.predict_proba(features)
    assert proba.dtype == np.float32 and proba.shape == (150, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-5)


def test_tuned_head_is_deterministic_and_reports_what_cross_validation_chose(
    critics: tuple[FloatArray, list[str]],
) -> None:
    x, y = critics
    labels = sorted(set(y))
    texts = [f"text {i % 120}" for i in range(len(y))]  # 30 texts appear twice

    def trained(seed: int) -> tuple[HeadAdapter, FitReport]:
        adapter = HeadAdapter(labels, hidden=0, seed=seed)
        report = adapter.fit(
            Features(texts=texts, embeddings=x), y, config=TrainingConfig(), seed=seed
        )
        return adapter, report

    (first, report), (again, _) = trained(5), trained(5)
    assert first.to_bytes() == again.to_bytes()
    tuning = report.tuning
    assert tuning is not None
    assert tuning["c"] in C_GRID and tuning["grid"] == list(C_GRID)
    assert tuning["folds"] == 5 and len(tuning["cv_scores"]) == len(C_GRID)
    assert 0.0 <= tuning["ece"] <= 1.0
    # the out-of-fold predictions kept for drift monitoring are the ones the folds scored
    oof = report.oof_predicted
    assert oof is not None and len(oof) == len(y)
    right = np.mean([labels[p] == truth for p, truth in zip(oof, y, strict=True)])
    assert right == pytest.approx(tuning["oof_accuracy"], abs=1e-6)
    # both class weightings were cross-validated; the kept one has the better out-of-fold
    # accuracy plus macro-F1
    [other] = tuning["alternatives"]
    assert {tuning["weighting"], other["weighting"]} == {"none", "balanced"}
    assert (
        tuning["oof_accuracy"] + tuning["oof_macro_f1"]
        >= other["oof_accuracy"] + other["oof_macro_f1"]
    )
    # held-out log loss (class-weighted for a balanced fit): the lower the better
    assert tuning["objective"] == "log_loss"
    assert tuning["cv_scores"][C_GRID.index(tuning["c"])] == min(tuning["cv_scores"])
    unweighted = HeadAdapter(labels, hidden=0, seed=5).fit(
        Features(texts=texts, embeddings=x), y, config=TrainingConfig(objective="log_loss"), seed=5
    )
    assert unweighted.tuning is not None and unweighted.tuning["weighting"] == "none"
    assert unweighted.tuning["alternatives"] == []
    strong = HeadAdapter(labels, hidden=0, seed=5).fit(
        Features(texts=texts, embeddings=x),
        y,
        config=TrainingConfig(l2_choice="one_standard_error", objective="log_loss"),
        seed=5,
    )
    assert strong.tuning is not None and strong.tuning["c"] <= unweighted.tuning["c"]
    assert report.examples == 150 and report.epochs == 0


def test_folds_keep_every_copy_of_a_text_together_and_spread_each_label() -> None:
    groups = [f"g{i % 40}" for i in range(200)]  # 40 texts, 5 copies each
    labels = np.array([(i % 40) % 4 for i in range(200)], dtype=np.int64)
    folds = assign_folds(groups, labels, 5, seed=3)
    for g in set(groups):
        assert len({int(folds[i]) for i, h in enumerate(groups) if h == g}) == 1
    for label in range(4):
        per_fold = np.bincount(folds[labels == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 5  # one group of 5 copies at most apart
    assert np.array_equal(folds, assign_folds(groups, labels, 5, seed=3))
    assert fold_count(["a", "a", "b"], labels[:3], 5) == 0  # too few texts to hold out any


def test_a_warm_started_tuned_fit_is_pulled_towards_its_parent(news: dict[str, Any]) -> None:
    x, y = news["x_train"], news["y_train"]
    labels = sorted(set(y))
    config = TrainingConfig()
    parent = HeadAdapter(labels, hidden=0, seed=0)
    parent.fit(Features(embeddings=x), y, config=config, seed=0)
    few = slice(0, 12)  # a round with a dozen new records
    child = new_adapter("head", labels, config=config, seed=1, encoder=None, parent=parent)
    fresh = new_adapter("head", labels, config=config, seed=1, encoder=None, parent=None)
    for adapter in (child, fresh):
        adapter.fit(Features(embeddings=x[few]), y[few], config=config, seed=1)
    start = parent.tensors()["head.weight"]
    assert isinstance(child, HeadAdapter) and child.prior is not None
    assert (child.tensors()["head.weight"] - start).norm() < (
        fresh.tensors()["head.weight"] - start
    ).norm()
    ours = classification_metrics(news["y_test"], _predict(child, news["x_test"]))
    alone = classification_metrics(news["y_test"], _predict(fresh, news["x_test"]))
    assert ours["accuracy"] >= alone["accuracy"]


def test_head_learns_bbc_topics(news: dict[str, Any]) -> None:
    labels = sorted(set(news["y_train"]))
    adapter = HeadAdapter(labels, hidden=0, seed=0)
    report = adapter.fit(
        Features(embeddings=news["x_train"]), news["y_train"], config=TrainingConfig(), seed=0
    )
    assert report.final_loss < 0.5 * np.log(len(labels))  # far below a uniform guess
    predicted = _predict(adapter, news["x_test"])
    metrics = classification_metrics(news["y_test"], predicted)
    majority = Counter(news["y_test"]).most_common(1)[0][1] / len(news["y_test"])
    print(
        f"\nhead (linear) on BBC, 200 train / 100 test at 64 tokens: accuracy "
        f"{metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, majority {majority:.3f}"
    )
    assert majority < 0.35
    assert metrics["accuracy"] > 0.8


def test_mlp_head_trains_and_round_trips(news: dict[str, Any]) -> None:
    labels = sorted(set(news["y_train"]))
    config = TrainingConfig(head_hidden=32)
    adapter = new_adapter("head", labels, config=config, seed=4, encoder=None, parent=None)
    assert isinstance(adapter, HeadAdapter) and adapter.hidden == 32
    adapter.fit(Features(embeddings=news["x_train"]), news["y_train"], config=config, seed=4)
    metrics = classification_metrics(news["y_test"], _predict(adapter, news["x_test"]))
    print(
        f"\nhead (MLP, 32 hidden) on BBC: accuracy {metrics['accuracy']:.3f}, "
        f"macro-F1 {metrics['macro_f1']:.3f}"
    )
    assert metrics["accuracy"] > 0.8

    data = adapter.to_bytes()
    header = json.loads(data[len(MAGIC) + 8 : _header_end(data)])
    assert header["hidden"] == 32
    assert [t["name"] for t in header["tensors"]] == [
        "head.0.bias",
        "head.0.weight",
        "head.2.bias",
        "head.2.weight",
    ]
    loaded = load_adapter(data)
    assert isinstance(loaded, HeadAdapter) and loaded.hidden == 32
    assert loaded.to_bytes() == data
    features = Features(embeddings=news["x_test"])
    assert np.array_equal(loaded.predict_proba(features), adapter.predict_proba(features))


@pytest.mark.parametrize("hidden", [0, 16])
def test_warm_start_copies_parent_rows_and_grows_the_label_space(
    news: dict[str, Any], hidden: int
) -> None:
    pairs = [(v, y) for v, y in zip(news["x_train"], news["y_train"], strict=True)]
    two = [(v, y) for v, y in pairs if y in {"business", "sports"}]
    x = np.stack([v for v, _ in two])
    y = [label for _, label in two]
    assert set(y) == {"business", "sports"}
    config = TrainingConfig(head_hidden=hidden, epochs=10)
    parent = new_adapter(
        "head", ["business", "sports"], config=config, seed=1, encoder=None, parent=None
    )
    parent.fit(Features(embeddings=x), y, config=config, seed=1)
    assert isinstance(parent, HeadAdapter)

    # "politics" sorts between the parent's labels: the parent's row 1 becomes row 2
    child = new_adapter(
        "head",
        ["business", "politics", "sports"],
        config=config,
        seed=2,
        encoder=None,
        parent=parent,
    )
    assert isinstance(child, HeadAdapter) and child.labels == ("business", "politics", "sports")
    theirs, ours = parent.tensors(), child.tensors()
    out = "head.weight" if hidden == 0 else "head.2.weight"
    bias = out.replace("weight", "bias")
    assert ours[out].shape == (3, hidden or 384)
    assert torch.equal(ours[out][0], theirs[out][0]) and torch.equal(ours[bias][0], theirs[bias][0])
    assert torch.equal(ours[out][2], theirs[out][1]) and torch.equal(ours[bias][2], theirs[bias][1])
    # the new label's row is fresh: neither parent row, and finite
    assert not torch.equal(ours[out][1], theirs[out][0])
    assert not torch.equal(ours[out][1], theirs[out][1])
    assert torch.isfinite(ours[out][1]).all()
    if hidden:
        assert torch.equal(ours["head.0.weight"], theirs["head.0.weight"])
        assert torch.equal(ours["head.0.bias"], theirs["head.0.bias"])

    # before any fit the child ranks business vs sports exactly as the parent does
    features = Features(embeddings=news["x_test"])
    p_parent = parent.predict_proba(features)
    p_child = child.predict_proba(features)[:, [0, 2]]
    np.testing.assert_allclose(
        p_child / p_child.sum(axis=1, keepdims=True), p_parent, rtol=0, atol=1e-5
    )

    # warm start is deterministic for a seed
    again = new_adapter(
        "head",
        ["business", "politics", "sports"],
        config=config,
        seed=2,
        encoder=None,
        parent=parent,
    )
    assert again.to_bytes() == child.to_bytes()

    # a parent with another head shape cannot warm-start: the child starts fresh
    other = TrainingConfig(head_hidden=8 if hidden == 0 else 0)
    kwargs: dict[str, Any] = {"config": other, "seed": 2, "encoder": None}
    fresh = new_adapter("head", ["business", "politics", "sports"], parent=None, **kwargs)
    unrelated = new_adapter("head", ["business", "politics", "sports"], parent=parent, **kwargs)
    assert unrelated.to_bytes() == fresh.to_bytes()


def test_labels_outside_the_label_space_are_invalid_input(
    critics: tuple[FloatArray, list[str]],
) -> None:
    x, y = critics
    assert "plot" in y
    adapter = HeadAdapter(["fresh", "rotten"], hidden=0, seed=0)
    before = adapter.to_bytes()
    with pytest.raises(InvalidInput, match="'plot'"):
        adapter.fit(Features(embeddings=x), y, config=TrainingConfig(epochs=1), seed=0)
    assert adapter.to_bytes() == before
    assert InvalidInput.exit_code == 6

    with pytest.raises(InvalidInput, match="at least one label"):
        HeadAdapter([], hidden=0)
    with pytest.raises(InvalidInput, match="unknown adapter kind"):
        new_adapter("svm", ["a"], config=TrainingConfig(), seed=0, encoder=None, parent=None)
    with pytest.raises(ValueError, match="sorted"):
        HeadAdapter(["rotten", "fresh"], hidden=0)


def test_lora_labels_outside_the_label_space_are_invalid_input(
    encoder: FrozenEncoder, lora_data: tuple[list[str], list[str]]
) -> None:
    texts, labels = lora_data
    adapter = _lora(encoder, seed=0)
    with pytest.raises(InvalidInput, match="'plot'"):
        adapter.fit(Features(texts=texts), [*labels[:-1], "plot"], config=LORA_CONFIG, seed=0)


def test_fitting_a_head_emits_no_warning() -> None:
    """In a fresh process (the warning is once per process) with warnings as errors."""
    program = (
        "import numpy as np\n"
        "from silolearn.config import TrainingConfig\n"
        "from silolearn.learning.adapters import Features, HeadAdapter\n"
        "x = np.random.default_rng(0).normal(size=(8, 384)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "HeadAdapter(['a', 'b'], hidden=0).fit(Features(embeddings=x), ['a', 'b'] * 4, "
        "config=TrainingConfig(epochs=1), seed=0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""


# -- lora -----------------------------------------------------------------------------------


def test_lora_weights_change_and_the_base_does_not(
    encoder: FrozenEncoder, lora_run: dict[str, Any], lora_data: tuple[list[str], list[str]]
) -> None:
    adapter: LoraAdapter = lora_run["adapter"]
    before: dict[str, torch.Tensor] = lora_run["lora_before"]
    after = adapter.lora_parameters()
    assert lora_run["report"].steps == 2  # 24 texts in batches of 16, one epoch

    # LoRA on query and value of each of the 6 layers: A and B each
    assert len(before) == 6 * 2 * 2 and before.keys() == after.keys()
    assert {n.split(".")[-4] for n in before} == {"query", "value"}
    for name, initial in before.items():
        if "lora_B" in name:
            assert not initial.any(), name  # B starts at zero: the adapter starts as the base
            assert after[name].count_nonzero() > 0, name
        else:
            assert "lora_A" in name and initial.any(), name
            assert not torch.equal(after[name], initial), name

    # the shared encoder is bit-identical, still frozen, and has no LoRA layers
    base_before: dict[str, torch.Tensor] = lora_run["base_before"]
    base_after = encoder.model.state_dict()
    assert base_after.keys() == base_before.keys()
    for name, tensor in base_before.items():
        assert torch.equal(base_after[name], tensor), name
    assert not any("lora_" in n for n, _ in encoder.model.named_parameters())
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.model.training

    # the adapter's private copy: its non-LoRA parameters are the base's, in other memory
    shared = dict(encoder.model.named_parameters())
    private = {
        n.replace(".base_layer", ""): p
        for n, p in adapter.model.named_parameters()
        if "lora_" not in n
    }
    assert private.keys() == shared.keys()
    for name, parameter in private.items():
        assert torch.equal(parameter, base_before[name]), name
        assert parameter.data_ptr() != shared[name].data_ptr(), name
        assert not parameter.requires_grad, name

    # the encoder embeds exactly as before
    texts, _ = lora_data
    probe = encoder.embed(texts[:3], max_length=LORA_TOKENS)
    assert np.array_equal(probe, lora_run["probe_before"])
    # while the adapter's predictions did move
    proba = adapter.predict_proba(Features(texts=texts))
    assert not np.allclose(proba, lora_run["proba_before"], rtol=0, atol=1e-4)


def test_lora_round_trip_and_determinism(
    encoder: FrozenEncoder, lora_run: dict[str, Any], lora_data: tuple[list[str], list[str]]
) -> None:
    texts, labels = lora_data
    adapter: LoraAdapter = lora_run["adapter"]
    data = adapter.to_bytes()
    header = json.loads(data[len(MAGIC) + 8 : _header_end(data)])
    assert header["kind"] == "lora" and header["base_sha256"] == encoder.sha256
    assert header["max_tokens"] == LORA_TOKENS and header["targets"] == ["query", "value"]
    names = [t["name"] for t in header["tensors"]]
    assert names == sorted(names) and len(names) == 2 + 24
    assert sum(n.startswith("lora.") for n in names) == 24

    loaded = load_adapter(data, encoder=encoder)
    assert isinstance(loaded, LoraAdapter)
    assert loaded.to_bytes() == data
    features = Features(texts=texts)
    np.testing.assert_allclose(
        loaded.predict_proba(features), adapter.predict_proba(features), rtol=0, atol=1e-6
    )
    with pytest.raises(ValueError, match="frozen encoder"):
        load_adapter(data)

    # the same seed trains to the same bytes; another seed does not
    again = _lora(encoder, seed=3)
    again.fit(features, labels, config=LORA_CONFIG, seed=3)
    assert again.to_bytes() == data
    other = _lora(encoder, seed=4)
    other.fit(features, labels, config=LORA_CONFIG, seed=4)
    assert other.to_bytes() != data


def test_lora_warm_start_copies_the_parents_lora_and_head_rows(
    encoder: FrozenEncoder, lora_run: dict[str, Any]
) -> None:
    parent: LoraAdapter = lora_run["adapter"]
    child = new_adapter(
        "lora",
        ["fresh", "plot", "rotten"],
        config=LORA_CONFIG,
        seed=5,
        encoder=encoder,
        parent=parent,
    )
    assert isinstance(child, LoraAdapter)
    theirs, ours = parent.tensors(), child.tensors()
    for name, tensor in theirs.items():
        if name.startswith("lora."):
            assert torch.equal(ours[name], tensor), name
    assert torch.equal(ours["head.weight"][0], theirs["head.weight"][0])
    assert torch.equal(ours["head.weight"][2], theirs["head.weight"][1])
    assert torch.equal(ours["head.bias"][[0, 2]], theirs["head.bias"])


# -- corrupted artefacts --------------------------------------------------------------------


def _head_artefact() -> bytes:
    return HeadAdapter(["business", "sports", "tech"], hidden=0, seed=1).to_bytes()


def test_corrupted_artefacts_are_integrity_errors() -> None:
    data = _head_artefact()
    end = _header_end(data)
    assert load_adapter(data).to_bytes() == data

    # truncated anywhere: in the magic, the length, the header, the tensors
    for cut in (0, 5, len(MAGIC), len(MAGIC) + 4, len(MAGIC) + 8, end - 10, end, end + 7):
        with pytest.raises(IntegrityError):
            load_adapter(data[:cut])
    with pytest.raises(IntegrityError, match="truncated"):
        load_adapter(data[:-1])

    # the wrong magic, or another format version
    with pytest.raises(IntegrityError, match="not a silolearn adapter"):
        load_adapter(b"X" + data[1:])
    with pytest.raises(IntegrityError, match="not a silolearn adapter"):
        load_adapter(data.replace(b"ADAPTER\x001\n", b"ADAPTER\x002\n", 1))
    with pytest.raises(IntegrityError):
        load_adapter(b"")

    # flipped header: the length field, the JSON syntax, the kind, a shape, a tensor name
    flips = [
        len(MAGIC),  # header length off by one
        len(MAGIC) + 5,  # header length enormous
        len(MAGIC) + 8,  # "{" -> "z"
        data.index(b'"head"') + 1,  # kind "iead"
        data.index(b'"shape":[3]') + 9,  # bias shape [2]
        data.index(b'"head.bias"') + 6,  # tensor "head/bias"
    ]
    for position in flips:
        with pytest.raises(IntegrityError):
            load_adapter(_flip(data, position))

    # an artefact whose kind is unknown
    kind = data.replace(b'"kind":"head"', b'"kind":"tree"', 1)
    with pytest.raises(IntegrityError, match="unknown adapter kind 'tree'"):
        load_adapter(kind)
    assert IntegrityError.exit_code == 8


def test_header_with_a_renamed_key_is_an_integrity_error() -> None:
    data = _head_artefact()
    position = data.index(b'"dim"') + 1
    corrupted = _flip(data, position)  # "dim" -> "eim", still valid JSON
    assert corrupted[position : position + 3] == b"eim"
    with pytest.raises(IntegrityError):
        load_adapter(corrupted)


def test_header_with_unsorted_labels_is_an_integrity_error() -> None:
    data = _head_artefact()
    position = data.index(b'"tech"') + 1
    corrupted = _flip(data, position, bit=4)  # labels business, sports, "dech": unsorted
    assert corrupted[position : position + 4] == b"dech"
    with pytest.raises(IntegrityError):
        load_adapter(corrupted)


def test_every_flipped_header_bit_is_an_integrity_error_or_loads() -> None:
    """A single flipped bit anywhere in the magic, length or JSON header is refused as
    IntegrityError or, when it leaves a valid header (a renamed label, a moved offset),
    loads: it never escapes as another exception. Flips the format cannot detect are for
    the registry's SHA-256 of the artefact to catch."""
    data = _head_artefact()
    escaped: list[tuple[int, int, Exception]] = []
    for position in range(_header_end(data)):
        for bit in range(8):
            try:
                load_adapter(_flip(data, position, bit))
            except IntegrityError:
                pass
            except Exception as exc:
                escaped.append((position, bit, exc))
    if escaped:
        counts = Counter(type(exc).__name__ for _, _, exc in escaped)
        print(f"\n{len(escaped)} of {8 * _header_end(data)} header bit flips escape: {counts}")
        raise escaped[0][2]


def test_lora_artefact_on_another_base_is_an_integrity_error(
    encoder: FrozenEncoder, lora_run: dict[str, Any]
) -> None:
    data = lora_run["adapter"].to_bytes()
    other_base = FrozenEncoder(
        model_dir=encoder.model_dir,
        sha256="0" * 64,
        tokenizer=encoder.tokenizer,
        model=encoder.model,
    )
    with pytest.raises(IntegrityError, match="different base model"):
        load_adapter(data, encoder=other_base)
    end = _header_end(data)
    for cut in (end - 3, end + 100, len(data) - 1):
        with pytest.raises(IntegrityError):
            load_adapter(data[:cut], encoder=encoder)
