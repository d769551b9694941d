"""The record schema: ``{"id", "text", "label", "timestamp", "meta"}``, validated strictly.

Unknown fields are rejected, never silently dropped. Error messages name the field and the
rule, never the offending value: they reach the audit log, which must hold no record text.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

MetaValue = StrictBool | StrictInt | StrictFloat | StrictStr


class Record(BaseModel):
    """One production record of a tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    text: StrictStr
    label: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None
    timestamp: StrictStr
    meta: dict[Annotated[StrictStr, Field(max_length=128)], MetaValue] = Field(
        default_factory=dict, max_length=64
    )

    @field_validator("id")
    @classmethod
    def _id_printable(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 for c in value):
            raise ValueError("id must be non-blank and free of control characters")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value

    @field_validator("timestamp")
    @classmethod
    def _timestamp_iso(cls, value: str) -> str:
        return normalise_timestamp(value)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))


def normalise_timestamp(value: str) -> str:
    """ISO-8601 date or date-time; naive times are UTC; returned as UTC with a ``Z``."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("timestamp is not ISO-8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line reason naming fields and rules but no input values."""
    parts: list[str] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p)[:64] for p in err["loc"]) or "record"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing field {loc!r}")
        elif err["type"] == "value_error":
            parts.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def record_from_mapping(data: Any) -> Record:
    if not isinstance(data, dict):
        raise ValueError("a record is a JSON object")
    return Record.model_validate(data)


class LabelSource(enum.StrEnum):
    """Where a training record's label came from."""

    HUMAN = "human"
    """A labelled record a person gave (feedback that is a new record, ``--source human``)."""
    FEEDBACK = "feedback"
    """Feedback naming a served prediction: the label a client says is right for it."""
    ACTIVE = "active"
    """A person's answer to an item of the tenant's label queue."""
    BULK = "bulk"
    """Bulk ingest of labelled files or bodies (the default, and every record stored before
    provenance was kept)."""


@dataclass(frozen=True, slots=True)
class LabelOrigin:
    """A training record's label provenance, sealed with the record (``storage.scope``).

    ``confirms``: the label equals the prediction it answers (feedback only);
    ``reviewed``: a person checked it (always so for ``human`` and ``active`` labels)."""

    source: LabelSource = LabelSource.BULK
    reviewed: bool = False
    confirms: bool = False

    @property
    def self_confirmed(self) -> bool:
        """Feedback that repeats the model's own answer without anyone checking it: it
        teaches the model nothing it did not believe, and amplifies its mistakes."""
        return self.source is LabelSource.FEEDBACK and self.confirms and not self.reviewed

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source.value, "reviewed": self.reviewed, "confirms": self.confirms},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> LabelOrigin:
        fields = json.loads(text)
        return cls(
            LabelSource(fields["source"]), bool(fields["reviewed"]), bool(fields["confirms"])
        )
