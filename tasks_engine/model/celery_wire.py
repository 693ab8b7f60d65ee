"""Celery's task messages (protocol 2, kombu's Redis transport) read into the engine's own :class:`Message`.

Pure: bytes in, a :class:`Message` or a :class:`Rejected` out, no Redis. What is read, from an
envelope ``{"body", "content-type", "headers", "properties"}`` as kombu stores it:

- ``content-type`` must be ``application/json``. Any other (pickle, yaml, msgpack, …) is refused
  *before* the body is touched: a pickle is never deserialised. A ``compression`` header is refused.
- ``body``: base64 when ``properties.body_encoding`` says so (kombu's default), else the text itself;
  the JSON ``[args, kwargs, embed]`` with ``embed = {callbacks, errbacks, chain, chord}``.
- headers: ``task`` (its absence means protocol 1, refused), ``id``, ``retries``, ``eta`` and
  ``expires`` (ISO-8601, naive = UTC; a producer's ``countdown`` arrives as ``eta``), ``timelimit``
  = ``[hard, soft]`` (what Celery's worker unpacks, whatever the protocol document says),
  ``ignore_result``, ``root_id``, ``parent_id``, ``group`` and ``group_index``.
- ``properties.priority``: kombu's Redis transport consumes lower numbers first, as the engine does, so
  it is kept as the engine's priority (0–9).

The Celery side of the job (reply_to, the Celery queue, the group index, the embedded canvas) rides
in the engine message's ``headers["celery"]``: the engine's own ``links``/``chain`` stay empty, and the
worker continues the canvas in Celery's format (:mod:`tasks_engine.model.celery_results`).

Every refusal names the field; :class:`Rejected` keeps the task id whenever one can be read, so a
FAILURE record Celery's ``AsyncResult`` reads can still be written.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tasks_engine.model.messages import Message
from tasks_engine.model.validation import check_name, check_task_name

#: The engine message header that marks a job as Celery-sent and carries its Celery side.
CELERY_HEADER = "celery"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Rejected:
    """A Celery message that must not run: why, and what of it could be read."""

    reason: str
    task_id: str | None = None
    task: str | None = None
    reply_to: str | None = None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _peek_id(envelope: dict[str, Any]) -> str | None:
    headers = envelope.get("headers")
    props = envelope.get("properties")
    found = _text(headers.get("id")) if isinstance(headers, dict) else None
    if found is None and isinstance(props, dict):
        found = _text(props.get("correlation_id"))
    return found


def peek(raw: bytes) -> tuple[str | None, str | None]:
    """Best-effort ``(task id, task name)`` of an envelope that is at least JSON (for dead letters)."""
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(envelope, dict):
        return None, None
    headers = envelope.get("headers")
    return _peek_id(envelope), _text(headers.get("task")) if isinstance(headers, dict) else None


def _when(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"header {field!r} must be an ISO-8601 string or null, got {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"header {field!r} is not an ISO-8601 date: {value!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _limits(value: Any) -> tuple[float | None, float | None]:
    """``timelimit`` = ``[hard, soft]``, each a positive number or null."""
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"header 'timelimit' must be [hard, soft], got {value!r}")
    out: list[float | None] = []
    for label, item in zip(("hard", "soft"), value, strict=True):
        if item is None:
            out.append(None)
        elif isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item) or item <= 0:
            raise ValueError(f"header 'timelimit' {label} limit must be a positive number or null, got {item!r}")
        else:
            out.append(float(item))
    hard, soft = out
    return hard, soft


def _body(envelope: dict[str, Any]) -> bytes:
    body = envelope.get("body")
    if not isinstance(body, str):
        raise ValueError("field 'body' must be a string")
    props = envelope.get("properties")
    encoding = props.get("body_encoding") if isinstance(props, dict) else None
    if encoding is None:
        return body.encode()
    if encoding != "base64":
        raise ValueError(f"properties.body_encoding {encoding!r} is not supported (only base64)")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("field 'body' is not valid base64") from None


def _embed(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"body embed (third element) must be an object, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for name in ("callbacks", "errbacks", "chain"):
        steps = value.get(name)
        if steps is None:
            continue
        if not isinstance(steps, list) or not all(_is_signature(s) for s in steps):
            raise ValueError(f"body embed {name!r} must be a list of signatures (objects with a 'task' name)")
        if steps:
            out[name] = steps
    chord = value.get("chord")
    if chord is not None:
        if not _is_signature(chord):
            raise ValueError("body embed 'chord' must be a signature (an object with a 'task' name)")
        out["chord"] = chord
    return out


def _is_signature(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("task"), str) and bool(value["task"])


def translate(raw: bytes, queue: str) -> Message | Rejected:
    """One stored envelope from Celery queue ``queue`` as an engine message (queue of the same name)."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Rejected("Celery message is not JSON (kombu envelopes are JSON objects)")
    if not isinstance(envelope, dict):
        return Rejected("Celery message is not a JSON object")
    task_id = _peek_id(envelope)
    headers = envelope.get("headers")
    props = envelope.get("properties")
    reply_to = _text(props.get("reply_to")) if isinstance(props, dict) else None
    if not isinstance(headers, dict):
        return Rejected("Celery message has no 'headers' object", task_id, None, reply_to)
    task = headers.get("task")
    try:
        return _translate(envelope, headers, props, queue)
    except ValueError as exc:
        name = task if isinstance(task, str) else None
        return Rejected(f"Celery message{f' for task {name!r}' if name else ''}: {exc}", task_id, name, reply_to)


def _translate(envelope: dict[str, Any], headers: dict[str, Any], props: Any, queue: str) -> Message:
    if "task" not in headers:
        raise ValueError(
            "missing header 'task': a protocol 1 message (or not Celery's); send with task_protocol=2 (the default)"
        )
    task = check_task_name(headers["task"])
    content_type = envelope.get("content-type")
    if content_type != JSON_TYPE:
        raise ValueError(
            f"content-type {content_type!r} is not {JSON_TYPE!r}: only JSON is accepted and the body was not "
            "deserialised (set task_serializer='json')"
        )
    if headers.get("compression") is not None:
        raise ValueError(f"header 'compression' {headers['compression']!r} is not supported")
    if "id" not in headers:
        raise ValueError("missing header 'id'")
    task_id = check_name(task, "header 'id'", headers["id"])
    if not isinstance(props, dict):
        raise ValueError("field 'properties' must be an object")
    body = _body(envelope)
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("body is not JSON") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise ValueError("body must be the JSON array [args, kwargs, embed] of protocol 2")
    args, kwargs, embed = decoded
    if not isinstance(args, list):
        raise ValueError("body args (first element) must be an array")
    if not isinstance(kwargs, dict):
        raise ValueError("body kwargs (second element) must be an object")
    retries = headers.get("retries") or 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"header 'retries' must be a whole number >= 0, got {retries!r}")
    hard, soft = _limits(headers.get("timelimit"))
    if soft is not None and hard is not None and soft > hard:
        soft = hard  # Celery lets the hard limit win; the engine refuses soft > hard
    priority = props.get("priority")
    if isinstance(priority, bool) or not isinstance(priority, int):
        priority = 0
    ignore = headers.get("ignore_result")
    group_index = headers.get("group_index")
    celery: dict[str, Any] = {
        "queue": queue,
        "reply_to": _text(props.get("reply_to")),
        "embed": _embed(embed),
        "group_index": group_index if isinstance(group_index, int) and not isinstance(group_index, bool) else None,
    }
    fields: dict[str, Any] = {
        "id": task_id,
        "task": task,
        "queue": queue,
        "priority": max(0, min(priority, 9)),
        "args": args,
        "kwargs": kwargs,
        "retries": retries,
        "eta": _when("eta", headers.get("eta")),
        "expires": _when("expires", headers.get("expires")),
        "time_limit": hard,
        "soft_time_limit": soft,
        # True wins; False leaves it to the task's own option (Celery: task option or request's header)
        "ignore_result": True if ignore is True else None,
        "parent_id": _text(headers.get("parent_id")),
        "root_id": _text(headers.get("root_id")) or task_id,
        "group_id": _text(headers.get("group")),
        "headers": {CELERY_HEADER: celery},
    }
    try:
        return Message.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        raise ValueError(f"field {where}: {first.get('msg')}") from None


def celery_side(message: Message) -> dict[str, Any] | None:
    """The Celery side of an engine message, or None for a native job."""
    side = message.headers.get(CELERY_HEADER)
    return side if isinstance(side, dict) else None


def envelope(
    *,
    task: str,
    task_id: str,
    body: bytes,
    queue: str,
    priority: int,
    delivery_tag: str,
    root_id: str | None = None,
    parent_id: str | None = None,
    shadow: str | None = None,
    eta: str | None = None,
    expires: str | None = None,
    group: str | None = None,
    group_index: int | None = None,
    retries: int = 0,
    timelimit: tuple[float | None, float | None] = (None, None),
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
    origin: str = "tasks_engine",
    ignore_result: bool = False,
    reply_to: str = "",
    extra_headers: dict[str, Any] | None = None,
    extra_properties: dict[str, Any] | None = None,
    base64_body: bool = True,
) -> dict[str, Any]:
    """A protocol-2 task message in kombu's Redis envelope (the one place both directions build it).

    ``body`` is the JSON ``[args, kwargs, embed]``; ``timelimit`` is ``(hard, soft)`` as Celery's worker
    reads it. ``base64_body=False`` stores the body as text (kombu reads both)."""
    headers: dict[str, Any] = {
        **(extra_headers or {}),
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": shadow,
        "eta": eta,
        "expires": expires,
        "group": group,
        "group_index": group_index,
        "retries": retries,
        "timelimit": list(timelimit),
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": origin,
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": reply_to,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": priority,
        **(extra_properties or {}),
        "delivery_tag": delivery_tag,  # kombu's ack bookkeeping key: one per message, even for a reused id
    }
    if base64_body:
        properties["body_encoding"] = "base64"
    text = base64.b64encode(body).decode() if base64_body else body.decode()
    return {"body": text, "content-encoding": "utf-8", "content-type": JSON_TYPE, "headers": headers,
            "properties": properties}  # fmt: skip
