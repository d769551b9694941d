"""I11: what crosses a worker socket is data, never code.

The channel's format is checked over real sockets; the refusals from real worker processes
(the real ``python -m silolearn.worker`` command, subverted at start-up through a
``sitecustomize`` module on its ``PYTHONPATH``, as code a crafted input made it run could
be) and from a real coordinator's side of the socket."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import pickle
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import record
from silolearn import Workspace
from silolearn.errors import ProtocolViolation, TrainingFailed
from silolearn.monitoring.incidents import Incidents
from silolearn.pipeline import Trainer, list_runs
from silolearn.records import Record
from silolearn.worker import protocol
from silolearn.worker.job import Access, WorkerJob
from silolearn.worker.protocol import (
    Channel,
    ErrorMessage,
    JobMessage,
    Limits,
    ProgressMessage,
    RequestMessage,
    ResultMessage,
    check_params,
    job_message,
    read_job,
)
from silolearn.worker.runner import Worker, run_worker

SRC = Path(__file__).resolve().parents[2] / "src" / "silolearn"


class Touch:
    """Unpickling this creates ``path``: the payload a subverted worker would send."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def frame(data: bytes) -> bytes:
    """One frame as it goes on the wire; also exactly what ``Connection.send`` writes."""
    return struct.pack(">I", len(data)) + data


def envelope(**fields: Any) -> bytes:
    return frame(json.dumps(fields).encode())


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    """A reader's channel and the raw socket its peer writes to."""
    ours, theirs = socket.socketpair()
    channel = Channel(ours)
    yield channel, theirs
    channel.close()
    theirs.close()


def _round_trip(value: dict[str, Any]) -> dict[str, Any]:
    a, b = socket.socketpair()
    with a, b:
        Channel(a).send(ProgressMessage(event="e", details=value))
        message = Channel(b).receive(timeout=10)
    assert isinstance(message, ProgressMessage)
    return message.details


# -- the format ---------------------------------------------------------------------------


def test_arrays_and_bytes_cross_as_raw_frames_and_come_back_equal() -> None:
    arrays = {
        str(dtype): np.arange(24).astype(dtype).reshape(2, 3, 4)
        for dtype in ("bool", "i1", "u1", "<i2", ">u2", "i4", ">i8", "f2", ">f4", "f8", "c8")
    }
    value = {
        "arrays": arrays,
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
        "empty": np.zeros((0, 384), dtype=np.float32),
        "scalar": np.array(2.5),
        "tensor": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "key": bytes(range(256)) * 4,
        "pickle-like": b"\x80\x04\x95",
        "nothing": b"",
    }
    got = _round_trip(value)
    for name, array in arrays.items():
        back = got["arrays"][name]
        assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
        assert np.array_equal(back, array), name
    assert np.array_equal(got["strided"], value["strided"])
    assert got["empty"].shape == (0, 384)
    assert got["scalar"].shape == () and float(got["scalar"]) == 2.5
    assert np.array_equal(got["tensor"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert got["key"] == value["key"] and got["pickle-like"] == b"\x80\x04\x95"
    assert got["nothing"] == b""
    # received arrays are writable: torch.from_numpy takes them without a copy or a warning
    assert got["arrays"]["f8"].flags.writeable


def test_values_json_cannot_hold_are_encoded_explicitly() -> None:
    got = _round_trip(
        {
            "floats": [math.nan, math.inf, -math.inf, 0.5],
            "$frame": 1,
            "$$x": {"$float": "nan"},
            "numpy": [np.float32(1.5), np.int64(7), np.bool_(True)],
            "tuple": (1, "a"),
            "text": "a lone surrogate \ud800, and é",
        }
    )
    assert math.isnan(got["floats"][0]) and got["floats"][1:] == [math.inf, -math.inf, 0.5]
    assert got["$frame"] == 1 and got["$$x"] == {"$float": "nan"}
    assert got["numpy"] == [1.5, 7, True] and type(got["numpy"][1]) is int
    assert got["tuple"] == [1, "a"]
    assert got["text"] == "a lone surrogate \ud800, and é"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_any_tree_of_plain_values_comes_back_as_it_was_sent(value: dict[str, Any]) -> None:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or a == b
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return type(a) is type(b) and a == b

    assert same(_round_trip(value), value)


def test_what_cannot_be_data_is_refused_when_sending() -> None:
    a, b = socket.socketpair()
    with a, b:
        channel = Channel(a)
        for bad in (
            {"o": np.array([object()], dtype=object)},
            {"s": np.array(["text"])},
            {"set": {1, 2}},
            {"path": Path("/etc")},
            {"f": Touch(Path("/nonexistent"))},
            {"k": {1: "integer key"}},
        ):
            with pytest.raises(TypeError, match="cannot be sent"):
                channel.send(ProgressMessage(event="e", details=bad))
        b.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing of a refused message was written
            b.recv(1)


def test_a_job_crosses_without_the_coordinators_access_and_every_field_checked() -> None:
    access = Access(
        workspace=Path("/ws"),
        db_file=Path("/ws/silolearn.db"),
        blob_dir=Path("/ws/blobs/t"),
        tenant_id="t1",
        tenant_name="acme",
        dek_version=3,
        data_key=b"\x80" * 32,
        token_key=b"k" * 32,
        eval_key=b"e" * 32,
    )
    job = WorkerJob(
        action="train",
        tenant_id="t1",
        tenant_name="acme",
        base_path="/model",
        base_sha256="ab" * 32,
        training={"epochs": 40, "max_c": None},
        params={"seed": 1, "trunk": {"artefact": b"weights", "sha256": "x"}},
        workspace="/ws",
        access=access,
    )
    a, b = socket.socketpair()
    with a, b:
        Channel(a).send(job_message(job))
        received = Channel(b).receive(timeout=10)
        assert isinstance(received, JobMessage)
        assert "access" not in received.job
        assert len(received.frames) == 1  # the trunk's artefact: no key crosses
        for secret in (access.data_key, access.token_key, access.eval_key, b"/ws/silolearn.db"):
            assert secret not in json.dumps(received.job, default=str).encode()
        arrived = read_job(received, WorkerJob)
        assert arrived == job and arrived.access is None
    for wrong in (
        {"sandbox": "yes"},
        {"tenant_id": 1},
        {"training": ["not", "a", "dict"]},
        {"unknown_field": 1},
        {"access": {"data_key": "smuggled"}},
    ):
        tampered = JobMessage(job={**received.job, **wrong})
        with pytest.raises(ProtocolViolation, match="a job that fails its schema"):
            read_job(tampered, WorkerJob)
    missing = {k: v for k, v in received.job.items() if k != "base_sha256"}
    with pytest.raises(ProtocolViolation, match="base_sha256"):
        read_job(JobMessage(job=missing), WorkerJob)


# -- refusals at the reader ---------------------------------------------------------------


def _refused(pair: tuple[Channel, socket.socket], wire: bytes, reason: str) -> str:
    channel, peer = pair
    peer.sendall(wire)
    with pytest.raises(ProtocolViolation) as caught:
        channel.receive(timeout=10)
    assert caught.value.details["reason"] == reason, caught.value.message
    return caught.value.message


def test_a_pickle_is_refused_unread(pair: tuple[Channel, socket.socket], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(("result", Touch(marker)), protocol=pickle.HIGHEST_PROTOCOL)
    message = _refused(pair, frame(payload), "pickle")
    assert "pickle" in message and not marker.exists()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (struct.pack(">I", protocol.MAX_ENVELOPE_BYTES + 1), "oversized"),
        (frame(b"\x00\x01 not json"), "malformed"),
        (frame(b"{not json"), "malformed"),
        (
            frame(b'{"type": "progress", "event": "e", "details": {"x": NaN}, "frames": []}'),
            "malformed",
        ),
        (frame(b"{" * 5000 + b"}" * 5000), "malformed"),
        (envelope(type="exec", code="import os"), "unknown-type"),
        (envelope(event="no type"), "unknown-type"),
        (envelope(type="progress", event="e"), "schema"),
        (envelope(type="progress", event="e", details={}, extra=1), "schema"),
        (envelope(type="progress", event=3, details={}), "schema"),
        (envelope(type="result", action="rm", result={}), "schema"),
        (
            envelope(
                type="progress",
                event="e",
                details={"a": {"$frame": 0}},
                frames=[{"kind": "array", "length": 8, "dtype": "|O8", "shape": [1]}],
            ),
            "schema",
        ),
        (
            envelope(
                type="progress",
                event="e",
                details={"a": {"$frame": 0}},
                frames=[{"kind": "array", "length": 8, "dtype": "<f4", "shape": [3]}],
            ),
            "schema",
        ),
        (
            envelope(type="progress", event="e", details={"$exec": "x"}),
            "malformed",
        ),
        (
            envelope(type="progress", event="e", details={"a": {"$frame": 0}})
            + frame(b"never declared"),
            "malformed",
        ),
        (
            envelope(
                type="progress",
                event="e",
                details={"a": {"$frame": 0}, "b": {"$frame": 0}},
                frames=[{"kind": "bytes", "length": 2}],
            )
            + frame(b"xy"),
            "malformed",
        ),
        (
            envelope(
                type="progress", event="e", details={}, frames=[{"kind": "bytes", "length": 2}]
            )
            + frame(b"xy"),
            "malformed",
        ),
        (
            envelope(
                type="progress",
                event="e",
                details={"a": {"$frame": 0}},
                frames=[{"kind": "bytes", "length": 2}],
            )
            + frame(b"xyz"),
            "malformed",
        ),
        (
            envelope(
                type="progress",
                event="e",
                details={"a": {"$frame": 0}},
                frames=[{"kind": "bytes", "length": protocol.MAX_FRAME_BYTES + 1}],
            ),
            "oversized",
        ),
    ],
)
def test_malformed_oversized_and_unknown_messages_are_refused(
    pair: tuple[Channel, socket.socket], wire: bytes, reason: str
) -> None:
    _refused(pair, wire, reason)


@pytest.mark.parametrize(
    ("details", "refused"),
    [
        ({"a": b"x" * 100, "b": b"y" * 50}, None),
        ({"a": b"x" * 101}, "a frame of 101 bytes"),
        ({"a": b"x" * 100, "b": b"y" * 51}, "a message of 151 bytes"),
        ({"a": [b"1", b"2", b"3"]}, "3 frames"),
        ({"text": "z" * 5000}, "an envelope of"),
    ],
)
def test_the_limits_are_the_readers_to_set(details: dict[str, Any], refused: str | None) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        strict = Channel(ours, limits=Limits(envelope=4096, frame=100, message=150, frames=2))
        Channel(theirs).send(ProgressMessage(event="e", details=details))
        if refused is None:
            assert strict.receive(timeout=10) is not None
        else:
            with pytest.raises(ProtocolViolation, match=refused):
                strict.receive(timeout=10)


def test_a_message_that_never_arrives_whole_times_out(
    pair: tuple[Channel, socket.socket],
) -> None:
    channel, peer = pair
    peer.sendall(struct.pack(">I", 100) + b'{"type":')
    with pytest.raises(TimeoutError):
        channel.receive(timeout=0.2)


def test_neither_side_of_the_channel_can_unpickle_or_evaluate() -> None:
    """The coordinator's and the worker's code of the exchange (every module of the worker
    package) import nothing that loads
    code from bytes and call no evaluator; ``np.load`` only with ``allow_pickle=False``,
    ``torch.load`` only with ``weights_only=True``."""
    banned_modules = {"pickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"}
    modules = sorted((SRC / "worker").glob("*.py"))
    assert {"protocol.py", "runner.py", "service.py", "remote.py", "main.py"} <= {
        p.name for p in modules
    }
    for path in modules:
        name = path.name
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = {alias.name.split(".")[0] for alias in node.names}
                assert not imported & banned_modules, (name, imported)
                assert "multiprocessing" not in imported, name
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in banned_modules, name
                assert not (node.module or "").startswith("multiprocessing"), name
            elif isinstance(node, ast.Call):
                func, call = node.func, ast.unparse(node)
                if isinstance(func, ast.Name):
                    assert func.id not in {"eval", "exec", "compile", "__import__"}, (name, call)
                elif isinstance(func, ast.Attribute) and func.attr == "loads":
                    assert ast.unparse(func) == "json.loads", (name, call)
                elif ast.unparse(func) in {"np.load", "numpy.load", "torch.load"}:
                    keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    safe = keywords.get("allow_pickle") == "False"
                    assert safe or keywords.get("weights_only") == "True", (name, call)


# -- real processes -----------------------------------------------------------------------

SUBVERT = """
import os, sys, time
if "--fd" in sys.argv:  # a silolearn worker: what a crafted input could make it do
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    try:
        os.read(fd, 4)  # the job is arriving: answer it
        os.write(fd, {wire!r})
        time.sleep(120)
    finally:
        os._exit(0)
"""


def subverted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: bytes) -> None:
    """Every worker started from now on writes ``wire`` on its socket when its job comes."""
    site = tmp_path / "subverted-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(SUBVERT.format(wire=wire)))
    monkeypatch.setenv("PYTHONPATH", str(site))


def _job(tmp_path: Path) -> WorkerJob:
    return WorkerJob(
        action="train",
        tenant_id="t1",
        tenant_name="acme",
        base_path=str(tmp_path / "model"),
        base_sha256="0" * 64,
        training={},
        params={
            "kind": "head",
            "seed": 1,
            "cutoff": "2026-01-01T00:00:00Z",
            "version_hint": 1,
            "parent": None,
            "canary_seed": b"s" * 32,
        },
        workspace=str(tmp_path),
    )


def test_I11_nothing_crossing_a_worker_socket_is_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real worker sends the coordinator, as its result, the pickle the old channel would
    have loaded (``Connection.send`` framing); loading it creates a file. The coordinator
    refuses it unread, kills the worker and raises ``ProtocolViolation``: no file."""
    marker = tmp_path / "coordinator-ran-worker-code"
    payload = pickle.dumps(("result", Touch(marker)), protocol=pickle.HIGHEST_PROTOCOL)
    # the payload is live: loaded (in a throw-away interpreter) it creates its file
    control = tmp_path / "control"
    live = pickle.dumps(Touch(control), protocol=pickle.HIGHEST_PROTOCOL)
    loader = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", loader], input=live, check=True)
    assert control.exists()

    subverted(tmp_path, monkeypatch, frame(payload))
    worker = Worker()
    with pytest.raises(ProtocolViolation) as caught:
        run_worker(_job(tmp_path), timeout=60, worker=worker)
    error = caught.value
    assert isinstance(error, TrainingFailed) and error.details["reason"] == "pickle"
    assert error.details["head"].startswith("80")
    assert "the train worker of 'acme'" in error.message and "was killed" in error.message
    assert worker.process.returncode == -9  # killed, not left to its 120 s sleep
    assert not marker.exists()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (struct.pack(">I", 3 * 2**30), "oversized"),
        (frame(b"print('hello')"), "malformed"),
        (envelope(type="shell", command="id"), "unknown-type"),
        (envelope(type="job", job={}), "unexpected"),
        (envelope(type="result", action="train", result={"artefact": "not bytes"}), "schema"),
        (
            envelope(
                type="result",
                action="evaluate",
                result={"eval_records": 1, "window": {}, "embed_seconds": 0, "versions": {}},
            ),
            "unexpected",
        ),
    ],
)
def test_a_worker_that_sends_what_is_not_a_message_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: bytes, reason: str
) -> None:
    subverted(tmp_path, monkeypatch, wire)
    worker = Worker()
    with pytest.raises(ProtocolViolation) as caught:
        run_worker(_job(tmp_path), timeout=60, worker=worker)
    assert caught.value.details["reason"] == reason, caught.value.message
    assert worker.process.returncode == -9


def test_a_worker_refuses_a_pickled_job_and_runs_none_of_it(tmp_path: Path) -> None:
    """The other direction: a real worker process sent a pickle for a job answers with a
    typed error, and the code in the pickle never ran."""
    marker = tmp_path / "worker-ran-coordinator-code"
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "silolearn.worker", "--fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    with ours:
        ours.sendall(frame(pickle.dumps(Touch(marker), protocol=2)))
        answer = Channel(ours).receive(timeout=60)
    assert process.wait(timeout=60) == 0
    assert isinstance(answer, ErrorMessage) and answer.code == "ProtocolViolation"
    assert answer.details["reason"] == "pickle"
    assert not marker.exists()


def test_a_job_whose_parameters_are_off_their_schema_is_refused_at_both_ends(
    tmp_path: Path,
) -> None:
    """Each action's parameters are typed: the coordinator refuses to send a job off its
    schema (a bug on its side), and a worker sent one anyway answers with a typed error
    before it reads anything of the tenant."""
    good = _job(tmp_path)
    check_params("train", good.params)
    wrong = {**good.params, "seed": "1"}
    for params in (wrong, {**good.params, "extra": 1}, {"kind": "head"}):
        with pytest.raises(ProtocolViolation, match="train parameters that fail their schema"):
            check_params("train", params)
    worker = Worker()
    with pytest.raises(ProtocolViolation, match="seed"):
        run_worker(dataclasses.replace(good, params=wrong), timeout=60, worker=worker)
    assert worker.process.wait(timeout=60) is not None  # the process that never got it is gone

    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "silolearn.worker", "--fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    with ours:
        Channel(ours).send(job_message(dataclasses.replace(good, params=wrong)))
        answer = Channel(ours).receive(timeout=60)
    assert process.wait(timeout=60) == 0
    assert isinstance(answer, ErrorMessage) and answer.code == "ProtocolViolation"
    assert "train parameters that fail their schema" in answer.message


def test_requests_and_replies_carry_arrays_both_ways(tmp_path: Path) -> None:
    """A real worker process asks with arrays in its question and gets arrays back (the
    shared layer's steps do this), then returns a result that fits its action's schema."""
    script = textwrap.dedent(
        """
        import socket, sys
        import numpy as np
        from silolearn.worker.protocol import (
            Channel, ReplyMessage, RequestMessage, ResultMessage, JobMessage,
        )
        channel = Channel(socket.socket(fileno=int(sys.argv[1])))
        job = channel.receive()
        assert isinstance(job, JobMessage)
        channel.send(RequestMessage(name="step", details={"sums": np.ones((2, 3), "<f4")}))
        reply = channel.receive()
        assert isinstance(reply, ReplyMessage)
        params = reply.answer["params"]
        steps = int(params.sum())
        channel.send(ResultMessage(action="shared", result={
            "records_digest": "d", "worker_pid": 1, "steps": steps, "embedded": 0,
            "sandbox": {"abi": 0},
        }))
        """
    )
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(theirs.fileno())], pass_fds=(theirs.fileno(),)
    )
    theirs.close()
    with ours:
        channel = Channel(ours)
        channel.send(job_message(_job(tmp_path)))
        question = channel.receive(timeout=60)
        assert isinstance(question, RequestMessage)
        assert question.details["sums"].dtype == np.float32
        tripled = torch.from_numpy(question.details["sums"]) * 3
        channel.send(protocol.ReplyMessage(answer={"params": tripled}))
        result = channel.receive(timeout=60)
    assert process.wait(timeout=60) == 0
    assert isinstance(result, ResultMessage)
    assert protocol.check_result("shared", result.result)["steps"] == 18


# -- the round ----------------------------------------------------------------------------


def test_I11_a_round_whose_worker_sends_a_pickle_fails_and_opens_an_incident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round turns the refusal into a failed run, an audited SEV1 incident, and a
    quarantine of the tenant's training; the pickle's code never runs."""
    marker = tmp_path / "coordinator-ran-worker-code"
    ws = Workspace.init(tmp_path / "ws", actor="test")
    try:
        ws.create_tenant("acme")
        rows = [record(f"r{i}", f"training text number {i}", label="ab"[i % 2]) for i in range(40)]
        ws.scope("acme").train.append([Record.model_validate(r) for r in rows])
        payload = pickle.dumps(("result", Touch(marker)), protocol=pickle.HIGHEST_PROTOCOL)
        subverted(tmp_path, monkeypatch, frame(payload))
        with pytest.raises(ProtocolViolation, match="a pickle"):
            Trainer(ws).train("acme")
        assert not marker.exists()
        assert [r["status"] for r in list_runs(ws, "acme")] == ["failed"]
        (incident,) = Incidents(ws).list(tenant="acme")
        assert (incident["severity"], incident["kind"]) == ("SEV1", "worker-protocol")
        assert incident["evidence"]["reason"] == "pickle"
        assert ws.tenants.get("acme").status == "quarantined"
        actions = [(e.action, e.details) for e in ws.audit.events()]
        failed = [d for a, d in actions if a == "train.failed"]
        assert [d["error"] for d in failed] == ["ProtocolViolation"]
        assert "a pickle" in failed[0]["message"]
        assert list_runs(ws, "acme")[0]["error"] == "ProtocolViolation"  # the class, no text
        assert any(a == "incident.open" and d["kind"] == "worker-protocol" for a, d in actions)
    finally:
        ws.close()
