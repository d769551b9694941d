"""The worker channel's wire format: typed messages of data, never code (invariant I11).

Whatever crosses a worker's socket, in either direction, is read as data: nothing is
unpickled, unmarshalled or evaluated, so a worker subverted by its input cannot run code in
the coordinator, the one process that holds every tenant's keys.

On the wire every frame is a 4-byte big-endian length and that many bytes. A message is one
envelope frame (a UTF-8 JSON object: its first byte is ``{``) followed by exactly the binary
frames its ``frames`` list declares, in order::

    {"type": "result", "action": "train", "result": {"artefact": {"$frame": 0}, ...},
     "frames": [{"kind": "bytes", "length": 81234}]}
    <4-byte length><81234 raw bytes>

Values the envelope cannot hold as JSON are encoded explicitly: ``bytes`` as a ``bytes``
frame; a numpy array (or anything exposing ``__array__``, e.g. a CPU tensor) of a numeric
dtype as an ``array`` frame of its raw little-endian bytes, dtype and shape in the frame's
entry (object, string and record dtypes are refused); a non-finite float as
``{"$float": "nan" | "inf" | "-inf"}``. A dict key that starts with ``$`` is sent with one
more ``$``. Tuples arrive as lists and numpy scalars as Python numbers; any other object
is refused when sending (``TypeError``).

On receipt the envelope is checked against the schema of its ``type`` (job, progress,
request, reply, refusal, result, error) and against ``Limits``; anything else (a pickle, an
oversized or malformed frame, an unknown type, a frame referenced twice or never) raises
``ProtocolViolation`` before any of it is used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import select
import socket
import struct
import time
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from silolearn.errors import ProtocolViolation

MAX_ENVELOPE_BYTES = 64 * 2**20
"""The JSON envelope of one message."""
MAX_FRAME_BYTES = 2**30
"""One binary frame: an artefact (a LoRA adapter is a few MB), a key, an array."""
MAX_MESSAGE_BYTES = 2 * 2**30
"""One message: its envelope and all its frames."""
MAX_FRAMES = 4096
"""Binary frames in one message."""

PICKLE_PROTO = 0x80
"""The first opcode of every pickle of protocol 2 or later."""

ACTIONS = ("train", "evaluate", "gates", "probe", "shared")
NUMERIC_DTYPES = frozenset(
    {"|b1", "|i1", "|u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8"}
    | {"<c8", "<c16"}
)
"""The array dtypes a frame may carry, as little-endian ``numpy.dtype.str``."""

_LENGTH = struct.Struct(">I")
_FRAME = "$frame"
_FLOAT = "$float"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True)
class Limits:
    """What a reader accepts from its peer; a message over any of them is refused."""

    envelope: int = MAX_ENVELOPE_BYTES
    frame: int = MAX_FRAME_BYTES
    message: int = MAX_MESSAGE_BYTES
    frames: int = MAX_FRAMES


# -- the envelope -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FrameSpec(_Strict):
    """One binary frame of a message: raw bytes, or a numeric array's little-endian bytes."""

    kind: Literal["bytes", "array"]
    length: int = Field(ge=0)
    dtype: str | None = None
    shape: list[int] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FrameSpec:
        if self.kind == "bytes":
            if self.dtype is not None or self.shape is not None:
                raise ValueError("a bytes frame has no dtype or shape")
            return self
        if self.dtype not in NUMERIC_DTYPES:
            raise ValueError(f"an array frame of dtype {self.dtype!r} (numeric dtypes only)")
        if self.shape is None or any(n < 0 for n in self.shape):
            raise ValueError("an array frame needs a shape of non-negative sizes")
        size = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if size != self.length:
            raise ValueError(
                f"shape {self.shape} of {self.dtype} is {size} bytes, not {self.length}"
            )
        return self


class _Envelope(_Strict):
    frames: list[FrameSpec] = []


class JobMessage(_Envelope):
    """Coordinator to worker, once: the job (``WorkerJob``'s fields)."""

    type: Literal["job"] = "job"
    job: dict[str, Any]


class ProgressMessage(_Envelope):
    """Worker to coordinator: something happened (``started``, ``embed``, ``epoch``...)."""

    type: Literal["progress"] = "progress"
    event: str
    details: dict[str, Any]


class RequestMessage(_Envelope):
    """Worker to coordinator: a question it waits on (a DP plan, a shared-layer step)."""

    type: Literal["request"] = "request"
    name: str
    details: dict[str, Any]


class ReplyMessage(_Envelope):
    """Coordinator to worker: the answer to its request."""

    type: Literal["reply"] = "reply"
    answer: dict[str, Any]


class RefusalMessage(_Envelope):
    """Coordinator to worker: its request was refused (the error's class name and text)."""

    type: Literal["refusal"] = "refusal"
    code: str
    message: str


class ResultMessage(_Envelope):
    """Worker to coordinator, last: what the action computed (``RESULTS[action]``)."""

    type: Literal["result"] = "result"
    action: Literal["train", "evaluate", "gates", "probe", "shared"]
    result: dict[str, Any]


class ErrorMessage(_Envelope):
    """Worker to coordinator, last: the action failed (an error class name, text, details)."""

    type: Literal["error"] = "error"
    code: str
    message: str
    details: dict[str, Any]


Message = (
    JobMessage
    | ProgressMessage
    | RequestMessage
    | ReplyMessage
    | RefusalMessage
    | ResultMessage
    | ErrorMessage
)
MESSAGE_TYPES = ("job", "progress", "request", "reply", "refusal", "result", "error")
_ENVELOPE: TypeAdapter[Message] = TypeAdapter(Annotated[Message, Field(discriminator="type")])
_BODIES = {
    "job": ("job",),
    "progress": ("details",),
    "request": ("details",),
    "reply": ("answer",),
    "result": ("result",),
    "error": ("details",),
    "refusal": (),
}
"""The fields of each message type that may hold frames and tagged values."""


# -- typed results of the five actions ----------------------------------------------------


class Window(_Strict):
    """The eval records an evaluation saw: up to ``cutoff``; ``split`` starts "new"."""

    cutoff: str
    split: str | None
    first: str | None
    last: str | None


class TrainResult(_Strict):
    artefact: bytes
    replay: bytes
    records: bytes
    canaries: bytes
    oof: bytes | None = None
    """Out-of-fold predicted labels by record id (a cross-validated head only)."""
    lineage: dict[str, Any]
    timings: dict[str, float]


class EvaluateResult(_Strict):
    eval_records: int
    window: Window
    embed_seconds: float
    versions: dict[str, dict[str, Any]]


class GoldenResult(_Strict):
    n: int
    failed: int
    failed_seqs: list[int]


class GatesResult(_Strict):
    candidate: int
    process: dict[str, Any]
    versions: dict[str, dict[str, Any]]
    eval_records: int
    window: Window
    golden: GoldenResult
    timings: dict[str, float]
    quality: dict[str, Any] | None = None
    forgetting: dict[str, Any] | None = None
    membership: dict[str, Any] | None = None
    canaries: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None


class ProbeAttempt(_Strict):
    attempt: str
    blocked: bool
    how: str


class ProbeResult(_Strict):
    sandbox: dict[str, Any]
    attempts: list[ProbeAttempt]


class SharedResult(_Strict):
    records_digest: str
    worker_pid: int
    steps: int
    embedded: int
    sandbox: dict[str, Any]


RESULTS: dict[str, type[BaseModel]] = {
    "train": TrainResult,
    "evaluate": EvaluateResult,
    "gates": GatesResult,
    "probe": ProbeResult,
    "shared": SharedResult,
}
"""The shape of each action's result, checked by the coordinator on receipt."""


def check_result(action: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` when it has the shape of ``action``'s result, else ``ProtocolViolation``."""
    try:
        RESULTS[action].model_validate(result)
    except ValidationError as exc:
        raise _violation(
            "schema", f"a {action} result that fails its schema: {_first(exc)}"
        ) from None
    return result


# -- typed parameters of the five actions --------------------------------------------------


class VersionRef(_Strict):
    """An adapter version a worker loads (by its run's blob) and checks (by its digest)."""

    version: int
    run_id: str
    sha256: str
    kind: str
    config: dict[str, Any] | None = None


class TrunkSpec(_Strict):
    version: int
    sha256: str
    artefact: bytes


class ParentSpec(_Strict):
    version: int
    run_id: str
    sha256: str
    cutoff: str
    max_seq: int
    dp: bool
    kind: str
    trunk: dict[str, Any] | None


class TrainParams(_Strict):
    kind: Literal["head", "lora"]
    seed: int
    cutoff: str
    version_hint: int
    parent: ParentSpec | None
    canary_seed: bytes = Field(min_length=32, max_length=32)
    canaries: dict[str, int] | None = None
    dp: dict[str, float] | None = None
    trunk: TrunkSpec | None = None


class EvaluateParams(_Strict):
    cutoff: str
    split: str | None
    versions: list[VersionRef]


class GatesParams(_Strict):
    cutoff: str
    split: str | None
    candidate: VersionRef
    active: VersionRef | None
    policy: dict[str, Any]
    seed: int
    delta: float


class ProbeParams(_Strict):
    others: list[dict[str, str]]
    sealed: bool
    files: dict[str, str]
    eval_box: dict[str, str | bytes] | None


class SharedParams(_Strict):
    cutoff: str


PARAMS: dict[str, type[BaseModel]] = {
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "gates": GatesParams,
    "probe": ProbeParams,
    "shared": SharedParams,
}
"""The parameters of each action's job, checked by the coordinator before it sends a job and
by the worker on receipt."""


def check_params(action: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` when they are ``action``'s parameters, else ``ProtocolViolation``."""
    model = PARAMS.get(action)
    if model is None:
        raise _violation("schema", f"a job of unknown action {action[:40]!r}")
    try:
        model.model_validate(params)
    except ValidationError as exc:
        raise _violation(
            "schema", f"{action} parameters that fail their schema: {_first(exc)}"
        ) from None
    return params


# -- values -------------------------------------------------------------------------------


class _Encoder:
    """A value as a JSON tree, its bytes and arrays moved to frames."""

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []
        self.buffers: list[memoryview] = []

    def tree(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, str, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: str(value)}
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(f"a dict key of type {type(key).__name__} cannot be sent")
                out["$" + key if key.startswith("$") else key] = self.tree(item)
            return out
        if isinstance(value, (list, tuple)):
            return [self.tree(item) for item in value]
        if isinstance(value, (bytes, bytearray, memoryview)):
            view = memoryview(value).cast("B")
            return self._frame({"kind": "bytes", "length": view.nbytes}, view)
        if isinstance(value, np.generic) and not isinstance(value, np.void):
            return self.tree(value.item())
        if hasattr(value, "__array__") or isinstance(value, np.ndarray):
            return self._array(np.asarray(value))
        raise TypeError(f"a {type(value).__name__} cannot be sent over a worker channel")

    def _array(self, array: np.ndarray[Any, Any]) -> dict[str, int]:
        if array.dtype.kind not in "biufc":
            raise TypeError(f"an array of dtype {array.dtype} cannot be sent (numeric only)")
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        contiguous = little if little.flags.c_contiguous else little.copy(order="C")
        spec = {
            "kind": "array",
            "length": contiguous.nbytes,
            "dtype": contiguous.dtype.str,
            "shape": list(contiguous.shape),
        }
        return self._frame(spec, contiguous.reshape(-1).view(np.uint8).data)

    def _frame(self, spec: dict[str, Any], view: memoryview) -> dict[str, int]:
        self.specs.append(spec)
        self.buffers.append(view)
        return {_FRAME: len(self.specs) - 1}


class _Decoder:
    """A received tree with its frame references and tagged values resolved."""

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.used = [False] * len(frames)

    def tree(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.tree(item) for item in value]
        if not isinstance(value, dict):
            return value
        if any(key.startswith("$") for key in value):
            return self._tagged(value)
        return {key: self.tree(item) for key, item in value.items()}

    def _tagged(self, value: dict[str, Any]) -> Any:
        if value.keys() == {_FRAME}:
            index = value[_FRAME]
            if type(index) is not int or not 0 <= index < len(self.frames):
                raise _violation("malformed", f"a reference to frame {index!r}")
            if self.used[index]:
                raise _violation("malformed", f"frame {index} referenced twice")
            self.used[index] = True
            return self.frames[index]
        if value.keys() == {_FLOAT}:
            if value[_FLOAT] not in _NON_FINITE:
                raise _violation("malformed", f"a float tagged {value[_FLOAT]!r}")
            return _NON_FINITE[value[_FLOAT]]
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key.startswith("$") and not key.startswith("$$"):
                raise _violation("malformed", f"an unknown tag {key[:40]!r}")
            out[key[1:] if key.startswith("$") else key] = self.tree(item)
        return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (non-finite floats are tagged)")


# -- the channel --------------------------------------------------------------------------


class Channel:
    """One end of a worker socket, sending and receiving whole messages.

    ``receive`` reads one message or raises ``ProtocolViolation``; it returns ``None`` when
    the peer closed the socket between messages and raises ``EOFError`` when it closed it in
    the middle of one. ``timeout`` bounds how long the whole message may take to arrive
    (``TimeoutError`` after it), however slowly the peer drips its bytes."""

    def __init__(self, sock: socket.socket, *, limits: Limits | None = None) -> None:
        self.sock = sock
        self.limits = limits or Limits()
        self._deadline: float | None = None
        sock.setblocking(True)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    def poll(self, timeout: float) -> bool:
        """Whether something (a message or the end of the stream) is ready to read."""
        poller = select.poll()  # not select(): a coordinator may hold descriptors past 1024
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(timeout, 0.0) * 1000))

    def send(self, message: Message) -> None:
        encoder = _Encoder()
        envelope: dict[str, Any] = {"type": message.type}
        for name in type(message).model_fields:
            if name not in ("type", "frames"):
                envelope[name] = encoder.tree(getattr(message, name))
        envelope["frames"] = encoder.specs
        head = json.dumps(envelope, allow_nan=False).encode()  # ASCII: lone surrogates pass
        for piece in (head, *encoder.buffers):
            if len(piece) >= 2**32:
                raise TypeError(f"a frame of {len(piece)} bytes cannot be sent")
        self.sock.sendall(_LENGTH.pack(len(head)) + head)
        for buffer in encoder.buffers:
            self.sock.sendall(_LENGTH.pack(buffer.nbytes))
            if buffer.nbytes:
                self.sock.sendall(buffer)

    def receive(self, *, timeout: float | None = None) -> Message | None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return self._receive()
        finally:
            self._deadline = None
            if not self.closed:
                self.sock.settimeout(None)

    def _receive(self) -> Message | None:
        limits = self.limits
        head = self._read_length(at_boundary=True)
        if head is None:
            return None
        if head > limits.envelope:
            raise _violation("oversized", f"an envelope of {head} bytes (limit {limits.envelope})")
        raw = self._read_exactly(head)
        if raw[:1] == bytes([PICKLE_PROTO]):
            raise _violation(
                "pickle",
                "a pickle (it starts with the PROTO opcode 0x80); it was not loaded",
                head=bytes(raw[:16]).hex(),
            )
        if raw[:1] != b"{":
            raise _violation("malformed", "an envelope that is not a JSON object")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise _violation("malformed", f"an envelope that is not JSON: {exc}") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in MESSAGE_TYPES:
            raise _violation("unknown-type", f"a message of unknown type {str(kind)[:40]!r}")
        try:
            message = _ENVELOPE.validate_python(data)
        except ValidationError as exc:
            raise _violation(
                "schema", f"a {kind} message that fails its schema: {_first(exc)}"
            ) from None
        return self._with_frames(message)

    def _with_frames(self, message: Message) -> Message:
        limits, specs = self.limits, message.frames
        if len(specs) > limits.frames:
            raise _violation("oversized", f"{len(specs)} frames (limit {limits.frames})")
        for spec in specs:
            if spec.length > limits.frame:
                raise _violation(
                    "oversized", f"a frame of {spec.length} bytes (limit {limits.frame})"
                )
        total = sum(spec.length for spec in specs)
        if total > limits.message:
            raise _violation("oversized", f"a message of {total} bytes (limit {limits.message})")
        frames: list[Any] = []
        for index, spec in enumerate(specs):
            length = self._read_length(at_boundary=False)
            if length != spec.length:
                raise _violation("malformed", f"frame {index} is {length} bytes, not {spec.length}")
            data = self._read_exactly(length)
            if spec.kind == "bytes":
                frames.append(bytes(data))
            else:
                assert spec.dtype is not None and spec.shape is not None
                frames.append(
                    np.frombuffer(data, dtype=np.dtype(spec.dtype)).reshape(tuple(spec.shape))
                )
        decoder = _Decoder(frames)
        try:
            update = {name: decoder.tree(getattr(message, name)) for name in _BODIES[message.type]}
        except RecursionError:
            raise _violation("malformed", "values nested too deep") from None
        if not all(decoder.used):
            raise _violation("malformed", f"frame {decoder.used.index(False)} is never referenced")
        return message.model_copy(update=update)

    def _read_length(self, *, at_boundary: bool) -> int | None:
        self._bound()
        first = self.sock.recv(_LENGTH.size)
        if not first:
            if at_boundary:
                return None
            raise EOFError("the peer closed its socket in the middle of a message")
        data = bytes(first)
        if len(data) < _LENGTH.size:
            data += bytes(self._read_exactly(_LENGTH.size - len(data)))
        (length,) = _LENGTH.unpack(data)
        return int(length)

    def _read_exactly(self, n: int) -> bytearray:
        buffer = bytearray(n)
        view = memoryview(buffer)
        got = 0
        while got < n:
            self._bound()
            count = self.sock.recv_into(view[got:], min(n - got, 2**24))
            if count == 0:
                raise EOFError("the peer closed its socket in the middle of a message")
            got += count
        return buffer

    def _bound(self) -> None:
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the message did not arrive whole in time")
            self.sock.settimeout(remaining)


# -- jobs ---------------------------------------------------------------------------------

T = TypeVar("T")


def wire_fields(cls: Any) -> list[dataclasses.Field[Any]]:
    """The fields of a job dataclass that are sent: all but those marked ``local`` (what the
    coordinator keeps to serve the job, such as its keys)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("local")]


def job_message(job: Any) -> JobMessage:
    """The message carrying ``job`` (a dataclass): its wire fields by name."""
    return JobMessage(job={f.name: getattr(job, f.name) for f in wire_fields(job)})


def read_job(message: JobMessage, cls: type[T]) -> T:
    """The ``cls`` (a dataclass) a job message carries, every field checked against its type
    (strictly: no field missing or unknown, no string taken for a number)."""
    try:
        checked = _wire_model(cls).model_validate(message.job)
    except ValidationError as exc:
        raise _violation("schema", f"a job that fails its schema: {_first(exc)}") from None
    return cls(**dict(checked))


_WIRE_MODELS: dict[type[Any], type[BaseModel]] = {}


def _wire_model(cls: type[Any]) -> type[BaseModel]:
    """A strict pydantic model of the dataclass ``cls``'s fields, built once per class."""
    from pydantic import create_model

    if cls in _WIRE_MODELS:
        return _WIRE_MODELS[cls]
    hints = typing.get_type_hints(cls)
    spec: dict[str, Any] = {}
    for f in wire_fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else ...
        spec[f.name] = (hints[f.name], default)
    model = create_model(
        f"{cls.__name__}Wire", __config__=ConfigDict(extra="forbid", strict=True), **spec
    )
    _WIRE_MODELS[cls] = model
    return model


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "message"
    return f"{where}: {error['msg']}"


def _violation(reason: str, what: str, **details: Any) -> ProtocolViolation:
    return ProtocolViolation(f"the peer sent {what}", reason=reason, **details)
