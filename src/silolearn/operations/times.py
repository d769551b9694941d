"""Moments as the scheduler stores them: UTC ISO 8601 with microseconds and ``Z``, the
audit log's form, which sorts as text in time order."""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("a moment is timezone-aware (take it from silolearn.clock)")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
