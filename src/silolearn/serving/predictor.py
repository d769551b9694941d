"""Predictions: the shared frozen encoder and each tenant's serving adapter versions.

The base model's digest is checked when serving starts (I3). A prediction uses whatever
version is active when it is asked (a promotion or rollback takes effect on the next call),
or the version a request was assigned to while a canary rollout runs (``ServingKey``), and
says which version answered. Predictions are audited in aggregate, one event per call
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
ENCODE_BATCH = 8
"""Texts per encoder forward pass within a flush. ``embed`` sorts a flush's texts by length,
so passes of a few texts of like length pad little; one pass over the whole flush pads every
text to its longest (about 2x the tokens on short texts of mixed lengths)."""

ServingKey = str | tuple[str, int]
"""What answers a request: a tenant (its active version), or ``(tenant, version)`` (that
version while it serves, active or canary; the active one once it no longer does)."""


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
        self._loaded: dict[tuple[str, int], tuple[int, str, Adapter, int]] = {}
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

    def _adapter(self, key: ServingKey) -> tuple[int, Adapter, int]:
        tenant, wanted = (key, None) if isinstance(key, str) else key
        registry = AdapterRegistry(self._scope(tenant))
        chosen = None
        if wanted is not None:
            asked = registry.get(wanted)
            chosen = asked if asked.status in ("active", "canary") else None
        chosen = chosen or registry.active()
        if chosen is None:
            raise NotFoundError(
                f"tenant {tenant!r} has no active adapter: train one with "
                f"`silolearn train {tenant}`",
                tenant=tenant,
            )
        loaded = self._loaded.get((tenant, chosen.version))
        if loaded is None or loaded[1] != chosen.sha256:
            adapter = load_adapter(registry.load_artefact(chosen), encoder=self._encoder)
            max_tokens = int(chosen.lineage.get("config", {}).get("max_tokens", 128))
            loaded = (chosen.version, chosen.sha256, adapter, max_tokens)
            self._loaded[(tenant, chosen.version)] = loaded
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
        self, requests: Sequence[tuple[ServingKey, Sequence[str]]]
    ) -> list[list[Prediction] | SiloError]:
        """Answer several requests of any tenants together (a micro-batch of the service):
        one encoder forward pass over every text whose tenant's head truncates alike, then
        each version's head on its own requests' rows only; a LoRA adapter runs its own
        encoder copy over its texts, once per adapter. Each request is answered by the
        version its key names as of when the batch started (requests of a canary and of
        the stable version never share a head), or gets the typed error that refused it (no
        active version). Nothing is audited here: the caller audits each request with who asked.
        Texts are checked by the caller (``check_texts``)."""
        resolved: dict[ServingKey, tuple[int, Adapter, int] | SiloError] = {}
        for key, _ in requests:
            if key not in resolved:
                try:
                    resolved[key] = self._adapter(key)
                except SiloError as exc:
                    resolved[key] = exc
        proba: dict[int, FloatArray] = {}
        embedded: dict[int, FloatArray] = {}
        by_length: dict[int, list[int]] = {}
        by_lora: dict[ServingKey, list[int]] = {}
        for i, (key, _) in enumerate(requests):
            entry = resolved[key]
            if isinstance(entry, SiloError):
                continue
            if entry[1].needs_text:
                by_lora.setdefault(key, []).append(i)
            else:
                by_length.setdefault(entry[2], []).append(i)
        for max_tokens, members in by_length.items():
            texts = [t for i in members for t in requests[i][1]]
            embeddings = self._encoder.embed(texts, batch_size=ENCODE_BATCH, max_length=max_tokens)
            start = 0
            for i in members:
                n = len(requests[i][1])
                adapter = cast(tuple[int, Adapter, int], resolved[requests[i][0]])[1]
                embedded[i] = embeddings[start : start + n]
                proba[i] = adapter.predict_proba(Features(embeddings=embedded[i]))
                start += n
        for key, members in by_lora.items():
            adapter = cast(tuple[int, Adapter, int], resolved[key])[1]
            rows = adapter.predict_proba(
                Features(texts=[t for i in members for t in requests[i][1]])
            )
            start = 0
            for i in members:
                proba[i] = rows[start : start + len(requests[i][1])]
                start += len(requests[i][1])
        answers: list[list[Prediction] | SiloError] = []
        for i, (key, _) in enumerate(requests):
            entry = resolved[key]
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
