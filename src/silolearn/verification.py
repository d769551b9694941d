"""``silolearn verify isolation``: attacks against the workspace's own mechanisms; and
``silolearn verify metadata``: a scan of the workspace's files for tenants' metadata in clear.

The suite creates two probe tenants with synthetic records and blobs, attacks them through
the real stores, keys and database, audits each attempt, and shreds the probes at the end.
An attack is *blocked* only when the mechanism meant to stop it raised its typed error;
anything else (success, or an unexpected exception) counts as not blocked.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silolearn.audit.log import AuditLog
from silolearn.errors import (
    AccessDenied,
    AuditChainBroken,
    DecryptionError,
    KeyDestroyed,
    TenantQuarantined,
)
from silolearn.records import Record
from silolearn.security.envelope import DataKey
from silolearn.security.keys import TRAIN_KEY, WrappedKey
from silolearn.storage.scope import Purpose, TenantScope
from silolearn.tenancy.tenants import TenantInfo
from silolearn.workspace import DB_FILE, HEAD_FILE, Workspace


@dataclass(frozen=True, slots=True)
class AttackResult:
    name: str
    blocked: bool
    evidence: str

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.name, "blocked": self.blocked, "evidence": self.evidence}


class _NotBlocked(Exception):
    pass


def _expect(errors: tuple[type[BaseException], ...], attempt: Callable[[], object]) -> str:
    try:
        attempt()
    except errors as exc:
        return f"{type(exc).__name__}: {exc}"[:160]
    raise _NotBlocked("the attempt succeeded")


def _probe_records(n: int) -> list[Record]:
    marker = secrets.token_hex(6)
    return [
        Record(
            id=f"probe-{i}",
            text=f"isolation probe {marker} record {i} with enough words to be a document",
            label="probe" if i % 2 else None,
            timestamp=f"2026-01-{i % 28 + 1:02d}T00:00:00Z",
        )
        for i in range(n)
    ]


def run_isolation_suite(ws: Workspace) -> list[AttackResult]:
    suffix = secrets.token_hex(3)
    name_a, name_b = f"probe-{suffix}-a", f"probe-{suffix}-b"
    ws.create_tenant(name_a)
    ws.create_tenant(name_b)
    results: list[AttackResult] = []
    try:
        probes = _set_up_probes(ws, name_a, name_b)
        results.extend(_worker_attacks(ws, name_a, name_b))
        for name, attack in [*_ciphertext_attacks(ws, probes), *_store_attacks(ws, probes)]:
            results.append(_run_attack(ws, name, attack))
    finally:
        for probe in (name_a, name_b):
            if any(t.name == probe for t in ws.tenants.list()):
                ws.tenants.shred(probe)
    return results


@dataclass(frozen=True, slots=True)
class _Probes:
    """The two probe tenants, with what the attacks aim at: A's ingestion scope, both data
    keys, two of B's training records and B's blob as stored."""

    name_a: str
    name_b: str
    a: TenantScope
    info_a: TenantInfo
    info_b: TenantInfo
    key_a: DataKey
    key_b: DataKey
    rid_b1: bytes
    box_b1: bytes
    rid_b2: bytes
    blob_b_id: str
    blob_b_bytes: bytes


def _set_up_probes(ws: Workspace, name_a: str, name_b: str) -> _Probes:
    """Give both probe tenants records, eval records and a blob; collect the targets."""
    a = ws.scope(name_a)
    b = ws.scope(name_b)
    for scope in (a, b):
        scope.train.append(_probe_records(4))
        scope.eval.append(_probe_records(2))
        scope.blobs.put("adapter", secrets.token_bytes(256))
    info_a, info_b = ws.tenants.get(name_a), ws.tenants.get(name_b)
    key_a = ws.tenants.data_key(info_a)
    key_b = ws.tenants.data_key(info_b)
    rows_b = ws.conn.execute(
        "SELECT rid, box FROM train_records WHERE tenant_id = ? ORDER BY seq LIMIT 2",
        (info_b.id,),
    ).fetchall()
    (rid_b1, box_b1), (rid_b2, _) = rows_b
    blob_b = ws.conn.execute(
        "SELECT object_id, file FROM blobs WHERE tenant_id = ?", (info_b.id,)
    ).fetchone()
    return _Probes(
        name_a=name_a,
        name_b=name_b,
        a=a,
        info_a=info_a,
        info_b=info_b,
        key_a=key_a,
        key_b=key_b,
        rid_b1=rid_b1,
        box_b1=box_b1,
        rid_b2=rid_b2,
        blob_b_id=blob_b[0],
        blob_b_bytes=(ws.tenants.blob_dir(info_b.id) / blob_b[1]).read_bytes(),
    )


def _run_attack(ws: Workspace, name: str, attack: Callable[[], str]) -> AttackResult:
    """Run one attack and audit its outcome: blocked only by the typed error it expects."""
    try:
        evidence, blocked = attack(), True
    except _NotBlocked as exc:
        evidence, blocked = str(exc), False
    except Exception as exc:
        evidence, blocked = f"unexpected {type(exc).__name__}: {exc}"[:160], False
    ws.audit.append("verify.attack", obj=name, details={"blocked": blocked, "evidence": evidence})
    return AttackResult(name, blocked, evidence)


def _ciphertext_attacks(ws: Workspace, p: _Probes) -> list[tuple[str, Callable[[], str]]]:
    """Attacks on the encryption: the wrong tenant's key, a ciphertext moved to another
    tenant, object or kind, a data key unwrapped with another tenant's KEK (I1, I6)."""
    return [
        (
            "open tenant B's blob with tenant A's key",
            lambda: _expect(
                (DecryptionError,),
                lambda: p.key_a.open(p.blob_b_bytes, kind="blob", object_id=p.blob_b_id),
            ),
        ),
        (
            "move tenant B's record ciphertext into tenant A",
            lambda: _moved_into_other_tenant(ws, p.info_a.id, bytes(p.box_b1), p.name_a),
        ),
        (
            "re-bind tenant B's ciphertext to tenant A with B's own key",
            lambda: _expect(
                (DecryptionError,),
                lambda: DataKey(p.info_a.id, p.key_b.version, p.key_b.material).open(
                    bytes(p.box_b1), kind="train", object_id=bytes(p.rid_b1).hex()
                ),
            ),
        ),
        (
            "move a ciphertext to another object id of the same tenant",
            lambda: _expect(
                (DecryptionError,),
                lambda: p.key_b.open(
                    bytes(p.box_b1), kind="train", object_id=bytes(p.rid_b2).hex()
                ),
            ),
        ),
        (
            "open a train ciphertext as an eval record",
            lambda: _expect(
                (DecryptionError,),
                lambda: p.key_b.open(bytes(p.box_b1), kind="eval", object_id=bytes(p.rid_b1).hex()),
            ),
        ),
        (
            "unwrap tenant B's data key with tenant A's key-encryption key",
            lambda: _unwrap_with_other_kek(ws, p.info_a.id, p.info_b.id),
        ),
    ]


def _store_attacks(ws: Workspace, p: _Probes) -> list[tuple[str, Callable[[], str]]]:
    """Attacks on the stores and the records kept about them: eval data through scopes
    that may not touch it (I5), eval rows edited in the database, a write into a quarantined
    tenant, the audit log tampered with (I7), a shredded tenant read from an old copy."""
    name_a = p.name_a
    return [
        (
            "read the eval store through a training scope",
            lambda: _expect((AccessDenied,), ws.scope(name_a, purpose=Purpose.TRAINING).eval.read),
        ),
        (
            "append to the eval store through a training scope",
            lambda: _expect(
                (AccessDenied,),
                lambda: ws.scope(name_a, purpose=Purpose.TRAINING).eval.append(_probe_records(1)),
            ),
        ),
        (
            "use the eval-derived contamination index through a training scope",
            lambda: _expect((AccessDenied,), ws.scope(name_a, purpose=Purpose.TRAINING).index_key),
        ),
        (
            "read the eval store through an ingestion scope",
            lambda: _expect((AccessDenied,), p.a.eval.read),
        ),
        (
            "UPDATE an eval record in the database",
            lambda: _expect(
                (sqlite3.DatabaseError,),
                lambda: ws.conn.execute(
                    "UPDATE eval_records SET box = x'00' WHERE tenant_id = ?", (p.info_a.id,)
                ),
            ),
        ),
        (
            "DELETE an eval record in the database",
            lambda: _expect(
                (sqlite3.DatabaseError,),
                lambda: ws.conn.execute(
                    "DELETE FROM eval_records WHERE tenant_id = ?", (p.info_a.id,)
                ),
            ),
        ),
        ("write into a quarantined tenant", lambda: _write_quarantined(ws, name_a)),
        ("edit, delete or truncate the audit log (in a copy)", lambda: _tamper_audit_copy(ws)),
        (
            "read a shredded tenant from a database copy taken before shredding",
            lambda: _read_after_shred(ws, p.name_b, p.info_b.id, p.rid_b1, p.box_b1),
        ),
    ]


def _worker_attacks(ws: Workspace, name_a: str, name_b: str) -> list[AttackResult]:
    """I2 from the inside: a training worker of A tries to read B's records, blobs and keys,
    and A's own eval data. The worker audits each attempt itself."""
    from silolearn.pipeline import Trainer

    probe = Trainer(ws).probe(name_a, others=[name_b])
    sandbox = probe["sandbox"]
    where = f"landlock ABI {sandbox['abi']}" if sandbox.get("abi") else "no landlock"
    results = []
    for item in probe["attempts"]:
        name = f"training worker of A ({where}): {item['attempt'].replace(name_b, 'B')}"
        result = AttackResult(name, bool(item["blocked"]), str(item["how"])[:160])
        results.append(result)
        ws.audit.append(
            "verify.attack",
            obj=name,
            details={"blocked": result.blocked, "evidence": result.evidence},
        )
    return results


def _moved_into_other_tenant(ws: Workspace, tenant_a: str, box: bytes, name_a: str) -> str:
    """Plant B's ciphertext as a row of A (in a transaction rolled back), then read A."""
    conn = ws.conn
    training = ws.scope(name_a, purpose=Purpose.TRAINING)
    conn.execute("SAVEPOINT attack")
    try:
        conn.execute(
            "INSERT INTO train_records (tenant_id, rid, ts, digest, fingerprint, dek_version, "
            "box, created_at) SELECT ?, randomblob(32), '2026-01-01T00:00:00Z', randomblob(32), "
            "randomblob(32), dek_version, ?, '' FROM tenants WHERE id = ?",
            (tenant_a, box, tenant_a),
        )
        return _expect((DecryptionError,), training.train.read)
    finally:
        conn.execute("ROLLBACK TO attack")
        conn.execute("RELEASE attack")


def _unwrap_with_other_kek(ws: Workspace, tenant_a: str, tenant_b: str) -> str:
    row = ws.conn.execute(
        "SELECT version, kek_id, wrapped FROM data_keys WHERE tenant_id = ? AND purpose = ?",
        (tenant_b, TRAIN_KEY),
    ).fetchone()
    kek_a = ws.conn.execute(
        "SELECT kek_id FROM data_keys WHERE tenant_id = ? AND purpose = ?", (tenant_a, TRAIN_KEY)
    ).fetchone()[0]
    return _expect(
        (DecryptionError, KeyDestroyed),
        lambda: ws.keys.unwrap(tenant_a, int(row[0]), WrappedKey(str(kek_a), bytes(row[2]))),
    )


def _write_quarantined(ws: Workspace, name: str) -> str:
    tenant = ws.tenant(name)
    scope = tenant.scope()
    tenant.quarantine("isolation suite probe")
    try:
        first = _expect((TenantQuarantined,), lambda: tenant.ingest(_probe_records(1)))
        _expect((TenantQuarantined,), lambda: scope.train.append(_probe_records(1)))
        _expect((TenantQuarantined,), lambda: ws.scope(name, purpose=Purpose.TRAINING))
        return first
    finally:
        tenant.release()


def _tamper_audit_copy(ws: Workspace) -> str:
    ws.audit.checkpoint()
    tampers = {
        "edit": "UPDATE audit_events SET details = '{\"forged\":true}' WHERE seq = 2",
        "delete": "DELETE FROM audit_events WHERE seq = 3",
        "swap": (
            "UPDATE audit_events SET seq = -1 WHERE seq = 2;"
            "UPDATE audit_events SET seq = 2 WHERE seq = 3;"
            "UPDATE audit_events SET seq = 3 WHERE seq = -1"
        ),
        "truncate": "DELETE FROM audit_events WHERE seq > (SELECT MAX(seq) - 2 FROM audit_events)",
    }
    found: list[str] = []
    with tempfile.TemporaryDirectory(prefix="silolearn-tamper-") as tmp:
        for label, sql in tampers.items():
            copy = Path(tmp) / label
            copy.mkdir()
            target = sqlite3.connect(copy / DB_FILE)
            ws.conn.backup(target)
            target.executescript(
                "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;" + sql
            )
            target.commit()
            (copy / HEAD_FILE).parent.mkdir(parents=True)
            shutil.copy(ws.path / HEAD_FILE, copy / HEAD_FILE)
            log = AuditLog(
                target,
                actor="verify",
                head_file=copy / HEAD_FILE,
                signing_key=ws.keys.signing_key(),
                checkpoint_every=10**9,
            )
            try:
                found.append(f"{label} at {_seq_of(log)}")
            finally:
                target.close()
    return "detected: " + ", ".join(found)


def _seq_of(log: AuditLog) -> str:
    try:
        log.verify()
    except AuditChainBroken as exc:
        return f"seq {exc.seq}"
    raise _NotBlocked("tampering not detected")


def _read_after_shred(ws: Workspace, name: str, tenant_id: str, rid: bytes, box: bytes) -> str:
    wrapped = ws.conn.execute(
        "SELECT version, kek_id, wrapped FROM data_keys WHERE tenant_id = ? AND purpose = ?",
        (tenant_id, TRAIN_KEY),
    ).fetchone()
    ws.tenants.shred(name)
    return _expect(
        (KeyDestroyed, DecryptionError),
        lambda: ws.keys.unwrap(
            tenant_id, int(wrapped[0]), WrappedKey(str(wrapped[1]), bytes(wrapped[2]))
        ),
    )


# -- metadata in clear -----------------------------------------------------------------------

METADATA_KEYS = ("per_class", "label_counts", "new_label_counts")
"""Keys of the per-class numbers in a version's metrics and lineage: found in clear, they say
per-class metadata is stored unsealed even where no label name is recognised."""
STORED = ("silolearn.db", "silolearn.db-wal", "silolearn.db-shm", "blobs", "audit", "keys", "locks")
"""What silolearn stores in a workspace, and the scan reads (``silolearn.toml`` holds
settings, which name no tenant's data; a report is an export the user asked for)."""
_SHORT = 5
"""A needle shorter than this counts only amid printable text (three bytes either side):
four given bytes occur by chance about once in 4 GiB of random bytes, and ciphertext is
most of a workspace. A longer one counts wherever it is: SQLite stores a row's values side
by side, so a label in a column of its own has no delimiter around it."""


@dataclass(frozen=True, slots=True)
class PlaintextHit:
    """One needle found in clear: which file, where, what, and whose."""

    file: str
    offset: int
    needle: str
    tenant: str | None
    context: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "offset": self.offset,
            "needle": self.needle,
            "tenant": self.tenant,
            "context": self.context,
        }


@dataclass(frozen=True, slots=True)
class MetadataScan:
    """What ``scan_metadata`` read and found."""

    files: tuple[str, ...]
    size: int
    labels: dict[str, int]
    """Label names looked for, per tenant."""
    unscanned: tuple[str, ...]
    hits: tuple[PlaintextHit, ...]

    @property
    def ok(self) -> bool:
        return not self.hits

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": list(self.files),
            "bytes": self.size,
            "labels": self.labels,
            "unscanned": list(self.unscanned),
            "hits": [h.to_dict() for h in self.hits],
        }


def label_names(ws: Workspace) -> dict[str, set[str]]:
    """Every label name of every tenant's records (train, quarantined, eval, golden)."""
    labels: dict[str, set[str]] = {}
    for info in ws.tenants.list():
        if info.status == "shredding":
            continue
        scope = ws.scope(info.name, purpose=Purpose.AUDIT)
        stored = [
            *scope.train.read(),
            *scope.train.quarantined(),
            *scope.eval.read(),
            *scope.eval.golden(),
        ]
        labels[info.name] = {s.record.label for s in stored if s.record.label is not None}
    return labels


def needles_of(label: str) -> set[bytes]:
    """The forms a label name takes in a stored file in clear: its UTF-8 bytes (a label made
    of hex digits only is looked for quoted: hex text is everywhere) and its JSON strings."""
    forms = {json.dumps(label).encode(), json.dumps(label, ensure_ascii=False).encode()}
    if not re.fullmatch(r"[0-9a-f]+", label):
        forms.add(label.encode())
    return forms


def find_in_clear(data: bytes, needle: bytes) -> Iterable[int]:
    """Offsets of ``needle`` in ``data`` (amid printable text, when it is short)."""
    start = data.find(needle)
    while start >= 0:
        around = (
            data[max(0, start - 3) : start] + data[start + len(needle) : start + len(needle) + 3]
        )
        if len(needle) >= _SHORT or all(0x20 <= b < 0x7F for b in around):
            yield start
        start = data.find(needle, start + 1)


def scan_metadata(ws: Workspace) -> MetadataScan:
    """Read every file silolearn stores in the workspace and look for each tenant's label
    names and the per-class metric keys in clear (I6)."""
    ws.audit.checkpoint_if_moved()
    labels = label_names(ws)
    needles: dict[bytes, tuple[str, str | None]] = {}
    for tenant, names in labels.items():
        for name in names:
            needles.update(dict.fromkeys(needles_of(name), (name, tenant)))
    needles.update({json.dumps(k).encode(): (k, None) for k in METADATA_KEYS})
    files = sorted(
        p
        for part in STORED
        for p in ([ws.path / part] if (ws.path / part).is_file() else (ws.path / part).rglob("*"))
        if p.is_file()
    )
    stored = {ws.path / part for part in STORED}
    unscanned = sorted(
        str(p.relative_to(ws.path))
        for p in ws.path.iterdir()
        if p not in stored and p.name != "silolearn.toml"
    )
    hits: list[PlaintextHit] = []
    size = 0
    for path in files:
        data = path.read_bytes()
        size += len(data)
        for needle, (name, owner) in needles.items():
            for offset in find_in_clear(data, needle):
                around = data[max(0, offset - 24) : offset + len(needle) + 24]
                hits.append(
                    PlaintextHit(
                        str(path.relative_to(ws.path)),
                        offset,
                        name,
                        owner,
                        around.decode("utf-8", "replace"),
                    )
                )
    return MetadataScan(
        tuple(str(p.relative_to(ws.path)) for p in files),
        size,
        {t: len(n) for t, n in sorted(labels.items())},
        tuple(unscanned),
        tuple(sorted(hits, key=lambda h: (h.file, h.offset))),
    )
