"""Finishing a Celery-sent job the way Celery's worker would, in the same transaction as the engine's ack.

:func:`celery_ops` turns the engine's :class:`~tasks_engine.store.Completion` of a job whose message
came from Celery (``headers["celery"]``, see :mod:`tasks_engine.model.celery_wire`) into the writes
Celery's side expects, added to that completion (``complete.lua`` runs them, fenced like the rest):

- the result record (``celery-task-meta-<id>``, SETEX + PUBLISH; a stored SUCCESS is kept): SUCCESS,
  FAILURE, RETRY or REVOKED; none with ``ignore_result``;
- on success: each link (``callbacks``) and the chain's next step (``chain[-1]``, the rest of the chain
  embedded) sent as Celery messages to their queue (``options.queue``, else ``celery_default_queue``),
  the result prepended unless the signature is immutable, so either engine can run them;
- on failure: each errback sent with the failed task's id as its argument (Celery's old-style errback;
  a Celery worker calls new-style ``(request, exc, traceback)`` errbacks in-process, which cannot cross
  engines), and the chain's later steps recorded FAILURE with the same error, as Celery does;
- a chord header part (``group`` header + embedded ``chord``): its result joins Celery's native Redis
  chord keys, and the part that completes the chord sends the body once (``te_celery_chord``).

Retries stay on the engine (the same id is re-enqueued natively with ``retries + 1``), and the record
shows RETRY meanwhile.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from pydantic_core import to_jsonable_python

from tasks_engine.core.config import EngineSettings
from tasks_engine.model import celery_results as cr
from tasks_engine.model import states
from tasks_engine.model.celery_wire import CELERY_HEADER, celery_side
from tasks_engine.model.messages import Message
from tasks_engine.store import Completion
from tasks_engine.store.celery_keys import CeleryKeys

log = structlog.get_logger("tasks_engine.worker")
_CELERY_NAMED = {"TaskRevokedError", "SoftTimeLimitExceeded", "TimeLimitExceeded", "MaxRetriesExceededError",
                 "ChordError", "NotRegistered", "Retry"}  # fmt: skip


def _keys(settings: EngineSettings) -> CeleryKeys:
    return CeleryKeys(settings.celery_transport_prefix, settings.celery_result_prefix)


def _exception(record: dict[str, Any]) -> dict[str, Any]:
    """The engine record's exception as Celery stores one (Celery-named engine errors under celery.exceptions)."""
    kind = str(record.get("exc_type") or "Exception")
    module = str(record.get("exc_module") or "builtins")
    if module == "tasks_engine.exceptions" and kind in _CELERY_NAMED:
        module = "celery.exceptions"
    try:
        args = json.loads(record["exc_args"]) if record.get("exc_args") else [record.get("exc_message", "")]
    except ValueError:
        args = [record.get("exc_message", "")]
    return {"exc_type": kind, "exc_message": args if isinstance(args, list) else [args], "exc_module": module}


def _send(keys: CeleryKeys, out: cr.Outgoing) -> list[Any]:
    return ["send", keys.queue(out.queue, out.priority), out.envelope]


def celery_ops(msg: Message, completion: Completion, value: Any, settings: EngineSettings) -> list[list[Any]]:
    """The Celery-side writes of this completion (``value``: the task's return value when it succeeded)."""
    side = celery_side(msg)
    if side is None:
        return []
    keys = _keys(settings)
    ttl = settings.celery_result_expires
    record = completion.record
    if record is not None:
        state = str(record.get("state"))
    else:  # ignore_result: nothing is stored, the canvas still moves on
        state = states.SUCCESS if not completion.failed and completion.final else states.FAILURE
    if not completion.final:
        state = states.RETRY
    ops: list[list[Any]] = []
    result: Any
    traceback: str | None = None
    if state == states.SUCCESS:
        result = json.loads(record["result"]) if record is not None and record.get("result") else None
        if record is None:
            result = to_jsonable_python(value)
    else:
        result = _exception(record or {})
        traceback = str((record or {}).get("traceback") or "") or None
    if record is not None:
        text = cr.record(msg.id, state, result, traceback, msg.parent_id, msg.group_id)
        ops.append(["result", keys.result(msg.id), text, ttl])
    if state == states.RETRY:
        return ops
    embed: dict[str, Any] = side.get("embed") or {}
    default = settings.celery_default_queue
    root = msg.root_id or msg.id
    if state == states.SUCCESS:
        for link in embed.get("callbacks") or ():
            ops.append(_send(keys, cr.message(link, [result], msg.id, root, default)))
        chain = embed.get("chain") or []
        if chain:
            ops.append(_send(keys, cr.message(chain[-1], [result], msg.id, root, default, chain=chain[:-1])))
    else:
        for errback in embed.get("errbacks") or ():
            ops.append(_send(keys, cr.message(errback, [msg.id], msg.id, root, default)))
        for step in embed.get("chain") or ():
            options = step.get("options") if isinstance(step, dict) else None
            later = options.get("task_id") if isinstance(options, dict) else None
            if isinstance(later, str):
                ops.append(["result", keys.result(later), cr.record(later, state, result, traceback, msg.id), ttl])
    chord = embed.get("chord")
    if msg.group_id and isinstance(chord, dict):
        ops.append(_chord_op(keys, msg, side, chord, state, result, default, ttl))
    return ops


def _chord_op(keys: CeleryKeys, msg: Message, side: dict[str, Any], body: dict[str, Any], state: str,
              result: Any, default: str, ttl: int) -> list[Any]:  # fmt: skip
    gid = str(msg.group_id)
    index = side.get("group_index")
    out = cr.message(body, [cr.CHORD_RESULTS], msg.id, msg.root_id, default, chord_body=True)
    failure = cr.record(out.task_id, states.FAILURE, cr.error_result("ChordError", "__te_chord_error__"))
    return [
        "chord", keys.chord_results(gid), keys.chord_extra(gid), keys.chord_size(gid),
        index if index is not None else "+inf", cr.chord_member(msg.id, state, result),
        keys.queue(out.queue, out.priority), out.envelope, keys.result(out.task_id), failure,
        keys.chord_results(gid) + ".te-fired", ttl,
    ]  # fmt: skip


def started_record(msg: Message, worker_id: str, pid: int, ignore_result: bool = False) -> str | None:
    """Celery's STARTED record (``track_started``) for a Celery-sent job, or None for a native one (or
    when no result is kept: ``ignore_result`` of the message or the task)."""
    if celery_side(msg) is None or msg.ignore_result or ignore_result:
        return None
    meta = {"pid": pid, "hostname": worker_id}
    return cr.record(msg.id, states.STARTED, meta, None, msg.parent_id, msg.group_id)


def finish_ops(msg: Message, completion: Completion, value: Any, settings: EngineSettings) -> list[list[Any]]:
    """:func:`celery_ops`, or when the canvas cannot be continued (a step Celery's format cannot carry), the
    record alone: the job's outcome is still written, and the reason logged."""
    try:
        return celery_ops(msg, completion, value, settings)
    except Exception:
        log.exception("cannot continue the Celery canvas of this job; writing its result only")
        side = dict(celery_side(msg) or {}, embed={})
        bare = msg.model_copy(update={"headers": {**msg.headers, CELERY_HEADER: side}})
        try:
            return celery_ops(bare, completion, value, settings)
        except Exception:  # the engine's own outcome is still written; Celery's record stays as it was
            log.exception("cannot write the Celery record of this job")
            return []
