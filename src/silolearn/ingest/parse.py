"""Reading records from JSON lines or CSV, line by line, keeping each line's number.

A bad line yields its number and a reason (never its content); it never stops the good
lines from being read.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from pydantic import ValidationError

from silolearn.errors import InvalidInput
from silolearn.records import Record, describe_validation_error, record_from_mapping

FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("id", "text", "label", "timestamp", "meta")


@dataclass(frozen=True, slots=True)
class ParsedLine:
    line: int
    record: Record | None = None
    error: str | None = None


def detect_format(source: object, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        return fmt
    if isinstance(source, str | Path) and str(source) != "-":
        return "csv" if Path(source).suffix.lower() == ".csv" else "jsonl"
    return "jsonl"


def parse(source: Any, *, fmt: str | None = None) -> Iterator[ParsedLine]:
    """Records from a path, ``"-"`` (stdin), a text stream, or an iterable of dicts/lines."""
    kind = detect_format(source, fmt)
    if isinstance(source, str | Path):
        if str(source) == "-":
            yield from _parse_stream(sys.stdin, kind)
            return
        path = Path(source)
        try:
            handle = path.open(encoding="utf-8", newline="")
        except FileNotFoundError:
            raise InvalidInput(f"no such file: {path}", path=str(path)) from None
        except IsADirectoryError:
            raise InvalidInput(f"{path} is a directory, not a records file") from None
        with handle:
            yield from _parse_stream(handle, kind)
        return
    if isinstance(source, io.TextIOBase):
        yield from _parse_stream(cast(IO[str], source), kind)
        return
    yield from _parse_items(source)


def _parse_stream(stream: IO[str], kind: str) -> Iterator[ParsedLine]:
    try:
        if kind == "csv":
            yield from _parse_csv(stream)
        else:
            yield from _parse_jsonl(stream)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input is not UTF-8 text (byte {exc.start})") from None


def _parse_items(items: Iterable[Any]) -> Iterator[ParsedLine]:
    for number, item in enumerate(items, start=1):
        if isinstance(item, str):
            if item.strip():
                yield _parse_json_line(number, item)
        elif isinstance(item, Record):
            yield ParsedLine(number, record=item)
        else:
            yield _validated(number, item)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _parse_json_line(number: int, line: str) -> ParsedLine:
    try:
        data = json.loads(line, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        return ParsedLine(number, error=f"malformed JSON: {exc.msg} (column {exc.colno})")
    except ValueError as exc:
        return ParsedLine(number, error=f"malformed JSON: {exc}")
    return _validated(number, data)


def _validated(number: int, data: Any) -> ParsedLine:
    try:
        return ParsedLine(number, record=record_from_mapping(data))
    except ValidationError as exc:
        return ParsedLine(number, error=describe_validation_error(exc))
    except ValueError as exc:
        return ParsedLine(number, error=str(exc))


def _parse_jsonl(stream: IO[str]) -> Iterator[ParsedLine]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield _parse_json_line(number, line)


def _parse_csv(stream: IO[str]) -> Iterator[ParsedLine]:
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if unknown:
        raise InvalidInput(
            f"CSV header has unknown columns {unknown[:5]}: allowed are {', '.join(CSV_COLUMNS)}"
        )
    missing = [c for c in ("id", "text", "timestamp") if c not in header]
    if missing:
        raise InvalidInput(f"CSV header lacks required columns {missing}")
    if len(set(header)) != len(header):
        raise InvalidInput("CSV header repeats a column")
    start = reader.line_num + 1
    for row in reader:
        number, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield ParsedLine(
                number, error=f"CSV row has {len(row)} cells, the header has {len(header)}"
            )
            continue
        data: dict[str, Any] = dict(zip(header, row, strict=True))
        if data.get("label") == "":
            data["label"] = None
        if "meta" in data:
            if data["meta"] == "":
                data["meta"] = {}
            else:
                try:
                    data["meta"] = json.loads(data["meta"])
                except json.JSONDecodeError as exc:
                    yield ParsedLine(number, error=f"meta: malformed JSON: {exc.msg}")
                    continue
        yield _validated(number, data)
