"""Rows of other tables bound to the audit chain: tamper evidence beyond the audit table (I7).

A table whose rows an invariant rests on (the privacy ledger for I9, adapter versions for I8)
is *bound*: the transaction that writes one of its rows records, in the audit event it
appends, the SHA-256 of the row as committed (``details["row_digests"]``, in the chain's own
canonical encoding). The chain makes those digests tamper-evident, so verification
recomputes every row's digest and compares it with the newest one the chain holds for that
row: a row edited, deleted, inserted or moved behind silolearn's back (append-only triggers
dropped, a copy of the database file edited) no longer matches.

Anyone holding the database file can also append well-linked events; only a signature, whose
key is in the keyring and not in the database, tells silolearn's from theirs. So a row whose
newest digest (or whose deletion) only events after the newest signed checkpoint vouch for
is reported too. Every workspace close signs its head: at rest there are none.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from silolearn.audit.log import append_event, canonical_digest

ROW_DIGESTS = "row_digests"
"""The key of an event's details that binds rows: ``{table: {row key: digest}}``."""

KINDS = ("altered", "deleted", "unbound", "unsigned")


@dataclass(frozen=True, slots=True)
class BoundTable:
    """A table whose rows the audit chain covers."""

    name: str
    key: tuple[str, ...]
    """Columns naming a row; none of their values contains ``/``."""
    content: tuple[str, ...]
    """The other columns the digest covers."""
    released_by: tuple[str, str] | None = None
    """``(action, key column)``: an event of that action whose object is the row's value in
    that column deletes the row legitimately (a tenant's crypto-shredding)."""

    def select(self) -> str:
        return f"SELECT {', '.join(self.key + self.content)} FROM {self.name}"

    def key_text(self, values: Sequence[Any]) -> str:
        return "/".join(str(v) for v in values[: len(self.key)])

    def describe(self, key_text: str) -> str:
        parts = key_text.split("/", len(self.key) - 1)
        return ", ".join(
            f"{column}={value}" for column, value in zip(self.key, parts, strict=False)
        )

    def digest(self, values: Sequence[Any]) -> str:
        encoded = [v.hex() if isinstance(v, bytes) else v for v in values]
        return canonical_digest([self.name, *encoded])


def row_digests(
    conn: sqlite3.Connection, table: BoundTable, keys: Iterable[Sequence[Any]]
) -> dict[str, dict[str, str]]:
    """``{table: {row key: digest}}`` of the given rows as they stand in the caller's write
    transaction, for the details of the audit event appended in that transaction."""
    where = " AND ".join(f"{column} = ?" for column in table.key)
    digests: dict[str, str] = {}
    for key in keys:
        row = conn.execute(f"{table.select()} WHERE {where}", tuple(key)).fetchone()
        if row is None:
            raise LookupError(f"no {table.name} row {tuple(key)} to bind to the audit chain")
        digests[table.key_text(row)] = table.digest(row)
    return {table.name: digests}


def backfill(conn: sqlite3.Connection, tables: Sequence[BoundTable], *, actor: str) -> int:
    """Bind every row the tables hold now with one ``audit.rows_bound`` event, inside the
    caller's write transaction (a schema migration: the rows present at the upgrade are
    trusted as they are). Returns the number of rows bound; no event when there are none."""
    bound: dict[str, dict[str, str]] = {}
    for table in tables:
        rows = conn.execute(table.select()).fetchall()
        if rows:
            bound[table.name] = {table.key_text(r): table.digest(r) for r in rows}
    count = sum(len(d) for d in bound.values())
    if count:
        append_event(
            conn,
            actor=actor,
            action="audit.rows_bound",
            tenant=None,
            obj=None,
            details={ROW_DIGESTS: bound, "rows": {t: len(d) for t, d in bound.items()}},
        )
    return count


@dataclass(frozen=True, slots=True)
class RowFinding:
    """One bound row that does not match the chain."""

    kind: str
    table: str
    row: str
    """The row's key, ``column=value, ...``."""
    seq: int | None
    """The audit event that last bound (or released) the row, if any."""
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "table": self.table,
            "row": self.row,
            "seq": self.seq,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class RowsReport:
    rows: dict[str, int]
    """Rows checked, per table."""
    signed_seq: int
    findings: tuple[RowFinding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "signed_seq": self.signed_seq,
            "findings": [f.to_dict() for f in self.findings],
        }


_Expected = dict[tuple[str, str], tuple[str | None, int]]
"""(table, row key) -> (digest, or None once released; the event that said so)."""


def _expected(conn: sqlite3.Connection, tables: Sequence[BoundTable]) -> _Expected:
    by_name = {t.name: t for t in tables}
    releases = {t.released_by[0] for t in tables if t.released_by is not None}
    marks = ", ".join("?" for _ in releases) or "NULL"
    expected: _Expected = {}
    cursor = conn.execute(
        "SELECT seq, action, object, details FROM audit_events "
        f"WHERE instr(details, ?) > 0 OR action IN ({marks}) ORDER BY seq",
        (f'"{ROW_DIGESTS}":', *sorted(releases)),
    )
    for seq, action, obj, details in cursor:
        try:
            bound = json.loads(details).get(ROW_DIGESTS, {})
        except (json.JSONDecodeError, AttributeError):
            continue  # an event the chain check reports as altered
        for name, digests in bound.items() if isinstance(bound, dict) else ():
            if name in by_name and isinstance(digests, dict):
                for key, digest in digests.items():
                    expected[(name, str(key))] = (str(digest), int(seq))
        for table in tables:
            if table.released_by is None or table.released_by[0] != action:
                continue
            position = table.key.index(table.released_by[1])
            for name, key in list(expected):
                if name == table.name and key.split("/")[position] == obj:
                    expected[(name, key)] = (None, int(seq))
    return expected


def verify_rows(
    conn: sqlite3.Connection, tables: Sequence[BoundTable], *, signed_seq: int
) -> RowsReport:
    """Compare every row of the bound tables with the chain; ``signed_seq`` is the newest
    event a valid signature covers."""
    expected = _expected(conn, tables)
    findings: list[RowFinding] = []
    counts: dict[str, int] = {}
    for table in tables:
        counts[table.name] = 0
        for row in conn.execute(f"{table.select()} ORDER BY {', '.join(table.key)}"):
            counts[table.name] += 1
            key = table.key_text(row)
            finding = _check_present(
                table, key, table.digest(row), expected.pop((table.name, key), None), signed_seq
            )
            if finding is not None:
                findings.append(finding)
    for (name, key), (digest, seq) in sorted(expected.items(), key=lambda item: item[1][1]):
        table = next(t for t in tables if t.name == name)
        where = table.describe(key)
        if digest is not None:
            findings.append(
                RowFinding(
                    "deleted",
                    name,
                    where,
                    seq,
                    f"{name} row {where} is missing: audit event {seq} recorded it",
                )
            )
        elif seq > signed_seq:
            findings.append(
                RowFinding(
                    "unsigned",
                    name,
                    where,
                    seq,
                    f"{name} row {where} was deleted by audit event {seq}, which no signed "
                    f"checkpoint covers (the newest covers event {signed_seq})",
                )
            )
    return RowsReport(counts, signed_seq, tuple(findings))


def _check_present(
    table: BoundTable,
    key: str,
    digest: str,
    bound: tuple[str | None, int] | None,
    signed_seq: int,
) -> RowFinding | None:
    name, where = table.name, table.describe(key)
    if bound is None:
        return RowFinding(
            "unbound",
            name,
            where,
            None,
            f"{name} row {where} is in no audit event: it was written outside silolearn",
        )
    recorded, seq = bound
    if recorded is None:
        return RowFinding(
            "unbound",
            name,
            where,
            seq,
            f"{name} row {where} is present although audit event {seq} deleted it",
        )
    if recorded != digest:
        return RowFinding(
            "altered",
            name,
            where,
            seq,
            f"{name} row {where} was altered: it does not match the digest audit event "
            f"{seq} recorded",
        )
    if seq > signed_seq:
        return RowFinding(
            "unsigned",
            name,
            where,
            seq,
            f"{name} row {where} is vouched for only by audit event {seq}, which no signed "
            f"checkpoint covers (the newest covers event {signed_seq})",
        )
    return None
