"""The ingestion gateway: validate, minimise, route, check contamination, store (I5, I10).

Per record: strict schema validation; size limit; duplicate ids within the input; PII
minimisation by the tenant's policy; routing of labelled records by content; idempotency on
id (a stored id with the same content is a duplicate, with other content an error); the
contamination check for training-bound records; then sealing and storing.

Routing by content keeps every copy of a text on one side, so the contamination check never
has to throw away the training copies of a text that is also in eval (which made whole
labels vanish from training when a few texts were repeated many times). A labelled record
goes to eval by a keyed hash of its normalised text (deterministic, not guessable without
the workspace key), so ``eval_fraction`` counts distinct texts; a near-duplicate joins the
side the contamination index already knows for it: eval when an eval record is a near-copy
(it would otherwise be dropped as contaminated), else train when a stored training record
is. Every training-bound record is still checked against the eval records (I5). Both stores
keep every copy of a text (``copies``): how often a text occurs is evidence of the label
distribution; feedback keeps none (``keep_copies=False``, counted as ``repeats``). Each ingest
reports per label what it did, and warns (and audits ``ingest.label_warning``) when a label
is missing from training (``silolearn.ingest.health``).

Good lines are stored batch by batch, each batch in one transaction with its audit event,
so a bad line never loses a good one and a crash never loses a committed batch.
``strict=True`` validates the whole input first and stores all or nothing.

``suite="golden"`` (with ``all_to_eval=True``) registers the tenant's golden suite: labelled
must-pass examples stored in the eval store apart from the regular eval set, through the
same contamination path as every eval record.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import TYPE_CHECKING, Any

from silolearn.errors import IngestAborted, InvalidInput
from silolearn.ingest.contamination import ContaminationCheck, audit_quarantine_in
from silolearn.ingest.health import NO_TRAINING, LabelCounts, LabelWarning, label_warnings
from silolearn.ingest.minimise import MinimisationPolicy, Minimiser
from silolearn.ingest.parse import ParsedLine, parse
from silolearn.records import LabelOrigin, Record
from silolearn.storage.scope import PreparedRecord, Purpose, TenantScope, check_suite
from silolearn.text import content_form

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
    """Ids already stored with the same content, and, for an ingest that keeps no copies,
    texts already in training under another id (``repeats``)."""
    repeats: int = 0
    copies: int = 0
    """Records stored for training whose text was already there (``keep_copies``): how
    often a text occurs is evidence of the tenant's label distribution."""
    joined_eval: int = 0
    """Training-bound records sent to eval because an eval record is a near-copy of them."""
    contaminated: int = 0
    quarantined: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, LabelCounts] = field(default_factory=dict)
    unlabelled: LabelCounts = field(default_factory=LabelCounts)
    warnings: list[LabelWarning] = field(default_factory=list)

    def of(self, record: Record) -> LabelCounts:
        """The per-label counts a record's outcome is added to."""
        if record.label is None:
            return self.unlabelled
        counts = self.labels.get(record.label)
        if counts is None:
            counts = self.labels[record.label] = LabelCounts()
        return counts

    def reject(self, line: int, reason: str, record: Record | None = None) -> None:
        self.rejected += 1
        if record is not None:
            self.of(record).rejected += 1
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
            "repeats": self.repeats,
            "copies": self.copies,
            "joined_eval": self.joined_eval,
            "contaminated": self.contaminated,
            "quarantined": self.quarantined,
            "redactions": sum(self.redactions.values()),
            "redactions_by_kind": dict(sorted(self.redactions.items())),
            "errors": self.errors,
            "labels": {k: v.to_dict() for k, v in sorted(self.labels.items())},
            "unlabelled": self.unlabelled.to_dict(),
            "warnings": [w.to_dict() for w in self.warnings],
        }


@dataclass(frozen=True, slots=True)
class _Arrival:
    """A valid line, with the keyed hashes that decide whether it is new."""

    line: int
    record: Record
    rid: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class _Candidate:
    line: int
    prepared: PreparedRecord
    to_eval: bool
    redactions: Counter[str]


def route_to_eval(routing_key: bytes, tenant_id: str, text: str, fraction: float) -> bool:
    """Keyed, deterministic choice of the eval store for a labelled record, by its text
    (normalised: every copy of a text, whatever its case, punctuation or spacing, and
    whatever its id, lands on the same side)."""
    message = f"{tenant_id}\x00{content_form(text)}".encode()
    digest = hmac.new(routing_key, message, hashlib.sha256).digest()
    position: int = struct.unpack(">Q", digest[:8])[0]
    return position < fraction * 2**64


class Gateway:
    """Routes one tenant's records into its train and eval stores."""

    def __init__(
        self, workspace: Workspace, *, contamination: ContaminationCheck | None = None
    ) -> None:
        self._ws = workspace
        self._settings = workspace.settings.ingest
        self._contamination = contamination or workspace.contamination()

    def ingest(
        self,
        tenant: str,
        source: Any,
        *,
        strict: bool = False,
        fmt: str | None = None,
        progress: Any = None,
        all_to_eval: bool = False,
        suite: str | None = None,
        origin: LabelOrigin | None = None,
        keep_copies: bool = True,
    ) -> IngestReport:
        """Ingest ``source`` into ``tenant``; ``all_to_eval`` registers a whole eval set
        (every record to the eval store, labelled or not) instead of routing. ``origin``
        is where the labels came from, sealed with each training record (default ``bulk``).
        ``keep_copies=False`` drops a record whose text is already in training (a
        ``repeat``) instead of storing it as another copy: for answers about a text, such
        as feedback, where a copy is not a new observation of the tenant's traffic.

        ``suite="golden"`` (requires ``all_to_eval``) stores the records as the tenant's
        golden suite: each line must be labelled (an unlabelled one is rejected), and an id
        already stored outside the golden suite is rejected rather than counted a duplicate.
        """
        check_suite(suite)
        if suite is not None and not all_to_eval:
            raise InvalidInput(
                f"an eval suite ({suite!r}) is registered with all_to_eval=True only: "
                "its records go to the eval store, never through routing",
                suite=suite,
            )
        scope = self._ws.scope(tenant, purpose=Purpose.INGEST)
        scope.train.require_append()
        scope.eval.require_append()
        info = self._ws.tenants.get(tenant)
        run = _Run(
            scope=scope,
            minimiser=Minimiser(
                policy=MinimisationPolicy(info.pii_policy),
                token_key=scope.keyed_hash("pii-tokens", info.id),
            ),
            routing_key=self._ws.routing_key(),
            report=IngestReport(tenant=tenant),
            all_to_eval=all_to_eval,
            strict=strict,
            suite=suite,
            origin=origin or LabelOrigin(),
            keep_copies=keep_copies,
        )
        lines = parse(source, fmt=fmt)
        if strict:
            try:
                self._store(run, [a for p in lines if (a := self._screen(run, p))], strict=True)
            except IngestAborted:
                scope.audit(
                    "ingest.refused",
                    details={
                        "strict": True,
                        "rejected": run.report.rejected,
                        "errors": run.report.errors[:100],
                    },
                )
                raise
        else:
            for batch in _batches(lines, self._settings.batch_size):
                errors_before = len(run.report.errors)
                arrivals = [a for p in batch if (a := self._screen(run, p))]
                self._store(run, arrivals, errors_before=errors_before)
                if progress is not None:
                    progress(len(batch))
        self._finish(run)
        return run.report

    def _screen(self, run: _Run, parsed: ParsedLine) -> _Arrival | None:
        """Cheap checks of one line; the text work waits until the record is known new."""
        report = run.report
        if parsed.record is None:
            report.reject(parsed.line, parsed.error or "invalid record")
            return None
        record = parsed.record
        report.of(record).arrived += 1
        first = run.seen.get(record.id)
        if first is not None:
            report.reject(parsed.line, f"duplicate id (first seen on line {first})", record)
            return None
        run.seen[record.id] = parsed.line
        size = len(record.text.encode())
        if size > self._settings.max_text_bytes:
            report.reject(
                parsed.line,
                f"text is {size} bytes, over the limit of {self._settings.max_text_bytes}",
                record,
            )
            return None
        if run.suite is not None and record.label is None:
            report.reject(
                parsed.line,
                f"no label: every example of the {run.suite} suite must be labelled",
                record,
            )
            return None
        return _Arrival(
            parsed.line, record, run.scope.record_id_hash(record), run.scope.record_digest(record)
        )

    def _prepare(self, run: _Run, arrival: _Arrival) -> _Candidate | None:
        """Minimise, fingerprint and route a record that is not stored yet."""
        minimised = run.minimiser.apply(arrival.record.text)
        redactions = Counter({str(kind): n for kind, n in minimised.counts.items()})
        if run.minimiser.policy is MinimisationPolicy.REJECT and minimised.total:
            kinds = ", ".join(f"{k} x{n}" for k, n in sorted(redactions.items()))
            run.report.reject(
                arrival.line, f"contains personal data ({kinds}); policy is reject", arrival.record
            )
            return None
        record = arrival.record
        if minimised.text != record.text:
            record = record.model_copy(update={"text": minimised.text})
        to_eval = run.all_to_eval or (
            record.label is not None
            and route_to_eval(
                run.routing_key, run.scope.tenant.id, record.text, self._settings.eval_fraction
            )
        )
        prepared = run.scope.prepare(record, rid=arrival.rid, digest=arrival.digest)
        return _Candidate(arrival.line, prepared, to_eval, redactions)

    def _split_known(self, run: _Run, arrivals: list[_Arrival]) -> list[_Arrival]:
        """Count stored ids as duplicates (same content) or reject them (other content, or
        stored outside the run's suite)."""
        stored, in_suite = _known(run, [a.rid for a in arrivals])
        return [
            a
            for a in arrivals
            if _is_new(run, a.line, a.record, a.digest, stored.get(a.rid), a.rid in in_suite)
        ]

    def _store(
        self, run: _Run, arrivals: list[_Arrival], *, strict: bool = False, errors_before: int = 0
    ) -> None:
        report = run.report
        fresh = self._split_known(run, arrivals)
        candidates = [c for a in fresh if (c := self._prepare(run, a))]
        if strict and report.rejected:
            raise IngestAborted(
                f"--strict: {report.rejected} invalid line(s), nothing stored",
                errors=report.errors,
            )
        try:
            self._write_batch(run, candidates, errors_before)
        except BaseException:
            # cached index state may include what the rolled-back transaction wrote
            self._contamination.reset()
            raise

    def _write_batch(self, run: _Run, candidates: list[_Candidate], errors_before: int) -> None:
        scope, report = run.scope, run.report
        with scope.write() as conn:
            # another writer may have stored some of these ids since the lookup above
            raced, in_suite = _known(run, [c.prepared.rid for c in candidates])
            if raced:
                candidates = [
                    c
                    for c in candidates
                    if _is_new(
                        run,
                        c.line,
                        c.prepared.record,
                        c.prepared.digest,
                        raced.get(c.prepared.rid),
                        c.prepared.rid in in_suite,
                    )
                ]
                if run.strict and report.rejected:
                    raise IngestAborted(
                        f"--strict: {report.rejected} invalid line(s), nothing stored",
                        errors=report.errors,
                    )
            if not run.all_to_eval:
                candidates = self._join_train_side(run, conn, candidates)
            to_eval = [c for c in candidates if c.to_eval]
            self._add_eval(run, conn, to_eval)
            to_train, joined = self._check_train(
                run, conn, [c for c in candidates if not c.to_eval]
            )
            scope.train.append_in(conn, [c.prepared for c in to_train], origin=run.origin)
            self._contamination.on_train_added(scope, conn, [c.prepared for c in to_train])
            self._contamination.forget([c.prepared for c in candidates])
            to_eval += joined
            accepted = to_train + to_eval
            for c in accepted:
                report.redactions.update(c.redactions)
            for c in to_train:
                report.of(c.prepared.record).train += 1
                if c.prepared.record.label is not None:
                    run.train_texts.setdefault(c.prepared.record.label, set()).add(
                        c.prepared.fingerprint
                    )
            for c in to_eval:
                report.of(c.prepared.record).eval += 1
                if c.prepared.record.label is not None:
                    run.eval_texts.setdefault(c.prepared.record.label, set()).add(
                        c.prepared.fingerprint
                    )
            report.train += len(to_train)
            report.eval += len(to_eval)
            report.joined_eval += len(joined)
            report.accepted += len(accepted)
            errors = report.errors[errors_before:]
            details: dict[str, Any] = {
                "train": len(to_train),
                "eval": len(to_eval),
                "duplicates_or_contaminated": len(candidates) - len(accepted),
                "joined_eval": len(joined),
                "rejected_lines": [e["line"] for e in errors][:100],
                "rejected_reasons": sorted({e["reason"] for e in errors})[:20],
                "source": run.origin.source.value,
            }
            if run.suite is not None:
                details["suite"] = run.suite
            scope.audit_in(conn, "ingest.batch", details=details)

    def _join_train_side(
        self, run: _Run, conn: sqlite3.Connection, candidates: list[_Candidate]
    ) -> list[_Candidate]:
        """Records routed to eval whose near-copy is already stored for training go to
        training with it (``_check_train`` still sends them to eval if an eval record is a
        near-copy too): a cluster of near-duplicates stays on the side it started on."""
        routed = [c for c in candidates if c.to_eval]
        nearest = self._contamination.nearest_train(run.scope, conn, [c.prepared for c in routed])
        joining = {id(c) for c, seq in zip(routed, nearest, strict=True) if seq is not None}
        return [replace(c, to_eval=False) if id(c) in joining else c for c in candidates]

    def _add_eval(self, run: _Run, conn: sqlite3.Connection, batch: list[_Candidate]) -> None:
        """Store and index eval records; stored training records that copy them move to
        quarantine (the eval record arrived second)."""
        if not batch:
            return
        scope = run.scope
        prepared = [c.prepared for c in batch]
        scope.eval.append_in(conn, prepared, suite=run.suite)
        moved = self._contamination.on_eval_added(scope, conn, prepared)
        run.report.quarantined += len(moved)
        run.quarantined_seqs.update(seq for seq, _, _ in moved)
        audit_quarantine_in(scope, conn, moved, direction="eval_after_train")

    def _check_train(
        self, run: _Run, conn: sqlite3.Connection, pending: list[_Candidate]
    ) -> tuple[list[_Candidate], list[_Candidate]]:
        """The training-bound records that may be stored for training (I5), and those sent
        to eval instead, as near-copies of eval records that join their cluster.

        Records joining eval are stored (and indexed) at once, and the rest checked again
        against them, since a near-copy of a record that just joined eval is a near-copy of
        eval data. Unlabelled records cannot be eval records: a near-copy of eval data among them is
        dropped as contaminated, as is a near-copy of a workspace benchmark item.
        """
        scope, report = run.scope, run.report
        joined: list[_Candidate] = []
        matches = self._contamination.check_train(scope, conn, [c.prepared for c in pending])
        while True:
            joining: list[_Candidate] = []
            staying: list[_Candidate] = []
            for c, match in zip(pending, matches, strict=True):
                if match is None:
                    staying.append(c)
                elif match.source == "eval" and c.prepared.record.label is not None:
                    joining.append(replace(c, to_eval=True))
                else:
                    report.contaminated += 1
                    report.of(c.prepared.record).contaminated += 1
                    # the record id is sealed with the details (an id can name a label);
                    # in clear, only its keyed hash
                    scope.audit_in(
                        conn,
                        "contamination.match",
                        obj=f"record:{c.prepared.rid.hex()[:16]}",
                        details={
                            "record_id": match.record_id,
                            "eval_seq": match.eval_seq,
                            "similarity": match.similarity,
                            "source": match.source,
                            "direction": "train_after_eval",
                        },
                    )
            if not joining:
                break
            self._add_eval(run, conn, joining)
            joined += joining
            pending = staying
            matches = self._contamination.check_against(
                scope, conn, [c.prepared for c in pending], [c.prepared for c in joining]
            )
        known = scope.train.fingerprints_present(c.prepared.fingerprint for c in staying)
        to_train: list[_Candidate] = []
        for c in staying:
            if c.prepared.fingerprint not in known:
                known.add(c.prepared.fingerprint)
                to_train.append(c)
            elif run.keep_copies:
                report.copies += 1
                to_train.append(c)
            else:
                report.duplicates += 1
                report.repeats += 1
                report.of(c.prepared.record).repeats += 1
        return to_train, joined

    def _finish(self, run: _Run) -> None:
        """Attribute quarantined training records to their labels, and warn about labels
        missing from training (see ``silolearn.ingest.health``), each warning audited."""
        report, scope = run.report, run.scope
        if run.quarantined_seqs:
            for stored in scope.train.quarantined():
                if stored.seq in run.quarantined_seqs:
                    report.of(stored.record).quarantined += 1
        for label, texts in run.eval_texts.items():
            report.labels[label].eval_texts = len(texts)
        for label, texts in run.train_texts.items():
            report.labels[label].train_texts = len(texts)
        warnings = label_warnings(
            {k: v.train_texts for k, v in report.labels.items()},
            {k: v.eval_texts for k, v in report.labels.items()},
        )
        if run.all_to_eval:
            # registering an eval set adds no training records by design: only a label that
            # lost training records to it (quarantined copies) is a reason to warn
            warnings = [w for w in warnings if report.labels[w.label].quarantined]
        # a label that got no training record from this ingest may have some from before
        if any(w.kind == NO_TRAINING for w in warnings):
            stored_labels = Counter(s.record.label for s in scope.train.read())
            warnings = [w for w in warnings if w.kind != NO_TRAINING or not stored_labels[w.label]]
        for w in warnings:
            scope.audit("ingest.label_warning", details=w.audit_details())
        report.warnings = warnings


@dataclass
class _Run:
    """The state of one ingestion: the tenant's scope, its minimiser, ids seen so far."""

    scope: TenantScope
    minimiser: Minimiser
    routing_key: bytes
    report: IngestReport
    all_to_eval: bool = False
    strict: bool = False
    suite: str | None = None
    """The eval suite every record of this run goes to (``None``: the regular stores)."""
    origin: LabelOrigin = field(default_factory=LabelOrigin)
    """Where this run's labels came from, sealed with each training record."""
    keep_copies: bool = True
    """Whether a record whose text is already in training is stored as another copy."""
    seen: dict[str, int] = field(default_factory=dict)
    train_texts: dict[str, set[bytes]] = field(default_factory=dict)
    """Text fingerprints stored for training, by label."""
    eval_texts: dict[str, set[bytes]] = field(default_factory=dict)
    """Text fingerprints sent to eval, by label."""
    quarantined_seqs: set[int] = field(default_factory=set)


def _known(run: _Run, rids: list[bytes]) -> tuple[dict[bytes, bytes], set[bytes]]:
    """Content digests of these ids stored in either store, and which of them are stored in
    the run's eval suite (empty when the run has none)."""
    scope = run.scope
    stored = scope.train.existing(rids) | scope.eval.existing(rids)
    in_suite = scope.eval.in_suite(stored, run.suite) if run.suite is not None and stored else set()
    return stored, in_suite


def _is_new(
    run: _Run, line: int, record: Record, digest: bytes, stored: bytes | None, in_suite: bool
) -> bool:
    """Whether a record is to be stored; a stored id is counted as a duplicate (same
    content) or rejected (other content, or, for a suite, stored outside the suite, which
    would silently leave the example out of it)."""
    if stored is None:
        return True
    if run.suite is not None and not in_suite:
        run.report.reject(
            line,
            f"id already stored outside the {run.suite} suite "
            "(as a training or regular eval record)",
            record,
        )
    elif stored == digest:
        run.report.duplicates += 1
        run.report.of(record).duplicates += 1
    else:
        run.report.reject(line, "id already stored with different content", record)
    return False


def _batches(lines: Iterator[ParsedLine], size: int) -> Iterator[list[ParsedLine]]:
    while batch := list(islice(lines, size)):
        yield batch
