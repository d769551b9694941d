"""The contamination check between training and evaluation data (invariant I5).

Every training-bound record is checked, before it is stored, against the tenant's eval
records and the workspace's benchmark registry: a record whose word-5-gram Jaccard
similarity with any of them reaches the threshold (0.8 by default) is not stored. When eval
records arrive (ingested or registered), stored training records that match them are moved
to quarantine, so the check holds in either order of arrival.

Candidates come from MinHash-LSH and are verified by exact Jaccard on the stored shingle
hashes, so a decision is exact, not an estimate. The indexes are persisted as encrypted
segments (an index of shingles leaks membership and, by dictionary attack, text): a batch
appends a segment in the same transaction as its records, a restart loads segments without
touching the text, and segments are compacted into one as they accumulate.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from silolearn.audit.log import utcnow
from silolearn.config import ContaminationConfig
from silolearn.errors import ConfigError
from silolearn.ingest.minhash import LSHIndex, MinHashConfig, MinHasher, shingle_hashes_many
from silolearn.security.envelope import DataKey
from silolearn.storage.scope import PreparedRecord, TenantScope

REGISTRY = "registry"
"""Owner and side of the workspace benchmark registry's index segments."""

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

COMPACT_AFTER = 16
"""Merge an owner's segments into one when more than this many have accumulated."""

Shingles = npt.NDArray[np.uint32]


def minhash_config(settings: ContaminationConfig) -> MinHashConfig:
    return MinHashConfig(
        num_perm=settings.num_perm,
        ngram=settings.ngram,
        unit=settings.unit,
        threshold=settings.threshold,
    )


@dataclass(frozen=True, slots=True)
class Match:
    """A training-bound record found to copy an evaluation record."""

    record_id: str
    eval_seq: int
    similarity: float
    source: str
    """``eval`` (the tenant's eval store) or ``registry`` (a workspace benchmark set)."""


class ContaminationCheck(Protocol):
    def check_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[Match | None]:
        """For each training-bound record, the eval record it copies, or None."""
        ...

    def check_against(
        self,
        scope: TenantScope,
        conn: sqlite3.Connection,
        batch: list[PreparedRecord],
        evals: list[PreparedRecord],
    ) -> list[Match | None]:
        """``check_train`` against only these just-stored eval records."""
        ...

    def nearest_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[int | None]:
        """For each record, the seq of a stored training record it nearly copies, or None."""
        ...

    def on_train_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> None:
        """Index stored training records, so later eval records can find them."""
        ...

    def on_eval_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[tuple[int, int, float]]:
        """Index new eval records and quarantine stored training records that copy them;
        returns (train seq, eval seq, similarity) for each record moved."""
        ...

    def forget(self, batch: list[PreparedRecord]) -> None:
        """Drop per-record working state once a batch is decided."""
        ...

    def reset(self) -> None:
        """Drop cached state after a rolled-back transaction."""
        ...


class SegmentStore:
    """Encrypted index segments of one owner and side, with an in-process cache that
    loads only the segments it has not seen yet."""

    def __init__(self, config: MinHashConfig) -> None:
        self.config = config
        self.hasher = MinHasher(config)
        """Signatures for queries: computed once per batch for all of an owner's segments."""
        self._cache: dict[tuple[str, str], tuple[int, list[LSHIndex]]] = {}
        self.segments_loaded = 0

    def load(self, conn: sqlite3.Connection, key: DataKey, owner: str, side: str) -> list[LSHIndex]:
        last, indexes = self._cache.get((owner, side), (0, []))
        rows = conn.execute(
            "SELECT id, object_id, box FROM contamination_segments "
            "WHERE owner = ? AND side = ? AND id > ? ORDER BY id",
            (owner, side, last),
        ).fetchall()
        if rows:
            indexes = list(indexes)
            for segment_id, object_id, box in rows:
                plain = key.open(bytes(box), kind="index", object_id=str(object_id))
                index = LSHIndex.from_bytes(plain)
                if index.config != self.config:
                    raise ConfigError(
                        f"the contamination index of {owner} was built with {index.config}, "
                        f"the workspace now says {self.config}: changing [contamination] "
                        "settings of a workspace that has indexed data is not supported"
                    )
                indexes.append(index)
                last = int(segment_id)
                self.segments_loaded += 1
            self._cache[(owner, side)] = (last, indexes)
        return indexes

    def append_in(
        self,
        conn: sqlite3.Connection,
        key: DataKey,
        owner: str,
        side: str,
        keys: Sequence[int],
        shingles: Sequence[Shingles],
    ) -> None:
        if not keys:
            return
        index = LSHIndex(self.config)
        index.add(list(keys), list(shingles))
        self._insert(conn, key, owner, side, index)
        count = conn.execute(
            "SELECT COUNT(*) FROM contamination_segments WHERE owner = ? AND side = ?",
            (owner, side),
        ).fetchone()[0]
        if count > COMPACT_AFTER:
            self._compact_in(conn, key, owner, side)

    def _insert(
        self, conn: sqlite3.Connection, key: DataKey, owner: str, side: str, index: LSHIndex
    ) -> None:
        object_id = f"{side}-{secrets.token_hex(12)}"
        conn.execute(
            "INSERT INTO contamination_segments (object_id, owner, side, entries, dek_version, "
            "box, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                object_id,
                owner,
                side,
                len(index),
                key.version,
                key.seal(index.to_bytes(), kind="index", object_id=object_id),
                utcnow(),
            ),
        )

    def _compact_in(self, conn: sqlite3.Connection, key: DataKey, owner: str, side: str) -> None:
        rows = conn.execute(
            "SELECT id, object_id, box FROM contamination_segments "
            "WHERE owner = ? AND side = ? ORDER BY id",
            (owner, side),
        ).fetchall()
        merged = LSHIndex.merge(
            [
                LSHIndex.from_bytes(key.open(bytes(box), kind="index", object_id=str(oid)))
                for _, oid, box in rows
            ]
        )
        conn.executemany("DELETE FROM contamination_segments WHERE id = ?", [(r[0],) for r in rows])
        self._insert(conn, key, owner, side, merged)
        # the cache is rebuilt from the merged segment on next load
        self._cache.pop((owner, side), None)

    def stats(self, conn: sqlite3.Connection, owner: str) -> dict[str, dict[str, int]]:
        rows = conn.execute(
            "SELECT side, COUNT(*), COALESCE(SUM(entries), 0) FROM contamination_segments "
            "WHERE owner = ? GROUP BY side",
            (owner,),
        ).fetchall()
        return {str(side): {"segments": int(n), "entries": int(e)} for side, n, e in rows}


def _best(
    hasher: MinHasher, indexes: list[LSHIndex], shingles: Sequence[Shingles]
) -> list[tuple[int, float] | None]:
    """For each shingle set, the indexed key with the highest exact Jaccard >= threshold."""
    best: list[tuple[int, float] | None] = [None] * len(shingles)
    if not indexes or not shingles:
        return best
    # signatures once for every segment, rather than once per segment queried
    signatures = hasher.signatures(shingles)
    for index in indexes:
        for i, candidates in enumerate(index.query_many(list(shingles), signatures=signatures)):
            current = best[i]
            if candidates and (current is None or candidates[0].jaccard > current[1]):
                best[i] = (candidates[0].key, candidates[0].jaccard)
    return best


@dataclass
class MinHashContamination:
    """Near-duplicate contamination check by MinHash-LSH with exact verification."""

    settings: ContaminationConfig
    registry_key: DataKey
    """Seals the workspace benchmark registry's index, which applies to every tenant."""
    store: SegmentStore = field(init=False)
    _shingles: dict[bytes, Shingles] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.store = SegmentStore(minhash_config(self.settings))

    def _shingles_of(self, batch: list[PreparedRecord]) -> list[Shingles]:
        missing = [p for p in batch if p.rid not in self._shingles]
        if missing:
            computed = shingle_hashes_many([p.record.text for p in missing], self.store.config)
            for p, sh in zip(missing, computed, strict=True):
                self._shingles[p.rid] = sh
        return [self._shingles[p.rid] for p in batch]

    def check_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[Match | None]:
        if not batch:
            return []
        key = scope.index_key()
        shingles = self._shingles_of(batch)
        eval_best = _best(
            self.store.hasher, self.store.load(conn, key, scope.tenant.id, "eval"), shingles
        )
        registry_best = _best(self.store.hasher, self.registry_indexes(conn), shingles)
        matches: list[Match | None] = []
        for p, own, shared in zip(batch, eval_best, registry_best, strict=True):
            if own is not None and (shared is None or own[1] >= shared[1]):
                matches.append(Match(p.record.id, own[0], own[1], "eval"))
            elif shared is not None:
                matches.append(Match(p.record.id, shared[0], shared[1], "registry"))
            else:
                matches.append(None)
        return matches

    def check_against(
        self,
        scope: TenantScope,
        conn: sqlite3.Connection,
        batch: list[PreparedRecord],
        evals: list[PreparedRecord],
    ) -> list[Match | None]:
        # a batch already checked against the whole index needs only the new records: an
        # in-memory index of a few records instead of another pass over every segment
        if not batch or not evals:
            return [None] * len(batch)
        seqs = scope.seqs_of(conn, "eval_records", [p.rid for p in evals])
        index = LSHIndex(self.store.config)
        index.add([seqs[p.rid] for p in evals], self._shingles_of(evals))
        return [
            None if b is None else Match(p.record.id, b[0], b[1], "eval")
            for p, b in zip(
                batch, _best(self.store.hasher, [index], self._shingles_of(batch)), strict=True
            )
        ]

    def nearest_train(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[int | None]:
        if not batch:
            return []
        indexes = self.store.load(conn, scope.index_key(), scope.tenant.id, "train")
        return [
            None if b is None else b[0]
            for b in _best(self.store.hasher, indexes, self._shingles_of(batch))
        ]

    def registry_indexes(self, conn: sqlite3.Connection) -> list[LSHIndex]:
        return self.store.load(conn, self.registry_key, REGISTRY, REGISTRY)

    def on_train_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> None:
        self._add(scope, conn, batch, "train", "train_records")

    def on_eval_added(
        self, scope: TenantScope, conn: sqlite3.Connection, batch: list[PreparedRecord]
    ) -> list[tuple[int, int, float]]:
        if not batch:
            return []
        key = scope.index_key()
        eval_seqs = self._add(scope, conn, batch, "eval", "eval_records")
        hits = self.quarantine_matches(scope, conn, key, eval_seqs, self._shingles_of(batch))
        for p in batch:
            self._shingles.pop(p.rid, None)
        return hits

    def quarantine_matches(
        self,
        scope: TenantScope,
        conn: sqlite3.Connection,
        key: DataKey,
        eval_keys: list[int],
        shingles: Sequence[Shingles],
    ) -> list[tuple[int, int, float]]:
        """Quarantine the tenant's stored train records that copy any of these eval texts."""
        hits: dict[int, tuple[int, float]] = {}
        signatures = self.store.hasher.signatures(shingles) if shingles else None
        for index in self.store.load(conn, key, scope.tenant.id, "train"):
            for eval_key, candidates in zip(
                eval_keys, index.query_many(list(shingles), signatures=signatures), strict=True
            ):
                for c in candidates:
                    if c.key not in hits or c.jaccard > hits[c.key][1]:
                        hits[c.key] = (eval_key, c.jaccard)
        moved = scope.train.quarantine_in(conn, sorted(hits))
        return [(seq, hits[seq][0], hits[seq][1]) for seq in moved]

    def _add(
        self,
        scope: TenantScope,
        conn: sqlite3.Connection,
        batch: list[PreparedRecord],
        side: str,
        table: str,
    ) -> list[int]:
        if not batch:
            return []
        key = scope.index_key()
        seqs = scope.seqs_of(conn, table, [p.rid for p in batch])
        keys = [seqs[p.rid] for p in batch]
        self.store.append_in(conn, key, scope.tenant.id, side, keys, self._shingles_of(batch))
        if side == "train":
            for p in batch:
                self._shingles.pop(p.rid, None)
        return keys

    def forget(self, batch: list[PreparedRecord]) -> None:
        for p in batch:
            self._shingles.pop(p.rid, None)

    def reset(self) -> None:
        self._shingles.clear()
        self.store = SegmentStore(self.store.config)

    def report(self, conn: sqlite3.Connection, owner: str) -> dict[str, Any]:
        config = self.store.config
        bands, rows = config.banding
        return {
            "threshold": config.threshold,
            "num_perm": config.num_perm,
            "ngram": config.ngram,
            "unit": config.unit,
            "bands": bands,
            "rows": rows,
            "index": self.store.stats(conn, owner),
        }


def audit_quarantine_in(
    scope: TenantScope,
    conn: sqlite3.Connection,
    hits: list[tuple[int, int, float]],
    *,
    direction: str,
    source_key: str = "eval_seq",
    **context: Any,
) -> None:
    """One audit event per training record moved out of training (ids and similarity only)."""
    for train_seq, source_seq, similarity in hits:
        scope.audit_in(
            conn,
            "contamination.quarantine",
            obj=f"train:{train_seq}",
            details={
                "train_seq": train_seq,
                source_key: source_seq,
                "similarity": similarity,
                "direction": direction,
                **context,
            },
        )


def contamination_report(ws: Workspace, tenant: str) -> dict[str, Any]:
    """What the filter did for one tenant: settings, index sizes, counts, recent matches."""
    info = ws.tenants.get(tenant)
    checker = ws.contamination()
    events = ws.audit.events(tenant=tenant, action="contamination")
    matches = [
        {"object": e.object, "ts": e.ts, **e.details}
        for e in events
        if e.action in ("contamination.match", "contamination.quarantine")
    ]
    ws.audit.append("contamination.report", tenant=tenant, obj=info.id)
    return {
        "tenant": tenant,
        **checker.report(ws.conn, info.id),
        "registry": checker.store.stats(ws.conn, REGISTRY).get(REGISTRY, {}),
        "contaminated": sum(1 for e in events if e.action == "contamination.match"),
        "quarantined": sum(1 for e in events if e.action == "contamination.quarantine"),
        "matches": matches[-50:],
    }
