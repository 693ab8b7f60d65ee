"""What the engine writes for Celery-sent jobs, in Celery's formats: result records and task messages.

Pure: data in, JSON text out. The store writes them (``store/celery.py``, ``store/lua/lib.lua``).

- A result record is Celery's Redis-backend JSON ``{status, result, traceback, children, date_done,
  task_id}`` (+ ``parent_id``/``group_id`` when set); ``date_done`` only for ready states. An exception is
  ``{exc_type, exc_message: its args, exc_module}``; the engine's own Celery-named exceptions are stored
  under ``celery.exceptions`` so ``AsyncResult.get()`` raises Celery's class (TaskRevokedError, …).
- A task message (the next chain step, a link, an errback, a chord body) is a protocol-2 envelope as
  kombu's Redis transport stores it, so a Celery worker or ours can run it. A chord body is written
  with a plain-text body (no ``body_encoding``, which kombu accepts) holding :data:`CHORD_RESULTS` as its
  first argument: the chord script puts the ordered header results there when the chord is complete.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tasks_engine.model.celery_wire import envelope
from tasks_engine.model.states import READY_STATES

#: Where a chord body's first argument goes (JSON-escaped inside the envelope's ``body`` string).
CHORD_RESULTS = "__te_celery_chord_results__"
_CELERY_NAMED = frozenset(
    {"TaskRevokedError", "SoftTimeLimitExceeded", "TimeLimitExceeded", "MaxRetriesExceededError", "ChordError",
     "NotRegistered", "Retry"}
)  # fmt: skip


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def exception_result(exc: BaseException) -> dict[str, Any]:
    """An exception as Celery's JSON serializer stores it."""
    kind = type(exc)
    module = kind.__module__
    if module == "tasks_engine.exceptions" and kind.__name__ in _CELERY_NAMED:
        module = "celery.exceptions"
    return {"exc_type": kind.__qualname__, "exc_message": [_jsonable(a) for a in exc.args], "exc_module": module}


def error_result(exc_type: str, message: str, module: str = "celery.exceptions") -> dict[str, Any]:
    return {"exc_type": exc_type, "exc_message": [message], "exc_module": module}


def record(
    task_id: str,
    status: str,
    result: Any,
    traceback: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
    children: list[Any] | None = None,
) -> str:
    """Celery's result-backend record as JSON text."""
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children or [],
        "date_done": now_iso() if status in READY_STATES else None,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    meta["task_id"] = task_id
    return json.dumps(meta)


def chord_member(task_id: str, status: str, result: Any) -> str:
    """One header result as Celery's Redis backend keeps it in the chord's ``.j`` set."""
    return json.dumps([1, task_id, status, result])


class Outgoing:
    """A protocol-2 message to push onto a Celery queue list."""

    __slots__ = ("envelope", "priority", "queue", "task_id")

    def __init__(self, task_id: str, queue: str, priority: int, envelope: str) -> None:
        self.task_id, self.queue, self.priority, self.envelope = task_id, queue, priority, envelope


def message(
    signature: dict[str, Any],
    prepend: list[Any],
    parent_id: str | None,
    root_id: str | None,
    default_queue: str,
    chain: list[Any] | None = None,
    chord_body: bool = False,
) -> Outgoing:
    """The message that calls ``signature`` (a Celery signature dict), its args after ``prepend`` unless
    it is immutable; ``chain`` is what remains of a chain after it (stored reversed, as Celery does)."""
    task = signature.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError(f"signature has no task name: {signature!r}")
    subtask_type = signature.get("subtask_type")
    if subtask_type not in (None, ""):
        raise ValueError(f"task {task!r}: a {subtask_type!r} signature as a step is not supported (plain tasks only)")
    options = signature.get("options") if isinstance(signature.get("options"), dict) else {}
    assert isinstance(options, dict)
    args = list(signature.get("args") or [])
    kwargs = dict(signature.get("kwargs") or {})
    if not signature.get("immutable"):
        args = [*prepend, *args]
    given = options.get("task_id")
    task_id = given if isinstance(given, str) and given else str(uuid.uuid4())
    queue = options.get("queue") or options.get("routing_key") or default_queue
    if isinstance(queue, dict):  # a kombu Queue serialised as a dict
        queue = queue.get("name") or default_queue
    priority = options.get("priority")
    priority = priority if isinstance(priority, int) and not isinstance(priority, bool) else 0
    links, link_errors = options.get("link"), options.get("link_error")
    embed = {
        "callbacks": _signature_list(links),
        "errbacks": _signature_list(link_errors),
        "chain": chain or None,
        "chord": options.get("chord"),
    }
    message = envelope(
        task=task,
        task_id=task_id,
        body=json.dumps([args, kwargs, embed]).encode(),
        queue=str(queue),
        priority=priority,
        delivery_tag=str(uuid.uuid4()),
        root_id=root_id,
        parent_id=parent_id,
        group=options.get("group_id"),
        group_index=options.get("group_index"),
        timelimit=(options.get("time_limit"), options.get("soft_time_limit")),
        argsrepr=repr(tuple(args)) if not chord_body else None,
        kwargsrepr=repr(kwargs),
        ignore_result=bool(options.get("ignore_result", False)),
        reply_to=options.get("reply_to") or "",
        base64_body=not chord_body,
    )
    return Outgoing(task_id, str(queue), priority, json.dumps(message))


def _signature_list(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        return [value]
    return list(value) if isinstance(value, list) and value else None
