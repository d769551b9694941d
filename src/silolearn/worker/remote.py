"""The worker's side of its socket: progress events, questions to the coordinator, and its
tenant's data as the coordinator serves it (``silolearn.worker.service``).

``RemoteScope`` reads like the part of a ``TenantScope`` a job uses (``train.read``,
``eval.read``, ``eval.golden``, ``blobs.get`` and ``put``, ``record_id_hash``), but every
call is a request the coordinator answers from a scope of the job's purpose, or refuses
with the typed error the scope raised (``AccessDenied`` for an eval read by a training
job). The worker holds no key: the record-id hashes come with the records.
"""

from __future__ import annotations

import json
from typing import Any

from silolearn import errors
from silolearn.errors import ProtocolViolation, SiloError
from silolearn.records import LabelOrigin, Record
from silolearn.worker.protocol import (
    Channel,
    ProgressMessage,
    RefusalMessage,
    ReplyMessage,
    RequestMessage,
)


class Refused(SiloError):
    """The coordinator refused what the worker asked (e.g. the privacy ledger said no)."""


class Link:
    """Progress events (call it), and questions to the coordinator (``ask``) that block until
    it answers."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        self._channel.send(ProgressMessage(event=event, details=details))

    def ask(self, name: str, details: dict[str, Any]) -> dict[str, Any]:
        self._channel.send(RequestMessage(name=name, details=details))
        message = self._channel.receive()
        if isinstance(message, ReplyMessage):
            return message.answer
        if isinstance(message, RefusalMessage):
            raise Refused(f"the coordinator refused {name!r}: {message.message}", code=message.code)
        got = "nothing" if message is None else f"a {message.type} message"
        raise ProtocolViolation(
            f"the coordinator answered {name!r} with {got}", reason="unexpected"
        )


Send = Link


class Stored:
    """A record as the coordinator served it: its sequence in its store, and the record."""

    __slots__ = ("origin", "record", "seq")

    def __init__(self, seq: int, record: Record, origin: LabelOrigin | None = None) -> None:
        self.seq = seq
        self.record = record
        self.origin = origin or LabelOrigin()
        """Where the label came from (training records; ``bulk`` for eval records)."""


class RemoteScope:
    """One tenant's data, served by the coordinator for the job's purpose."""

    def __init__(self, link: Link, tenant_name: str) -> None:
        self._link = link
        self.tenant_name = tenant_name
        self._hashes: dict[str, bytes] = {}
        self.train = _Records(self, "train")
        self.eval = _EvalRecords(self, "eval")
        self.blobs = _Blobs(self)

    def ask(self, name: str, details: dict[str, Any]) -> dict[str, Any]:
        """A data request; a refusal is raised as the coordinator's own error class."""
        try:
            return self._link.ask(name, details)
        except Refused as exc:
            code = str(exc.details.get("code", ""))
            cls = getattr(errors, code, None)
            if isinstance(cls, type) and issubclass(cls, SiloError):
                raise cls(exc.message) from None
            raise

    def record_id_hash(self, record: Record) -> bytes:
        """The keyed hash of a record's id, as served with it."""
        return self._hashes[record.id]

    def keyed_hashes(self, domain: str, values: list[str]) -> list[bytes]:
        answer = self.ask("scope.keyed_hash", {"domain": domain, "values": values})
        return [bytes.fromhex(h) for h in answer["hashes"]]

    def audit(self, action: str, *, obj: str | None, details: dict[str, Any]) -> None:
        """Ask the coordinator to record an event, under this worker's actor."""
        self.ask("scope.audit", {"action": action, "obj": obj, "details": details})

    def _records(self, details: dict[str, Any]) -> list[Stored]:
        answer = self.ask("scope.records", details)
        rows = json.loads(answer["rows"])
        keys: bytes = answer["keys"]
        width = len(keys) // len(rows) if rows else 0
        if len(rows) * width != len(keys):
            raise ProtocolViolation("the record hashes do not match the records", reason="schema")
        origins: list[LabelOrigin | None] = [None] * len(rows)
        if "origins" in answer:
            origins = [LabelOrigin.from_json(o) for o in json.loads(answer["origins"])]
            if len(origins) != len(rows):
                raise ProtocolViolation(
                    "the label origins do not match the records", reason="schema"
                )
        out: list[Stored] = []
        for i, (seq, rid, text, label, timestamp, meta) in enumerate(rows):
            record = Record(id=rid, text=text, label=label, timestamp=timestamp, meta=meta)
            self._hashes[rid] = keys[i * width : (i + 1) * width]
            out.append(Stored(int(seq), record, origins[i]))
        return out


class _Records:
    def __init__(self, scope: RemoteScope, store: str) -> None:
        self._scope = scope
        self._store = store

    def read(self, *, until: str | None = None, limit: int | None = None) -> list[Stored]:
        return self._scope._records({"store": self._store, "until": until, "limit": limit})


class _EvalRecords(_Records):
    def golden(self) -> list[Stored]:
        return self._scope._records({"store": "golden"})


class _Blobs:
    def __init__(self, scope: RemoteScope) -> None:
        self._scope = scope

    def get(self, name: str) -> bytes:
        data: bytes = self._scope.ask("scope.blob", {"name": name})["data"]
        return data

    def put(self, name: str, data: bytes) -> None:
        self._scope.ask("scope.put_blob", {"name": name, "data": data})
