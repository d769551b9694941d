"""Predictions: the shared frozen encoder and each tenant's *active* adapter version.

The base model's digest is checked when serving starts (I3). A prediction uses whatever
version is active when it is asked (a promotion or rollback takes effect on the next call)
and says which version answered. Predictions are audited in aggregate, one event per call
with the count and the version, never the texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from silolearn.errors import InvalidInput, NotFoundError
from silolearn.learning.adapters import Adapter, Features, load_adapter
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

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probabilities": self.probabilities, "version": self.version}


class Predictor:
    """Serves every tenant of one opened workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        verify_base_model(ws, when="serve.start")
        record = base_model_record(ws)
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
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("predict takes a list of texts")
        if not texts:
            raise InvalidInput("nothing to predict: give at least one text")
        if len(texts) > MAX_TEXTS:
            raise InvalidInput(f"at most {MAX_TEXTS} texts per call, got {len(texts)}")
        limit = self.ws.settings.ingest.max_text_bytes
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"text {i + 1} is not a string")
            if not text.strip():
                raise InvalidInput(f"text {i + 1} is empty")
            if len(text.encode()) > limit:
                raise InvalidInput(f"text {i + 1} is longer than {limit} bytes")
        version, adapter, max_tokens = self._adapter(tenant)
        if adapter.needs_text:
            features = Features(texts=list(texts))
        else:
            features = Features(embeddings=self._encoder.embed(list(texts), max_length=max_tokens))
        proba = adapter.predict_proba(features)
        self.ws.audit.append(
            "predict", tenant=tenant, obj=f"v{version}", details={"count": len(texts)}
        )
        out = []
        for row in proba:
            best = int(row.argmax())
            out.append(
                Prediction(
                    label=adapter.labels[best],
                    probabilities={
                        label: round(float(p), 6)
                        for label, p in zip(adapter.labels, row, strict=True)
                    },
                    version=version,
                )
            )
        return out
