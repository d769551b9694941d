"""I3: the frozen base encoder, its recorded digest, and the per-tenant embedding cache."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from silolearn import Workspace
from silolearn.datasets import bbc_news, rotten_tomatoes, sample
from silolearn.errors import ConflictError, DecryptionError, IntegrityError, NotFoundError
from silolearn.learning.encoder import (
    BaseModelNotRecorded,
    BaseModelTampered,
    EmbeddingCache,
    FrozenEncoder,
    base_model_record,
    default_model_dir,
    model_digest,
    record_base_model,
    verify_base_model,
)


@pytest.fixture(scope="module")
def encoder() -> FrozenEncoder:
    return FrozenEncoder.load(default_model_dir(), expected_sha256=None)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the base model's files, for tests that tamper with them."""
    return Path(shutil.copytree(default_model_dir(), tmp_path_factory.mktemp("base") / "model"))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real texts of varied length, one longer than the 256 tokens the encoder keeps."""
    short = [row["text"] for row in sample(rotten_tomatoes(), 7, seed=11)]
    return [*short, bbc_news()[0]["text"]]


def _actions(ws: Workspace, action: str) -> list[dict[str, object]]:
    return [event.details for event in ws.audit.events(action=action)]


def test_I3_base_model_checksum_recorded_and_tamper_refused(
    ws: Workspace, model_copy: Path
) -> None:
    digest = record_base_model(ws, model_copy)
    assert digest == model_digest(default_model_dir())
    record = base_model_record(ws)
    assert record.path == model_copy.resolve() and record.sha256 == digest
    assert verify_base_model(ws, when="train.before") == digest
    assert {"when": "train.before", "ok": True} in _actions(ws, "base_model.check")

    weights = model_copy / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))

    with pytest.raises(BaseModelTampered) as caught:
        verify_base_model(ws, when="serve.start")
    assert isinstance(caught.value, IntegrityError) and caught.value.exit_code == 8
    assert f"expected sha256 {digest[:12]}" in caught.value.message
    assert caught.value.details["actual"] != digest
    assert {"when": "serve.start", "ok": False} in _actions(ws, "base_model.check")
    (tampered,) = _actions(ws, "base_model.tampered")
    assert tampered["expected"] == digest and tampered["actual"] == caught.value.details["actual"]
    with pytest.raises(BaseModelTampered, match="refusing to load"):
        FrozenEncoder.load(model_copy, expected_sha256=digest)
    # the frozen base cannot be swapped for the tampered files by recording them again
    with pytest.raises(ConflictError, match="frozen"):
        record_base_model(ws, model_copy)
    assert base_model_record(ws).sha256 == digest
    assert _actions(ws, "base_model.refused")

    weights.rename(weights.with_suffix(".moved"))
    with pytest.raises(BaseModelTampered, match="FileNotFoundError"):
        verify_base_model(ws, when="train.after")
    assert len(_actions(ws, "base_model.tampered")) == 2


def test_I3_verify_without_a_recorded_base_is_refused(ws: Workspace) -> None:
    ws.conn.execute("DELETE FROM base_model")
    with pytest.raises(BaseModelNotRecorded, match="record_base_model") as caught:
        verify_base_model(ws, when="serve.start")
    assert caught.value.exit_code == 8
    assert {"when": "serve.start", "ok": False, "problem": "not recorded"} in _actions(
        ws, "base_model.check"
    )


def test_model_digest_covers_behaviour_files_only(tmp_path: Path) -> None:
    root = tmp_path / "model"
    (root / "1_Pooling").mkdir(parents=True)
    files = {
        "model.safetensors": b"weights",
        "config.json": b"{}",
        "vocab.txt": b"[PAD]\n",
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "README.md").write_text("docs")
    listing = "".join(
        f"{name}\x00{hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items())
    )
    digest = model_digest(root)
    assert digest == hashlib.sha256(listing.encode()).hexdigest()

    (root / "README.md").write_text("other docs")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs")
    assert model_digest(root) == digest
    (root / "1_Pooling" / "config.json").write_bytes(b'{"pooling_mode_cls_token": true}')
    assert model_digest(root) != digest
    (root / "1_Pooling" / "config.json").write_bytes(files["1_Pooling/config.json"])
    (root / "extra.bin").write_bytes(b"")
    assert model_digest(root) != digest
    (root / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        model_digest(root)


def test_embeddings_match_sentence_transformers(encoder: FrozenEncoder, texts: list[str]) -> None:
    # a reference only for this test: sentence-transformers is not a dependency of silolearn
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(default_model_dir()), device="cpu").encode(
        texts, convert_to_numpy=True
    )
    ours = encoder.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == (len(texts), 384)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=0, atol=1e-5)


def test_tokens_are_transformers_tokens_at_every_length(
    encoder: FrozenEncoder, texts: list[str]
) -> None:
    """The encoder tokenizes without transformers (``silolearn.learning.bert``): the same ids
    and attention mask as transformers' tokenizer of the model, truncated at any length."""
    from silolearn.learning.bert import BertTokens

    tokens = BertTokens(default_model_dir())
    odd = ["", "naïve café — 東京 😀", "a " * 600, "UPPER and lower\tand\nlines"]
    every = [*texts, *odd]
    for max_length in (2, 16, 64, 128, 256, 512):
        reference = encoder.tokenizer(
            every, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        ids, mask = tokens(every, max_length)
        assert torch.equal(ids, reference["input_ids"]), max_length
        assert torch.equal(mask, reference["attention_mask"]), max_length


def test_token_states_match_transformers(encoder: FrozenEncoder, texts: list[str]) -> None:
    """The plain-torch forward computes transformers' ``last_hidden_state`` (float rounding
    apart) on the non-padded tokens of a padded batch."""
    from silolearn.learning.bert import Bert

    batch = encoder.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        reference = encoder.model(**batch).last_hidden_state
        ours = Bert(default_model_dir(), "model.safetensors")(
            batch["input_ids"], batch["attention_mask"]
        )
    real = batch["attention_mask"].bool()
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours[real], reference[real], rtol=0, atol=1e-4)


def test_embedding_does_not_import_transformers() -> None:
    """Every worker embeds; importing transformers would cost each about 2.5 s of CPU."""
    script = (
        "import sys\n"
        "from silolearn.learning.encoder import FrozenEncoder, default_model_dir\n"
        "e = FrozenEncoder.load(default_model_dir(), expected_sha256=None)\n"
        "assert e.embed(['a text']).shape == (1, 384)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'peft')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_embeddings_are_deterministic_and_independent_of_batching(
    encoder: FrozenEncoder, texts: list[str]
) -> None:
    first = encoder.embed(texts)
    assert np.array_equal(first, encoder.embed(texts))
    alone = np.stack([encoder.embed([text])[0] for text in texts])
    np.testing.assert_allclose(alone, first, rtol=0, atol=1e-5)
    reversed_small_batches = encoder.embed(texts[::-1], batch_size=3)[::-1]
    np.testing.assert_allclose(reversed_small_batches, first, rtol=0, atol=1e-5)
    assert encoder.embed([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.embed("one string")


def test_I3_the_base_is_frozen(encoder: FrozenEncoder, texts: list[str]) -> None:
    model = encoder.model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    before = {name: t.clone() for name, t in model.state_dict().items()}
    # what embed() runs on is the same weights, and embedding leaves them as they were
    weights = {name: t.clone() for name, t in encoder.weights.items()}
    assert set(before) <= set(weights)
    assert all(torch.equal(before[name], weights[name]) for name in before)
    encoder.embed(texts)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(torch.equal(weights[name], t) for name, t in encoder.weights.items())


def test_embedding_cache_is_per_tenant_encrypted_and_per_model(
    ws: Workspace, encoder: FrozenEncoder, texts: list[str]
) -> None:
    ws.create_tenant("acme")
    ws.create_tenant("beta")
    acme = ws.scope("acme")
    keys = [acme.keyed_hash("rid", f"r{i}") for i in range(len(texts))]
    vectors = encoder.embed(texts)
    cache = EmbeddingCache(acme, encoder.sha256)
    assert cache.get_many(keys) == {}
    cache.put_many(keys, vectors)
    cache.save()

    reopened = EmbeddingCache(ws.scope("acme"), encoder.sha256)
    found = reopened.get_many([*keys, b"\x00" * 32])
    assert list(found) == keys and len(reopened) == len(keys)
    assert all(np.array_equal(found[k], v) for k, v in zip(keys, vectors, strict=True))
    with pytest.raises(ValueError, match="read-only"):
        found[keys[0]][0] = 0.0
    with pytest.raises(ValueError, match="384-dimensional"):
        reopened.put_many(keys[:1], np.zeros((1, 8), dtype=np.float32))
    # another base model never reuses these embeddings
    assert EmbeddingCache(ws.scope("acme"), "0" * 64).get_many(keys) == {}

    # another tenant neither finds the blob nor can open its file with its own key
    beta = ws.scope("beta")
    assert EmbeddingCache(beta, encoder.sha256).get_many(keys) == {}
    with pytest.raises(NotFoundError):
        beta.blobs.get(cache.name)
    info = acme.blobs.info(cache.name)
    (sealed,) = [p for p in acme.blobs.iter_files() if p.name.startswith(info.object_id)]
    beta_key = ws.tenants.data_key(ws.tenants.get("beta"))
    with pytest.raises(DecryptionError):
        beta_key.open(sealed.read_bytes(), kind="blob", object_id=info.object_id)

    # nothing of a vector is stored in clear anywhere in the workspace
    ws.audit.checkpoint()
    needles = [vector.astype("<f4").tobytes()[:16] for vector in vectors]
    for path in sorted(ws.path.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path


def test_I3_init_records_the_installed_base_model(ws: Workspace) -> None:
    record = base_model_record(ws)
    assert record.path == default_model_dir()
    assert record.sha256 == model_digest(default_model_dir())
    assert verify_base_model(ws, when="test") == record.sha256
    assert ws.audit.events(action="base_model.record")
