"""The workspace benchmark registry: eval sets that apply to every tenant (e.g. a shared
safety suite), and tenant eval sets registered whole.

A workspace benchmark set is stored append-only, sealed under the workspace registry key,
and indexed for the contamination check of every tenant; registering one quarantines, in
every tenant, stored training records that copy any of its items.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from silolearn.audit.log import utcnow
from silolearn.errors import ConflictError, IngestAborted, InvalidInput
from silolearn.ingest.contamination import REGISTRY, audit_quarantine_in
from silolearn.ingest.minhash import shingle_hashes_many
from silolearn.ingest.parse import parse
from silolearn.storage.scope import Purpose
from silolearn.tenancy.tenants import validate_name

if TYPE_CHECKING:
    from silolearn.workspace import Workspace


def register_benchmark(
    ws: Workspace, name: str, source: Any, *, fmt: str | None = None
) -> dict[str, Any]:
    """Register a workspace-wide eval set; all lines must be valid (nothing is stored else)."""
    try:
        validate_name(name)
    except InvalidInput:
        raise InvalidInput(
            f"invalid benchmark name {name[:60]!r}: 2-40 lowercase letters, digits, '-'"
        ) from None
    records, errors = [], []
    for parsed in parse(source, fmt=fmt):
        if parsed.record is None:
            errors.append({"line": parsed.line, "reason": parsed.error or "invalid record"})
        else:
            records.append(parsed.record)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        errors.append({"line": 0, "reason": "duplicate ids in the set"})
    if errors or not records:
        ws.audit.append(
            "benchmark.refused", obj=name, details={"errors": errors[:100], "records": len(records)}
        )
        raise IngestAborted(
            f"benchmark {name!r}: {len(errors)} invalid line(s) or no records, nothing stored",
            errors=errors,
        )
    checker = ws.contamination()
    key = ws.registry_key()
    routing = ws.routing_key()
    shingles = shingle_hashes_many([r.text for r in records], checker.store.config)
    # every tenant's scope is opened first (opening is audited in a transaction of its own);
    # the set, its index and the quarantine in every tenant then commit together, so no
    # crash can leave a registered set whose training copies are still active somewhere
    scopes = [
        ws.scope(t.name, purpose=Purpose.CONTAMINATION)
        for t in ws.tenants.list()
        if t.status != "shredding"
    ]
    quarantined: dict[str, int] = {}
    with ws.audit.write() as conn:
        if conn.execute("SELECT 1 FROM benchmark_sets WHERE name = ?", (name,)).fetchone():
            raise ConflictError(f"benchmark set {name!r} already exists", benchmark=name)
        now = utcnow()
        conn.execute(
            "INSERT INTO benchmark_sets (name, records, created_at) VALUES (?, ?, ?)",
            (name, len(records), now),
        )
        seqs: list[int] = []
        for record in records:
            object_id = f"{name}/{record.id}"
            cursor = conn.execute(
                "INSERT INTO benchmark_records (set_name, rid, box, created_at) "
                "VALUES (?, ?, ?, ?)",
                (
                    name,
                    hmac.new(routing, b"benchmark\x00" + object_id.encode(), "sha256").digest(),
                    key.seal(
                        record.canonical_json().encode(), kind="benchmark", object_id=object_id
                    ),
                    now,
                ),
            )
            seqs.append(int(cursor.lastrowid or 0))
        checker.store.append_in(conn, key, REGISTRY, REGISTRY, seqs, shingles)
        ws.audit.append_in(conn, "benchmark.register", obj=name, details={"records": len(records)})
        for scope in scopes:
            hits = checker.quarantine_matches(scope, conn, scope.index_key(), seqs, shingles)
            audit_quarantine_in(
                scope,
                conn,
                hits,
                direction="registry_after_train",
                source_key="benchmark_seq",
                benchmark=name,
            )
            quarantined[scope.tenant.name] = len(hits)
    return {
        "benchmark": name,
        "records": len(records),
        "quarantined": quarantined,
    }


def list_benchmarks(ws: Workspace) -> list[dict[str, Any]]:
    rows = ws.conn.execute(
        "SELECT name, records, created_at FROM benchmark_sets ORDER BY name"
    ).fetchall()
    return [{"name": n, "records": r, "created_at": c} for n, r, c in rows]
