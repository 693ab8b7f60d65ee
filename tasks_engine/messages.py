"""The wire format: one JSON message per task call, validated by pydantic on both sides.

No pickle anywhere: a message is plain JSON, so whoever can write to Redis can at worst make a
task fail, never run code. With ``signing_key`` set, each message carries an HMAC and a worker
refuses unsigned or altered ones.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks_engine.config import get_settings
from tasks_engine.exceptions import MessageError

_SIGNED_MARK = b"te-sig1:"


class ChordRef(BaseModel):
    """Where a task's (or its chain's) final result is reported: header position ``index`` of chord ``id``."""

    model_config = ConfigDict(frozen=True)
    id: str
    index: int


class Message(BaseModel):
    """One task call. Field order matters: ``id`` and ``task`` come first so Lua can read them cheaply."""

    model_config = ConfigDict(extra="forbid")

    id: str
    task: str
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    queue: str = "default"
    priority: int = Field(default=5, ge=0, le=9)
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


def encode(message: Message) -> bytes:
    """Serialize (and sign when a key is configured)."""
    body = message.model_dump_json(exclude_defaults=False).encode()
    key = get_settings().signing_key
    if key is None:
        return body
    return _SIGNED_MARK + _signature(body, key.get_secret_value().encode()) + b":" + body


def decode(raw: bytes | str) -> Message:
    """Parse, verify and validate a message; any problem is a :class:`MessageError` saying what."""
    data = raw.encode() if isinstance(raw, str) else raw
    key = get_settings().signing_key
    if data.startswith(_SIGNED_MARK):
        sig, sep, body = data[len(_SIGNED_MARK) :].partition(b":")
        if not sep:
            raise MessageError("truncated signed message")
        if key is not None and not hmac.compare_digest(sig, _signature(body, key.get_secret_value().encode())):
            raise MessageError("message signature does not match (tampered or signed with another key)")
        data = body
    elif key is not None:
        raise MessageError("unsigned message rejected: message signing is on")
    try:
        return Message.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise MessageError(f"invalid message ({where}: {first.get('msg')})") from None


def peek_id(raw: bytes | str) -> str | None:
    """Best-effort id of an undecodable message, for the dead-letter record."""
    try:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        start = text.index('"id":"') + 6
        return text[start : text.index('"', start)]
    except ValueError:
        return None


def dumps(value: Any) -> bytes:
    """JSON for results and metadata; raises ``TypeError`` for values JSON cannot carry."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def loads(raw: bytes | str | None) -> Any:
    return None if raw is None or raw == b"" or raw == "" else orjson.loads(raw)


def arq_job_serializer(obj: dict[str, Any]) -> bytes:
    """arq's ``job_serializer``: JSON instead of arq's default pickle."""
    return orjson.dumps(obj, default=str)


def arq_job_deserializer(raw: bytes) -> dict[str, Any]:
    value = orjson.loads(raw)
    if not isinstance(value, dict):
        raise MessageError("arq job is not a JSON object")
    return value
