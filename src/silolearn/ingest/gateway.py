"""The ingestion gateway: validate, minimise, route, check contamination, store (I5, I10).

Per record: strict schema validation; size limit; duplicate ids within the input; PII
minimisation by the tenant's policy; routing of labelled records to the eval store by a
keyed hash of the record id (deterministic, not guessable without the workspace key);
idempotency on id (a stored id with the same content is a duplicate, with other content
an error); the contamination check for training-bound records; then sealing and storing.

Good lines are stored batch by batch, each batch in one transaction with its audit event,
so a bad line never loses a good one and a crash never loses a committed batch.
``strict=True`` validates the whole input first and stores all or nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

from silolearn.errors import IngestAborted
from silolearn.ingest.contamination import ContaminationCheck, ExactContamination
from silolearn.ingest.minimise import MinimisationPolicy, Minimiser
from silolearn.ingest.parse import ParsedLine, parse
from silolearn.storage.scope import PreparedRecord, Purpose, TenantScope

if TYPE_CHECKING:
    from silolearn.workspace import Workspace

MAX_REPORTED_ERRORS = 1000


@dataclass
class IngestReport:
    tenant: str
    accepted: int = 0
    rejected: int = 0
    train: int = 0
    eval: int = 0
    duplicates: int = 0
    contaminated: int = 0
    quarantined: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "train": self.train,
            "eval": self.eval,
            "duplicates": self.duplicates,
            "contaminated": self.contaminated,
            "quarantined": self.quarantined,
            "redactions": sum(self.redactions.values()),
            "redactions_by_kind": dict(sorted(self.redactions.items())),
            "errors": self.errors,
        }


@dataclass(frozen=True, slots=True)
class _Candidate:
    line: int
    prepared: PreparedRecord
    to_eval: bool
    redactions: Counter[str]


def route_to_eval(routing_key: bytes, tenant_id: str, record_id: str, fraction: float) -> bool:
    """Keyed, deterministic choice of the eval store for a labelled record."""
    digest = hmac.new(routing_key, f"{tenant_id}\x00{record_id}".encode(), hashlib.sha256).digest()
    position: int = struct.unpack(">Q", digest[:8])[0]
    return position < fraction * 2**64


class Gateway:
    """Routes one tenant's records into its train and eval stores."""

    def __init__(
        self, workspace: Workspace, *, contamination: ContaminationCheck | None = None
    ) -> None:
        self._ws = workspace
        self._settings = workspace.settings.ingest
        self._contamination = contamination or ExactContamination()

    def ingest(
        self,
        tenant: str,
        source: Any,
        *,
        strict: bool = False,
        fmt: str | None = None,
        progress: Any = None,
    ) -> IngestReport:
        scope = self._ws.scope(tenant, purpose=Purpose.INGEST)
        scope.train.require_append()
        scope.eval.require_append()
        info = self._ws.tenants.get(tenant)
        minimiser = Minimiser(
            policy=MinimisationPolicy(info.pii_policy),
            token_key=scope.keyed_hash("pii-tokens", info.id),
        )
        routing_key = self._ws.routing_key()
        report = IngestReport(tenant=tenant)
        seen: dict[str, int] = {}
        lines = parse(source, fmt=fmt)

        def screen(batch: Iterable[ParsedLine]) -> list[_Candidate]:
            candidates = []
            for parsed in batch:
                candidate = self._screen(parsed, scope, minimiser, routing_key, seen, report)
                if candidate is not None:
                    candidates.append(candidate)
            return candidates

        if strict:
            candidates = screen(lines)
            if report.rejected:
                scope.audit(
                    "ingest.refused",
                    details={
                        "strict": True,
                        "rejected": report.rejected,
                        "errors": report.errors[:100],
                    },
                )
                raise IngestAborted(
                    f"--strict: {report.rejected} invalid line(s), nothing stored",
                    errors=report.errors,
                )
            try:
                self._store(scope, candidates, report, strict=True)
            except IngestAborted:
                scope.audit(
                    "ingest.refused",
                    details={
                        "strict": True,
                        "rejected": report.rejected,
                        "errors": report.errors[:100],
                    },
                )
                raise
        else:
            for batch in _batches(lines, self._settings.batch_size):
                errors_before = len(report.errors)
                self._store(scope, screen(batch), report, errors=report.errors[errors_before:])
                if progress is not None:
                    progress(len(batch))
        return report

    def _screen(
        self,
        parsed: ParsedLine,
        scope: TenantScope,
        minimiser: Minimiser,
        routing_key: bytes,
        seen: dict[str, int],
        report: IngestReport,
    ) -> _Candidate | None:
        if parsed.record is None:
            report.reject(parsed.line, parsed.error or "invalid record")
            return None
        record = parsed.record
        first = seen.get(record.id)
        if first is not None:
            report.reject(parsed.line, f"duplicate id (first seen on line {first})")
            return None
        seen[record.id] = parsed.line
        size = len(record.text.encode())
        if size > self._settings.max_text_bytes:
            report.reject(
                parsed.line,
                f"text is {size} bytes, over the limit of {self._settings.max_text_bytes}",
            )
            return None
        minimised = minimiser.apply(record.text)
        redactions = Counter({str(kind): n for kind, n in minimised.counts.items()})
        if minimiser.policy is MinimisationPolicy.REJECT and minimised.total:
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(redactions.items()))
            report.reject(parsed.line, f"contains personal data ({kinds}); policy is reject")
            return None
        if minimised.text != record.text:
            record = record.model_copy(update={"text": minimised.text})
        to_eval = record.label is not None and route_to_eval(
            routing_key, scope.tenant.id, record.id, self._settings.eval_fraction
        )
        return _Candidate(parsed.line, scope.prepare(record), to_eval, redactions)

    def _store(
        self,
        scope: TenantScope,
        candidates: list[_Candidate],
        report: IngestReport,
        *,
        errors: list[dict[str, Any]] | None = None,
        strict: bool = False,
    ) -> None:
        with scope.write() as conn:
            rids = [c.prepared.rid for c in candidates]
            stored = scope.train.existing(rids) | scope.eval.existing(rids)
            fresh: list[_Candidate] = []
            for c in candidates:
                digest = stored.get(c.prepared.rid)
                if digest is None:
                    fresh.append(c)
                elif digest == c.prepared.digest:
                    report.duplicates += 1
                else:
                    report.reject(c.line, "id already stored with different content")
            if strict and report.rejected:
                raise IngestAborted(
                    f"--strict: {report.rejected} invalid line(s), nothing stored",
                    errors=report.errors,
                )
            to_eval = [c for c in fresh if c.to_eval]
            to_train_all = [c for c in fresh if not c.to_eval]

            matches = self._contamination.check_train(
                scope, conn, [c.prepared for c in to_train_all]
            )
            known = scope.train.fingerprints_present(c.prepared.fingerprint for c in to_train_all)
            to_train: list[_Candidate] = []
            for c, match in zip(to_train_all, matches, strict=True):
                if match is not None:
                    report.contaminated += 1
                    scope.audit_in(
                        conn,
                        "contamination.match",
                        obj=match.record_id,
                        details={
                            "eval_seq": match.eval_seq,
                            "similarity": match.similarity,
                            "method": match.method,
                            "direction": "train_after_eval",
                        },
                    )
                elif c.prepared.fingerprint in known:
                    report.duplicates += 1
                else:
                    known.add(c.prepared.fingerprint)
                    to_train.append(c)

            scope.train.append_in(conn, [c.prepared for c in to_train])
            scope.eval.append_in(conn, [c.prepared for c in to_eval])
            moved = self._contamination.on_eval_added(scope, conn, [c.prepared for c in to_eval])
            if moved:
                report.quarantined += len(moved)
                scope.audit_in(
                    conn,
                    "contamination.quarantine",
                    details={"train_seqs": moved, "direction": "eval_after_train"},
                )
            accepted = to_train + to_eval
            for c in accepted:
                report.redactions.update(c.redactions)
            report.train += len(to_train)
            report.eval += len(to_eval)
            report.accepted += len(accepted)
            scope.audit_in(
                conn,
                "ingest.batch",
                details={
                    "train": len(to_train),
                    "eval": len(to_eval),
                    "duplicates_or_contaminated": len(fresh) - len(accepted),
                    "rejected_lines": [e["line"] for e in (errors or [])][:100],
                    "rejected_reasons": sorted({e["reason"] for e in (errors or [])})[:20],
                },
            )


def _batches(lines: Iterator[ParsedLine], size: int) -> Iterator[list[ParsedLine]]:
    while batch := list(islice(lines, size)):
        yield batch
