"""Predictions: the shared frozen encoder and each tenant's *active* adapter version.

The base model's digest is checked when serving starts (I3). A prediction uses whatever
version is active when it is asked (a promotion or rollback takes effect on the next call)
and says which version answered. Predictions are audited in aggregate, one event per call
with the count and the version, never the texts (``predict``; the service's micro-batches
go through ``answer_batch``, and the service audits each request with who asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from silolearn.errors import InvalidInput, NotFoundError, SiloError
from silolearn.learning.adapters import Adapter, Features, FloatArray, load_adapter
from silolearn.learning.encoder import FrozenEncoder, base_model_record, verify_base_model
from silolearn.registry.versions import AdapterRegistry
from silolearn.storage.scope import Purpose, TenantScope

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

MAX_TEXTS = 10_000


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    version: int
    embedding: FloatArray | None = field(default=None, compare=False, repr=False)
    """The frozen encoder's sentence embedding of the text (a head adapter's input; ``None``
    for a LoRA adapter, which embeds with its own encoder copy): the label queue spreads its
    picks with it. Never part of an answer."""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probabilities": self.probabilities, "version": self.version}


class Predictor:
    """Serves every tenant of one opened workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        verify_base_model(ws, when="serve.start")
        record = base_model_record(ws)
        self.base_model_sha256 = record.sha256
        self._encoder = FrozenEncoder.load(record.path, expected_sha256=record.sha256)
        self._loaded: dict[str, tuple[int, str, Adapter, int]] = {}
        self._scopes: dict[str, tuple[str, int, TenantScope]] = {}

    def _scope(self, tenant: str) -> TenantScope:
        """The tenant's serving scope, opened (and audited) once, and again only after the
        tenant was recreated or its data key rotated."""
        info = self.ws.tenants.get(tenant)
        cached = self._scopes.get(tenant)
        if cached is None or cached[0] != info.id or cached[1] != info.dek_version:
            cached = (info.id, info.dek_version, self.ws.scope(tenant, purpose=Purpose.SERVING))
            self._scopes[tenant] = cached
        return cached[2]

    def _adapter(self, tenant: str) -> tuple[int, Adapter, int]:
        registry = AdapterRegistry(self._scope(tenant))
        active = registry.active()
        if active is None:
            raise NotFoundError(
                f"tenant {tenant!r} has no active adapter: train one with "
                f"`silolearn train {tenant}`",
                tenant=tenant,
            )
        loaded = self._loaded.get(tenant)
        if loaded is None or loaded[0] != active.version or loaded[1] != active.sha256:
            adapter = load_adapter(registry.load_artefact(active), encoder=self._encoder)
            max_tokens = int(active.lineage.get("config", {}).get("max_tokens", 128))
            loaded = (active.version, active.sha256, adapter, max_tokens)
            self._loaded[tenant] = loaded
        return loaded[0], loaded[2], loaded[3]

    def predict(self, tenant: str, texts: Sequence[str]) -> list[Prediction]:
        check_texts(texts, max_text_bytes=self.ws.settings.ingest.max_text_bytes)
        answer = self.answer_batch([(tenant, list(texts))])[0]
        if isinstance(answer, SiloError):
            raise answer
        self.ws.audit.append(
            "predict", tenant=tenant, obj=f"v{answer[0].version}", details={"count": len(texts)}
        )
        return answer

    def answer_batch(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> list[list[Prediction] | SiloError]:
        """Answer several requests of any tenants together (a micro-batch of the service):
        one encoder forward pass over every text whose tenant's head truncates alike, then
        each tenant's head on its own rows only; a LoRA adapter runs its own encoder copy
        over its tenant's texts, once per adapter. Each request is answered by the version
        active when the batch started, or gets the typed error that refused it (no active
        version). Nothing is audited here: the caller audits each request with who asked.
        Texts are checked by the caller (``check_texts``)."""
        resolved: dict[str, tuple[int, Adapter, int] | SiloError] = {}
        for tenant, _ in requests:
            if tenant not in resolved:
                try:
                    resolved[tenant] = self._adapter(tenant)
                except SiloError as exc:
                    resolved[tenant] = exc
        proba: dict[int, FloatArray] = {}
        embedded: dict[int, FloatArray] = {}
        by_length: dict[int, list[int]] = {}
        by_lora: dict[str, list[int]] = {}
        for i, (tenant, _) in enumerate(requests):
            entry = resolved[tenant]
            if isinstance(entry, SiloError):
                continue
            if entry[1].needs_text:
                by_lora.setdefault(tenant, []).append(i)
            else:
                by_length.setdefault(entry[2], []).append(i)
        for max_tokens, members in by_length.items():
            texts = [t for i in members for t in requests[i][1]]
            embeddings = self._encoder.embed(texts, batch_size=len(texts), max_length=max_tokens)
            start = 0
            for i in members:
                n = len(requests[i][1])
                adapter = cast(tuple[int, Adapter, int], resolved[requests[i][0]])[1]
                embedded[i] = embeddings[start : start + n]
                proba[i] = adapter.predict_proba(Features(embeddings=embedded[i]))
                start += n
        for tenant, members in by_lora.items():
            adapter = cast(tuple[int, Adapter, int], resolved[tenant])[1]
            rows = adapter.predict_proba(
                Features(texts=[t for i in members for t in requests[i][1]])
            )
            start = 0
            for i in members:
                proba[i] = rows[start : start + len(requests[i][1])]
                start += len(requests[i][1])
        answers: list[list[Prediction] | SiloError] = []
        for i, (tenant, _) in enumerate(requests):
            entry = resolved[tenant]
            if isinstance(entry, SiloError):
                answers.append(entry)
            else:
                answers.append(_predictions(entry[1].labels, proba[i], entry[0], embedded.get(i)))
        return answers


def check_texts(texts: object, *, max_text_bytes: int, max_texts: int = MAX_TEXTS) -> None:
    """Refuse what is not a non-empty list of at most ``max_texts`` non-blank strings of at
    most ``max_text_bytes`` bytes each (``InvalidInput`` naming the first bad one)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidInput("predict takes a list of texts")
    if not texts:
        raise InvalidInput("nothing to predict: give at least one text")
    if len(texts) > max_texts:
        raise InvalidInput(f"at most {max_texts} texts per call, got {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"text {i + 1} is not a string")
        if not text.strip():
            raise InvalidInput(f"text {i + 1} is empty")
        if len(text.encode()) > max_text_bytes:
            raise InvalidInput(f"text {i + 1} is longer than {max_text_bytes} bytes")


def _predictions(
    labels: Sequence[str], proba: FloatArray, version: int, embeddings: FloatArray | None
) -> list[Prediction]:
    out = []
    for i, row in enumerate(proba):
        best = int(row.argmax())
        out.append(
            Prediction(
                label=labels[best],
                probabilities={
                    label: round(float(p), 6) for label, p in zip(labels, row, strict=True)
                },
                version=version,
                embedding=None if embeddings is None else embeddings[i],
            )
        )
    return out
