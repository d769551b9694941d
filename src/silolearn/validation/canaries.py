"""Synthetic canaries a training run inserts so its gates can measure memorisation.

Two kinds, drawn from one public candidate space R: sequences of ``LENGTH`` words, each one
of ``VOCABULARY_SIZE`` lower-case English words, so ``|R| = 4096**6 = 2**72``.

- *Secret* canaries (Carlini et al. 2019, "The Secret Sharer"): ``k`` sequences, each with a
  label drawn from the tenant's labels, inserted ``copies`` times. The gate ranks each one's
  loss among same-template alternatives: its exposure.
- *Audit* canaries (Steinke, Nasr, Jagielski 2023, "Privacy Auditing with One (1) Training
  Run"): ``m`` sequences, each included independently with probability 1/2; the gate guesses
  which were included from their losses and turns the correct guesses into an empirical
  epsilon lower bound.

Canaries live only in the run: the training worker draws them, trains on them beside the
tenant's records, and returns them with the artefact; the coordinator seals them in the
tenant's blob ``run/<run_id>/canaries``. They are never written to the train store, never
counted in metrics and never served. The draw is keyed by the tenant's secret token key, the
seed and the version number, so a run stays reproducible (I4) and nobody without the key can
predict a canary.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LENGTH = 6

VOCABULARY_SIZE = 4096


@functools.cache
def vocabulary() -> tuple[str, ...]:
    """4,096 lower-case English words of 4-9 letters: a fixed, seeded choice among the whole
    words of the frozen base model's WordPiece vocabulary (public, shipped offline with the
    model; the same for every tenant and every process).

    Real words rather than made-up ones: the encoder maps sequences of nonsense syllables
    close together, so a head cannot single one out without also favouring its neighbours;
    with real words the same-template alternatives spread over the embedding space. Measured
    with 8 canaries on ~1,000 movie snippets: normal runs' top exposure 4.4-6.0 bits with
    real words against 3.7-8.8 with 64 nonsense syllables, and leaky runs 10-47 bits."""
    from silolearn.learning.encoder import default_model_dir

    text = (default_model_dir() / "vocab.txt").read_text(encoding="utf-8")
    words = sorted(
        {
            w
            for w in text.split("\n")
            if w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 9
        }
    )
    picked = np.random.default_rng(20231).choice(len(words), size=VOCABULARY_SIZE, replace=False)
    return tuple(sorted(words[int(i)] for i in picked))


SPACE_SIZE = VOCABULARY_SIZE**LENGTH


def space_bits() -> float:
    return math.log2(SPACE_SIZE)


def text_of(tokens: np.ndarray[Any, Any]) -> str:
    words = vocabulary()
    return " ".join(words[int(t)] for t in tokens)


def sample_texts(rng: np.random.Generator, count: int, *, exclude: set[str]) -> list[str]:
    """``count`` distinct sequences drawn uniformly from R, none of them in ``exclude``."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < count:
        for row in rng.integers(0, VOCABULARY_SIZE, size=(count - len(out), LENGTH)):
            text = text_of(row)
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def alternatives_pool(tenant_id: str, count: int) -> list[str]:
    """The tenant's fixed sample of ``count`` sequences of R against which canaries are ranked.

    Fixed per tenant (and public: it is no secret which sequences are the yardstick), so
    that the gate worker embeds it once and keeps the embeddings with the evaluator's
    cache. Inserted canaries are secret draws from all of R; one that falls in the pool
    (chance about count / 2^72) is dropped from the pool for that run."""
    digest = hashlib.sha256(f"canary-alternatives\x00{tenant_id}\x00{count}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "big"))
    return sample_texts(rng, count, exclude=set())


def keyed_rng(key: bytes, *parts: object) -> np.random.Generator:
    """A generator keyed by a tenant secret: deterministic for the key, unpredictable without."""
    message = "\x00".join(str(p) for p in parts).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class Canaries:
    """The canaries of one run; ``included`` is per audit canary."""

    secret_texts: list[str] = field(default_factory=list)
    secret_labels: list[str] = field(default_factory=list)
    copies: int = 1
    audit_texts: list[str] = field(default_factory=list)
    audit_labels: list[str] = field(default_factory=list)
    included: list[bool] = field(default_factory=list)

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        labels: list[str],
        *,
        secret: int,
        copies: int,
        audit: int,
    ) -> Canaries:
        if not labels:
            return cls()
        texts = sample_texts(rng, secret + audit, exclude=set())
        chosen = [labels[int(i)] for i in rng.integers(0, len(labels), size=secret + audit)]
        included = [bool(b) for b in rng.integers(0, 2, size=audit)]
        return cls(
            secret_texts=texts[:secret],
            secret_labels=chosen[:secret],
            copies=copies,
            audit_texts=texts[secret:],
            audit_labels=chosen[secret:],
            included=included,
        )

    def training_rows(self) -> tuple[list[str], list[str]]:
        """Texts and labels the run trains on: each secret canary ``copies`` times, and the
        included audit canaries once."""
        texts = [t for t in self.secret_texts for _ in range(self.copies)]
        labels = [y for y in self.secret_labels for _ in range(self.copies)]
        for text, label, inside in zip(
            self.audit_texts, self.audit_labels, self.included, strict=True
        ):
            if inside:
                texts.append(text)
                labels.append(label)
        return texts, labels

    def summary(self) -> dict[str, Any]:
        """What lineage may say about the canaries: counts, never the sequences."""
        return {
            "secret": len(self.secret_texts),
            "copies": self.copies,
            "audit": len(self.audit_texts),
            "audit_included": sum(self.included),
            "rows": len(self.secret_texts) * self.copies + sum(self.included),
            "space_bits": round(space_bits(), 3),
        }

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "secret_texts": self.secret_texts,
                "secret_labels": self.secret_labels,
                "copies": self.copies,
                "audit_texts": self.audit_texts,
                "audit_labels": self.audit_labels,
                "included": self.included,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Canaries:
        raw = json.loads(data)
        return cls(
            secret_texts=list(raw["secret_texts"]),
            secret_labels=list(raw["secret_labels"]),
            copies=int(raw["copies"]),
            audit_texts=list(raw["audit_texts"]),
            audit_labels=list(raw["audit_labels"]),
            included=[bool(b) for b in raw["included"]],
        )
