"""The wire format: one JSON message per task call, validated by pydantic on both sides.

No pickle anywhere: a message is plain JSON, so whoever can write to Redis can at worst make a
task fail, never run code. With ``signing_key`` set, each message carries an HMAC and a worker
refuses unsigned or altered ones.

JSON cannot carry NaN or ±Infinity; orjson and pydantic would quietly write ``null`` instead, so
:func:`encode` and :func:`dumps` refuse such values with a ``TypeError`` rather than lose them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from tasks_engine.codec import non_finite_path
from tasks_engine.config import get_settings
from tasks_engine.exceptions import MessageError
from tasks_engine.registry import argument_label

#: A chord body is stored with this JSON string as its first argument; the chord-part script puts
#: the header results in its place when the chord fires.
CHORD_PLACEHOLDER = '"__te_chord_results__"'
CHORD_RESULTS = CHORD_PLACEHOLDER.strip('"')

_SIGNED_MARK = b"te-sig1:"
_ARGS_OPEN = ',"args":['


class ChordRef(BaseModel):
    """Where a task's (or its chain's) final result is reported: header position ``index`` of chord ``id``."""

    model_config = ConfigDict(frozen=True)
    id: str
    index: int


class Message(BaseModel):
    """One task call. Field order matters: ``id`` and ``task`` come first so Lua can read them cheaply,
    then ``queue`` and ``priority`` (before ``args``, which may hold a "queue" key of its own), then ``args``,
    where a chord body's placeholder is found again when checking its signature."""

    # "constants" writes NaN/Infinity as such (invalid JSON), so encode() can spot them cheaply and refuse.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    id: str
    task: str
    queue: str = "default"  # before args: Lua finds the first "queue" key, and args may contain one
    priority: int = Field(default=5, ge=0, le=9)
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    retries: int = 0
    eta: float | None = None  # epoch seconds; None = now
    expires: float | None = None  # epoch seconds
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    links: list[dict[str, Any]] = Field(default_factory=list)
    link_errors: list[dict[str, Any]] = Field(default_factory=list)
    chain: list[dict[str, Any]] = Field(default_factory=list)  # the steps still to run after this one
    chord: ChordRef | None = None
    headers: dict[str, Any] = Field(default_factory=dict)
    sent_at: float = Field(default_factory=time.time)


def _signature(body: bytes, key: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def _unserializable(value: Any, path: str) -> str | None:
    try:
        to_json(value)
    except PydanticSerializationError:
        return path
    return None


_STEP_KINDS = {"chain": "later chain step", "links": "link", "link_errors": "link_error"}


def _locate(message: Message, bad: Callable[[Any, str], str | None]) -> str | None:
    """``task 'name': argument 'x'[0]`` for the first value ``bad`` objects to, workflow steps included."""
    places: list[tuple[str, str, str, Any]] = []  # (task, context, argument label, value)
    places += [(message.task, "", argument_label(message.task, i), v) for i, v in enumerate(message.args)]
    places += [(message.task, "", f"argument {k!r}", v) for k, v in message.kwargs.items()]
    for field, kind in _STEP_KINDS.items():
        for step in getattr(message, field):
            task = str(step.get("task", "?"))
            context = f" (a {kind} of {message.task!r})"
            args, kwargs = step.get("args"), step.get("kwargs")
            if isinstance(args, list) and isinstance(kwargs, dict):
                places += [(task, context, argument_label(task, i), v) for i, v in enumerate(args)]
                places += [(task, context, f"argument {k!r}", v) for k, v in kwargs.items()]
            places.append((task, context, "the step", step))
    places.append((message.task, "", "a header", message.headers))
    for task, context, label, value in places:
        found = bad(value, "")
        if found is not None:
            return f"task {task!r}{context}: {label}{found}"
    return None


def encode(message: Message) -> bytes:
    """Serialize (and sign when a key is configured).

    Values JSON cannot carry (objects, NaN/Infinity, ...) raise ``TypeError`` naming task and argument.
    """
    try:
        body = message.model_dump_json(exclude_defaults=False).encode()
    except PydanticSerializationError as exc:
        place = _locate(message, _unserializable) or f"task {message.task!r}: the message"
        raise TypeError(
            f"{place} is not JSON-serializable ({exc}); pass IDs or plain data (str, int, float, bool, list, dict)"
        ) from None
    if b"NaN" in body or b"Infinity" in body:  # else it was only text inside a string
        where = _locate(message, non_finite_path)
        if where is not None:
            raise TypeError(f"{where} is NaN or Infinity, which JSON cannot carry; pass a finite number or None")
    key = get_settings().signing_key
    if key is None:
        return body
    return _SIGNED_MARK + _signature(body, key.get_secret_value().encode()) + b":" + body


def _with_chord_placeholder(body: bytes) -> bytes | None:
    """The body as it was signed if this is a chord body whose first argument Redis filled in.

    The chord's header results are written into the body's first argument by a Lua script after
    signing (they are results, which live unsigned in Redis anyway). Put the placeholder back so
    the signature over everything else can be checked.
    """
    try:
        text = body.decode()
        decoder = json.JSONDecoder()
        if not text.startswith('{"id":'):
            return None
        _, pos = decoder.raw_decode(text, len('{"id":'))
        if not text.startswith(',"task":', pos):
            return None
        _, pos = decoder.raw_decode(text, pos + len(',"task":'))
        for field in (',"queue":', ',"priority":'):  # the fields between task and args (see Message)
            if text.startswith(field, pos):
                _, pos = decoder.raw_decode(text, pos + len(field))
        if not text.startswith(_ARGS_OPEN, pos):
            return None
        start = pos + len(_ARGS_OPEN)
        _, end = decoder.raw_decode(text, start)
    except ValueError:  # not UTF-8, or not JSON where JSON must be
        return None
    return (text[:start] + CHORD_PLACEHOLDER + text[end:]).encode()


def _verify(sig: bytes, body: bytes, key: bytes) -> bool:
    if hmac.compare_digest(sig, _signature(body, key)):
        return True
    signed = _with_chord_placeholder(body)
    return signed is not None and hmac.compare_digest(sig, _signature(signed, key))


def decode(raw: bytes | str, expected_id: str | None = None) -> Message:
    """Parse, verify and validate a message; any problem is a :class:`MessageError` saying what.

    ``expected_id`` is the id the message was stored under: a message copied to another id is
    refused, otherwise its acknowledgement would go to the wrong job.
    """
    try:
        return _decode(raw, expected_id)
    except RecursionError:  # JSON nested deeper than any message of ours: forged or corrupt
        raise MessageError("message is nested too deeply to be one of ours") from None


def _decode(raw: bytes | str, expected_id: str | None) -> Message:
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    key = get_settings().signing_key
    if data.startswith(_SIGNED_MARK):
        sig, sep, body = data[len(_SIGNED_MARK) :].partition(b":")
        if not sep:
            raise MessageError("truncated signed message")
        if key is not None and not _verify(sig, body, key.get_secret_value().encode()):
            raise MessageError("message signature does not match (tampered or signed with another key)")
        data = body
    elif key is not None:
        raise MessageError("unsigned message rejected: message signing is on")
    try:
        message = Message.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise MessageError(f"invalid message ({where}: {first.get('msg')})") from None
    if expected_id is not None and message.id != expected_id:
        raise MessageError(f"message id {message.id!r} does not match the id it was queued under ({expected_id!r})")
    return message


def peek_id(raw: bytes | str) -> str | None:
    """Best-effort id of an undecodable message, for the dead-letter record."""
    try:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        start = text.index('"id":"') + 6
        return text[start : text.index('"', start)]
    except ValueError:
        return None


def arq_job_serializer(obj: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: JSON instead of arq's default pickle."""
    return orjson.dumps(obj, default=str)


def arq_job_deserializer(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise MessageError("arq job is not a JSON object")
    return value
