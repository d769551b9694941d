"""The replay buffer of a tenant: a class-balanced reservoir of records it learned from.

Each round trains on the records new since its parent version plus a sample of this
buffer, so knowledge of earlier rounds is rehearsed instead of overwritten when the label
mix shifts. Every class gets an equal share of the capacity (``capacity // classes``) and
keeps a uniform sample of the records of that class seen so far (reservoir sampling,
Algorithm R, per class); when a new class appears the shares shrink and each class is cut
down at random. Draws come from a seeded generator, so a round's buffer depends only on its
parent's buffer, its new records and the seed.

The buffer holds record ids, labels and timestamps: it is tenant data and is stored sealed
in the tenant's blob store, one snapshot per version (``run/<run_id>/replay``), so rolling
back a version also rolls back its buffer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from silolearn.errors import IntegrityError

FORMAT = 1


@dataclass(frozen=True, slots=True)
class ReplayItem:
    id: str
    label: str
    timestamp: str


class ReplayBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._items: dict[str, list[ReplayItem]] = {}
        self._seen: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._items.values())

    @property
    def classes(self) -> list[str]:
        return sorted(self._seen)

    def counts(self) -> dict[str, int]:
        return {label: len(self._items.get(label, [])) for label in self.classes}

    def ids(self) -> set[str]:
        return {item.id for items in self._items.values() for item in items}

    def _share(self) -> int:
        return self.capacity // max(len(self._seen), 1)

    def offer(self, items: Iterable[ReplayItem], rng: np.random.Generator) -> None:
        """Let the buffer see ``items`` (in time order)."""
        items = list(items)
        for label in sorted({item.label for item in items} - set(self._seen)):
            self._seen[label] = 0
            self._items[label] = []
        share = self._share()
        for label in self.classes:
            bucket = self._items[label]
            if len(bucket) > share:
                keep = np.sort(rng.choice(len(bucket), size=share, replace=False))
                self._items[label] = [bucket[int(i)] for i in keep]
        if share == 0:
            for item in items:
                self._seen[item.label] += 1
            return
        for item in items:
            self._seen[item.label] += 1
            bucket = self._items[item.label]
            if len(bucket) < share:
                bucket.append(item)
                continue
            slot = int(rng.integers(0, self._seen[item.label]))
            if slot < share:
                bucket[slot] = item

    def sample(self, n: int, rng: np.random.Generator) -> list[ReplayItem]:
        """Up to ``n`` items, as balanced across classes as the buffer allows."""
        queues = {
            label: [self._items[label][int(i)] for i in rng.permutation(len(self._items[label]))]
            for label in self.classes
            if self._items.get(label)
        }
        out: list[ReplayItem] = []
        depth = 0
        while len(out) < n and any(depth < len(q) for q in queues.values()):
            for label in sorted(queues):
                if depth < len(queues[label]) and len(out) < n:
                    out.append(queues[label][depth])
            depth += 1
        return out

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "capacity": self.capacity,
            "seen": self._seen,
            "items": {
                label: [[i.id, i.timestamp] for i in self._items[label]] for label in self.classes
            },
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, capacity: int | None = None) -> ReplayBuffer:
        """A stored buffer; with ``capacity`` it is resized (cut down at the next offer)."""
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}")
            buffer = cls(int(document["capacity"]) if capacity is None else capacity)
            buffer._seen = {str(k): int(v) for k, v in document["seen"].items()}
            buffer._items = {
                str(label): [ReplayItem(str(i), str(label), str(t)) for i, t in entries]
                for label, entries in document["items"].items()
            }
            for label in buffer._seen:
                buffer._items.setdefault(label, [])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(f"malformed replay buffer: {exc!r}") from None
        return buffer
