"""The record parser: strict schema, line numbers, and no crash on any input (property tests)."""

from __future__ import annotations

import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from silolearn.errors import InvalidInput
from silolearn.ingest.parse import parse
from silolearn.records import Record, normalise_timestamp


def test_timestamps_are_normalised_to_utc() -> None:
    assert normalise_timestamp("2025-03-01") == "2025-03-01T00:00:00.000000Z"
    assert normalise_timestamp("2025-03-01T12:00:00+02:00") == "2025-03-01T10:00:00.000000Z"


def test_duplicate_json_keys_are_rejected() -> None:
    [line] = parse(io.StringIO('{"id": "1", "id": "2", "text": "x", "timestamp": "2025-01-01"}'))
    assert line.record is None and "duplicate key 'id'" in (line.error or "")


def test_blank_lines_are_skipped_but_counted() -> None:
    lines = list(parse(io.StringIO('\n\n{"id":"1","text":"x","timestamp":"2025-01-01"}\n')))
    assert [p.line for p in lines] == [3]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=80),
            json_values.map(json.dumps),
            st.fixed_dictionaries(
                {
                    "id": st.text(max_size=10),
                    "text": st.text(max_size=30),
                    "timestamp": st.text(max_size=25),
                },
                optional={"label": st.none() | st.text(max_size=5), "meta": json_values},
            ).map(json.dumps),
        ),
        max_size=12,
    )
)
def test_any_input_yields_records_or_reasons_never_a_crash(lines: list[str]) -> None:
    text = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines)
    try:
        parsed = list(parse(io.StringIO(text)))
    except InvalidInput:
        return
    for item in parsed:
        assert (item.record is None) != (item.error is None)
        if item.record is not None:
            assert isinstance(item.record, Record) and item.record.text.strip()
        else:
            assert item.error
