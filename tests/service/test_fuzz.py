"""The API fuzzed against a real server process (I10): Schemathesis, driven by the server's
own ``/openapi.json``, sends valid and invalid requests to every operation with valid
tokens and finds no 5xx and no error without its JSON body; hypothesis-made ingest bodies
(valid and invalid JSON lines mixed, unicode, texts over the size limit, ids repeated
within a body and across bodies) never lose a record reported accepted.

The server here is a module of its own: its rate limit is lifted (the fuzzer would spend
its examples on 429s otherwise) and a third tenant, ``gamma``, with a handful of records,
takes the fuzzed rounds, so that a fuzzed ``POST .../rounds`` trains on little. Both runs
are bounded: a fixed number of examples per operation, derandomised (the same cases every
run), no example database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from service_helpers import SERVER_ENV, Server, start_server, stop_server
from silolearn import Workspace
from silolearn.datasets import rotten_tomatoes, sample
from silolearn.storage.scope import Purpose
from silolearn.tenancy.access import ROLES

FUZZ_ENV = {
    **SERVER_ENV,
    "SILOLEARN_SERVICE__RATE_PER_SECOND": "100000",
    "SILOLEARN_SERVICE__RATE_BURST": "100000",
    "SILOLEARN_INGEST__MAX_TEXT_BYTES": "2000",
}
EXAMPLES_PER_OPERATION = 20
"""Per operation and per mode (positive, negative): ~20 operations, ~500 requests."""
INGEST_EXAMPLES = 30
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("fuzz")
    path = root / "ws"
    rows = sample(rotten_tomatoes(), 130, seed=11)
    tokens: dict[tuple[str | None, str], str] = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FUZZ_ENV.items():
            patch.setenv(name, value)
        with Workspace.init(path, actor="test") as ws:
            for tenant in ("alpha", "gamma"):
                ws.create_tenant(tenant)
            ws.tenant("alpha").ingest(rows[:120])
            ws.tenant("gamma").ingest(rows[120:])
            access = ws.access()
            for tenant in ("alpha", "gamma"):
                tokens[(tenant, "all")] = access.grant(
                    tenant=tenant, roles=list(ROLES), duration=timedelta(hours=2), reason="fuzz"
                ).token
            tokens[(None, "all")] = access.grant(
                tenant=None, roles=list(ROLES), duration=timedelta(hours=2), reason="fuzz"
            ).token
        running = start_server(path, root / "server.log", FUZZ_ENV)
    running.tokens = tokens
    try:
        job = running.call(
            "POST", "/v1/tenants/alpha/rounds", tokens[("alpha", "all")], json={"seed": 1}
        )
        assert job.status_code == 202, job.text
        done = running.wait_for_job(job.json()["id"], tokens[("alpha", "all")])
        assert done["state"] == "succeeded" and done["outcome"] == "active", done
        yield running
    finally:
        stop_server(running)


def _problems(response: schemathesis.Response) -> list[str]:
    """What is wrong with one answer: a 5xx, or a 4xx without the JSON error body."""
    found = []
    if response.status_code >= 500:
        found.append(f"status {response.status_code}")
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        kind = response.headers.get("content-type", [""])[0]
        if not kind.startswith("application/json"):
            found.append(f"content-type {kind!r}")
        if not isinstance(body, dict) or set(body) != {"error", "message", "details"}:
            found.append("no JSON error body")
        elif "Traceback" in response.text:
            found.append("a traceback in the body")
    return found


def _fuzz(
    server: Server, operation: Any, mode: GenerationMode, session: requests.Session
) -> list[str]:
    """The problems of one operation's cases in one mode."""
    found: list[str] = []
    alpha, gamma, workspace = (server.token(t, "all") for t in ("alpha", "gamma", None))
    # (token, tenant named in the path; None: the fuzzer's), mostly a tenant's own token
    pairs = [(alpha, "alpha"), (gamma, "gamma"), (workspace, "alpha"), (alpha, "gamma")]
    if operation.path.endswith("/rounds"):
        # rounds only on gamma: a fuzzed round of alpha would train on all it has
        pairs = [(gamma, "gamma"), (workspace, "gamma"), (alpha, "gamma")]
    pairs.append((alpha, None))
    named = any(p.name == "tenant" for p in operation.path_parameters)

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode), pair=st.sampled_from(pairs))
    def check(case: Any, pair: tuple[str, str | None]) -> None:
        token, tenant = pair
        if named and tenant is not None:
            case.path_parameters = {**(case.path_parameters or {}), "tenant": tenant}
        response = case.call(
            base_url=server.url,
            session=session,
            headers={"Authorization": f"Bearer {token}"},
            timeout=300,
        )
        found.extend(
            f"{operation.label} ({mode.value}): {problem}: "
            f"{case.as_curl_command()[:400]} -> {response.text[:300]}"
            for problem in _problems(response)
        )

    try:
        check()
    except Unsatisfiable:
        # an operation with nothing to get wrong (no parameters, no body) has no negative case
        assert mode is GenerationMode.NEGATIVE, operation.label
    return found


def test_schemathesis_finds_no_5xx_and_no_error_without_a_json_body(fuzzed: Server) -> None:
    """Every operation of ``/openapi.json``, positive and negative cases, each sent with a
    token that holds every role (alpha's, gamma's or the workspace's) on a path naming
    alpha, gamma or what the fuzzer made up."""
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [o.label for o in operations]
    failures: list[str] = []
    with requests.Session() as session:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += _fuzz(fuzzed, operation, mode, session)
    assert not failures, "\n".join(failures[:20])


# ------------------------------------------------------------------ fuzzed ingest bodies

# fresh ids mostly, and a few that recur within and across bodies
_ids = st.one_of(
    st.integers(0, 10**9).map(lambda i: f"fz-{i}"),
    st.integers(0, 10**9).map(lambda i: f"fz-{i}"),
    st.sampled_from(["fz-a", "fz-b", "fz-c"]),
    st.text(min_size=1, max_size=40).map(lambda s: "fz-" + s),
)
# printable texts, and unicode ones of up to ~2,400 bytes, some over the 2,000-byte limit
_texts = st.text(min_size=1, max_size=300).filter(str.strip) | st.text(
    alphabet="日本語のテキストと絵文字😀 ", min_size=3, max_size=700
).filter(str.strip)
_timestamps = st.sampled_from(["2025-06-01T12:00:00Z", "2025-06-02", "2025-06-03T01:02:03+02:00"])
_records = st.fixed_dictionaries(
    {
        "id": _ids,
        "text": _texts,
        "label": st.sampled_from(["fresh", "rotten"]),
        "timestamp": _timestamps,
    },
    optional={"meta": st.dictionaries(st.text(max_size=8), st.integers(), max_size=2)},
)
_valid = _records.map(json.dumps) | _records.map(lambda r: json.dumps(r, ensure_ascii=False))
_invalid = st.one_of(
    st.text(max_size=80).filter(lambda s: "\n" not in s and "\r" not in s),  # mostly not JSON
    st.sampled_from(["", "{}", "[]", "null", '{"id": 1}', '{"id": "x", "text": "y"']),
    _records.map(lambda r: json.dumps({**r, "colour": "red"})),
    _records.map(lambda r: json.dumps({**r, "timestamp": "not a time"})),
    _records.map(lambda r: json.dumps({**r, "text": " "})),
)
# three valid lines in four
_lines = st.one_of(_valid, _valid, _valid, _invalid)


def _huge(count: int) -> list[str]:
    """``count`` labelled records of ~1,750 bytes of unicode each, one id repeated."""
    text = "長い文章と絵文字😀 " * 60
    return [
        json.dumps(
            {
                "id": f"huge-{min(i, count - 2)}",
                "text": f"{i} {text}",
                "label": "fresh",
                "timestamp": "2025-06-04",
            },
            ensure_ascii=False,
        )
        for i in range(count)
    ]


def _stored(server: Server, ids: set[str]) -> set[str]:
    """Those of ``ids`` that alpha's train or eval store holds."""
    with Workspace.open(server.path, actor="test") as ws:
        scope = ws.scope("alpha", purpose=Purpose.AUDIT)
        by_hash = {scope.keyed_hash("rid", i): i for i in ids}
        found = scope.train.existing(by_hash) | scope.eval.existing(by_hash)
    return {by_hash[h] for h in found}


def _ids_in(lines: list[str]) -> set[str]:
    ids = set()
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            ids.add(data["id"])
    return ids


def _count(server: Server) -> int:
    with Workspace.open(server.path, actor="test") as ws:
        shown = ws.tenant("alpha").show()
    return int(shown["train"]) + int(shown["eval"])


def test_fuzzed_ingest_bodies_never_lose_a_record_reported_accepted(fuzzed: Server) -> None:
    """After each body: every line the report does not reject is stored (accepted now or a
    duplicate of what was), the store grew by exactly the count accepted, and the counts
    add up."""
    token = fuzzed.token("alpha", "all")

    @settings(
        max_examples=INGEST_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(lines=st.lists(_lines, min_size=1, max_size=120), as_json=st.booleans())
    @example(lines=_huge(30), as_json=False)  # ~53 kB of unicode lines, under the body limit
    @example(lines=_huge(30), as_json=True)  # the same again: every one a duplicate
    @example(lines=_huge(45), as_json=False)  # over the body limit: 413, nothing stored
    def check(lines: list[str], as_json: bool) -> None:
        before = _count(fuzzed)
        stored_before = _stored(fuzzed, _ids_in(lines))
        items: list[Any] = lines
        if as_json:
            # the JSON form: each parsed line an item; unparsable ones as strings
            items = []
            for line in lines:
                try:
                    items.append(json.loads(line))
                except ValueError:
                    items.append(line)
            response = fuzzed.call(
                "POST", "/v1/tenants/alpha/records", token, json={"records": items}
            )
        else:
            response = fuzzed.call(
                "POST",
                "/v1/tenants/alpha/records",
                token,
                content="\n".join(lines).encode(),
                headers={"content-type": "application/x-ndjson"},
            )
        if response.status_code == 413:  # over the body limit: refused whole, nothing stored
            assert _count(fuzzed) == before
            return
        assert response.status_code == 200, response.text
        report = response.json()
        rejected = {e["line"] for e in report["errors"]}
        kept: set[str] = set()
        for number, item in enumerate(items if as_json else lines, start=1):
            if number in rejected or (isinstance(item, str) and not item.strip()):
                continue  # rejected, or a blank line (skipped, as by silolearn ingest)
            kept.add((json.loads(item) if isinstance(item, str) else item)["id"])
        assert report["rejected"] == len(rejected)
        assert report["contaminated"] == 0  # every record is labelled: none is dropped
        assert report["accepted"] + report["duplicates"] == len(kept), report
        after = _stored(fuzzed, kept)
        # stored now: those accepted and those stored before (duplicates); what is not
        # stored under its id is a text already in training under another id (a repeat)
        assert len(after - stored_before) == report["accepted"], report
        assert len(kept - after) <= report["repeats"], report
        assert _count(fuzzed) == before + report["accepted"]

    check()
