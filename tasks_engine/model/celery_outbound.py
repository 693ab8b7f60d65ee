"""Sending to Celery workers: a call as Celery's protocol-2 task message in kombu's Redis envelope, and
a Celery result-backend record read back into the engine's result terms. Pure: no Redis here.

Checked against celery/kombu 5.6 by tests/celery_wire/test_send_to_celery.py, which runs a real
``celery worker`` on what this module builds. Celery's own sender defaults are kept where a Celery
worker reads them: ``timelimit`` is ``[hard, soft]``, ``root_id`` defaults to the id, ``countdown``
becomes an aware ``eta`` (and wins over ``eta``), a numeric ``expires`` is seconds from now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks_engine.core.codec import dumps, loads
from tasks_engine.core.ids import new_id
from tasks_engine.exceptions import TaskRevokedError
from tasks_engine.model.celery_wire import envelope
from tasks_engine.model.records import rebuild_exception
from tasks_engine.model.states import READY_STATES
from tasks_engine.model.validation import check_count, check_name, check_queue, check_seconds, check_task_name

#: The call options a Celery task accepts from here (Celery's names).
CELERY_CALL_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "priority",
        "queue",
        "routing_key",
        "retries",
        "task_id",
        "time_limit",
        "soft_time_limit",
        "ignore_result",
        "headers",
        "parent_id",
        "root_id",
        "shadow",
    }
)
#: Celery's ready states (a result that will not change): the same names as ours.
READY = READY_STATES
_RESERVED_HEADERS = frozenset({"task", "id", "lang", "eta", "expires", "retries", "timelimit", "root_id"})


@dataclass(frozen=True)
class CeleryMessage:
    """One task message for kombu's Redis transport: LPUSH ``envelope`` onto ``queue``'s ``priority`` list."""

    task_id: str
    queue: str
    priority: int
    envelope: bytes


def _moment(task: str, field: str, value: Any) -> datetime:
    """An absolute time (aware or naive-UTC datetime, or ISO 8601 text) as an aware datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"task {task!r}: {field} {value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise TypeError(f"task {task!r}: {field} must be a datetime or an ISO 8601 time, got {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _limit(task: str, field: str, value: Any) -> float | None:
    return None if value is None else check_seconds(task, field, value, allow_negative=False)


def _json(task: str, what: str, value: Any) -> bytes:
    try:
        return dumps(value)
    except TypeError as exc:
        raise TypeError(f"task {task!r}: {what} are not JSON-serializable ({exc}); pass IDs or plain data") from None


def encode_call(
    name: str,
    args: Any,
    kwargs: Any,
    options: dict[str, Any],
    *,
    task_id: str,
    now: datetime,
    origin: str,
) -> CeleryMessage:
    """Check a call at the boundary (errors name the task and the field) and build its message."""
    check_task_name(name)
    unknown = set(options) - CELERY_CALL_OPTIONS
    if unknown:
        raise TypeError(f"task {name!r}: unknown option(s) {sorted(unknown)} for a Celery task")
    if args is None:
        args = []
    if not isinstance(args, list | tuple):
        raise TypeError(f"task {name!r}: args must be a list or tuple, got {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"task {name!r}: kwargs must be a dict with str keys")
    task_id = check_name(name, "task_id", options.get("task_id") or task_id)
    queue = options.get("queue")
    queue = check_queue(name, queue if queue is not None else (options.get("routing_key") or "celery"))
    priority = options.get("priority")
    priority = 0 if priority is None else priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ValueError(f"task {name!r}: priority must be an int 0-9 (0 = consumed first), got {priority!r}")
    retries = check_count(name, "retries", options.get("retries", 0))
    eta: datetime | None = None
    if options.get("countdown"):  # as Celery: a countdown of 0 is none (an ``eta`` then counts)
        eta = now + timedelta(seconds=check_seconds(name, "countdown", options["countdown"]))
    elif options.get("eta") is not None:
        eta = _moment(name, "eta", options["eta"])
    expires_opt = options.get("expires")
    expires: datetime | None = None
    if isinstance(expires_opt, int | float) and not isinstance(expires_opt, bool):
        expires = now + timedelta(seconds=check_seconds(name, "expires", expires_opt))
    elif expires_opt is not None:
        expires = _moment(name, "expires", expires_opt)
    hard = _limit(name, "time_limit", options.get("time_limit"))
    soft = _limit(name, "soft_time_limit", options.get("soft_time_limit"))
    extra = options.get("headers") or {}
    if not isinstance(extra, dict) or set(extra) & _RESERVED_HEADERS:
        raise TypeError(f"task {name!r}: headers must be a dict not naming {sorted(_RESERVED_HEADERS)}")
    for field in ("parent_id", "root_id", "shadow"):
        if options.get(field) is not None:
            check_name(name, field, options[field])
    body = b"[" + _json(name, "args", list(args)) + b"," + _json(name, "kwargs", kwargs) + b","
    body += b'{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
    properties: dict[str, Any] = {}
    if expires is not None:  # kombu's per-message TTL, in ms, as Celery sets it
        properties["expiration"] = str(max(0, math.ceil((expires - now).total_seconds() * 1000)))
    message = envelope(
        task=name,
        task_id=task_id,
        body=body,
        queue=queue,
        priority=priority,
        delivery_tag=new_id(),
        root_id=options.get("root_id"),
        parent_id=options.get("parent_id"),
        eta=eta.isoformat() if eta else None,
        expires=expires.isoformat() if expires else None,
        retries=retries,
        timelimit=(hard, soft),
        argsrepr=repr(list(args))[:1024],
        kwargsrepr=repr(kwargs)[:1024],
        origin=origin,
        ignore_result=bool(options.get("ignore_result", False)),
        shadow=options.get("shadow"),
        extra_headers=extra,
        extra_properties=properties,
    )
    return CeleryMessage(task_id, queue, priority, dumps(message))


def parse_result(raw: bytes | str | None) -> dict[str, Any]:
    """A Celery result record (``celery-task-meta-<id>``); ``{"status": "PENDING"}`` when there is none."""
    if raw is None:
        return {"status": "PENDING", "result": None, "traceback": None}
    try:
        record = loads(raw)
    except ValueError:
        return {"status": "FAILURE", "result": _bad_record("not JSON"), "traceback": None}
    if not isinstance(record, dict) or not isinstance(record.get("status"), str):
        return {"status": "FAILURE", "result": _bad_record("no status"), "traceback": None}
    return record


def _bad_record(why: str) -> dict[str, Any]:
    return {"exc_type": "ValueError", "exc_module": "builtins", "exc_message": [f"unreadable Celery result ({why})"]}


def exception_of(record: dict[str, Any]) -> Exception:
    """The exception a FAILURE/RETRY/REVOKED record carries: its own class when this process has it
    imported, else :class:`tasks_engine.exceptions.TaskError` naming the remote type."""
    info = record.get("result")
    if record.get("status") == "REVOKED":
        message = info.get("exc_message") if isinstance(info, dict) else info
        text = " ".join(str(m) for m in message) if isinstance(message, list) else str(message or "revoked")
        return TaskRevokedError(text)
    if not isinstance(info, dict):
        return rebuild_exception({"exc_type": "Exception", "exc_message": str(info)})
    message = info.get("exc_message")
    args = list(message) if isinstance(message, list | tuple) else [message if message is not None else ""]
    try:
        raw_args = dumps(args).decode()
    except TypeError:
        raw_args = dumps([str(a) for a in args]).decode()
    return rebuild_exception(
        {
            "exc_type": str(info.get("exc_type") or "Exception"),
            "exc_module": str(info.get("exc_module") or "builtins"),
            "exc_message": " ".join(str(a) for a in args),
            "exc_args": raw_args,
        }
    )


def value_of(record: dict[str, Any]) -> Any:
    """Celery's ``AsyncResult.result``: the value, the exception instance, a custom state's meta, or None."""
    status = record.get("status")
    if status in ("FAILURE", "RETRY", "REVOKED"):
        return exception_of(record)
    return record.get("result")
