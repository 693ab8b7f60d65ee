"""Finishing a delivery, as a pure decision: ``(message, task, attempt) → Completion``.

No Redis here: :func:`decide` says what the result record becomes, whether the job is acknowledged
for good or re-sent as a retry, which steps follow (chain, links), which chord hears about it,
which errbacks run and which later steps can never run. The worker hands the
:class:`~tasks_engine.store.Completion` to the store, which writes it in one transaction with the ack.
"""

from __future__ import annotations

import time
import traceback as tb_module
from dataclasses import replace
from datetime import UTC
from typing import Any

import structlog
from pydantic_core import PydanticSerializationError, to_jsonable_python

from tasks_engine.client.canvas import leaf_ids_of
from tasks_engine.client.plan import Context, Plan
from tasks_engine.client.signature import from_dict
from tasks_engine.core.clock import now_iso
from tasks_engine.core.codec import dumps
from tasks_engine.exceptions import NotRegistered, TaskRevokedError
from tasks_engine.execution.attempt import Attempt
from tasks_engine.model import states
from tasks_engine.model.messages import Message, encode, peek_id
from tasks_engine.model.records import exception_fields
from tasks_engine.model.registry import TaskDefinition
from tasks_engine.store import ChordPart, Completion, Enqueue

log = structlog.get_logger("tasks_engine.worker")
DEAD_RAW_KEPT = 65_536


def _base_record(msg: Message, worker_id: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": msg.task,
        "retries": msg.retries,
        "worker": worker_id,
        "root_id": msg.root_id or msg.id,
    }
    if msg.parent_id:
        base["parent_id"] = msg.parent_id
    if msg.group_id:
        base["group_id"] = msg.group_id
    return base


def format_error(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(exc))


def _failure(exc: BaseException, traceback: str | None = None) -> Attempt:
    return Attempt("failure", exc=exc, traceback=traceback if traceback is not None else format_error(exc))


def _failed_call(
    data: Any, call_id: str | None, parent_id: str, exc: BaseException
) -> list[tuple[str, dict[str, Any]]]:
    """The record of a callback that could not even be planned: it fails on its own, the parent stands."""
    if not call_id:
        return []
    task = data.get("task") if isinstance(data, dict) else None
    record = {
        "state": states.FAILURE,
        **exception_fields(exc, format_error(exc)),
        "date_done": now_iso(),
        "parent_id": parent_id,
        "task": task if isinstance(task, str) else "",
    }
    return [(call_id, record)]


def _serialized(msg: Message, attempt: Attempt) -> tuple[Attempt, Any, str]:
    """The success value JSON-ready and as JSON, or a failure when JSON cannot carry it."""
    try:
        value = to_jsonable_python(attempt.value)
        return attempt, value, dumps(value).decode()
    except (TypeError, PydanticSerializationError, ValueError):
        exc = TypeError(
            f"task {msg.task!r} returned a {type(attempt.value).__name__}, which cannot be serialized to JSON"
        )
        return _failure(exc, str(exc)), None, ""


def _call_id(data: Any) -> str | None:
    options = data.get("options") if isinstance(data, dict) else None
    task_id = options.get("task_id") if isinstance(options, dict) else None
    return task_id if isinstance(task_id, str) else None


def _plan_links(msg: Message, value: Any, plan: Plan, failed: list[tuple[str, dict[str, Any]]]) -> None:
    """Each ``link`` gets the value; one that cannot take it fails on its own (as in Celery), the parent
    stays SUCCESS with its value."""
    ctx = Context(parent_id=msg.id, root_id=msg.root_id, nx=True)
    for link in msg.links:
        own = Plan()
        try:
            from_dict(link).plan_into([value], ctx, own)
        except Exception as exc:  # noqa: BLE001 - contained: recorded as the callback's failure
            log.warning(
                "callback cannot run with this result; recorded as failed", callback=_call_id(link), error=str(exc)
            )
            failed.extend(_failed_call(link, _call_id(link), msg.id, exc))
            continue
        plan.enqueues.extend(own.enqueues)
        plan.chords.extend(own.chords)
        plan.groups.extend(own.groups)


def _plan_errbacks(
    msg: Message, error: BaseException, traceback: str | None, plan: Plan, failed: list[tuple[str, dict[str, Any]]]
) -> None:
    """Each errback is one more job; one that cannot be planned is recorded as failed, never re-runs the parent."""
    for data in msg.link_errors:
        own = Plan()
        call = None
        try:
            call = from_dict(data).errback_call(msg.id, error, traceback)
            call.freeze()
            call.plan_into([], Context(parent_id=msg.id), own)
        except Exception as exc:  # noqa: BLE001 - contained: recorded as the errback's failure
            call_id = call.id if call is not None else _call_id(data)
            log.warning("errback cannot run; recorded as failed", errback=call_id, error=str(exc))
            failed.extend(_failed_call(data, call_id, msg.id, exc))
            continue
        plan.enqueues.extend(own.enqueues)
        plan.chords.extend(own.chords)
        plan.groups.extend(own.groups)


def _plan_next(msg: Message, value: Any, plan: Plan) -> None:
    """The chain's next step gets the value prepended and carries the rest of the chain."""
    ctx = Context(parent_id=msg.id, root_id=msg.root_id, nx=True)
    if msg.chain:
        nxt, rest = from_dict(msg.chain[0]), [from_dict(d) for d in msg.chain[1:]]
        nxt.plan_into([value], replace(ctx, chain_rest=rest, chord=msg.chord), plan)


def _retry_eta(attempt: Attempt, now: float) -> float:
    assert attempt.retry is not None
    retry = attempt.retry
    if retry.countdown is not None:  # countdown wins over eta, as in Celery
        return now + retry.countdown
    eta = retry.eta
    # A naive eta means UTC, as everywhere else in the engine.
    return (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp() if eta else now


def decide(
    msg: Message, task: TaskDefinition | None, attempt: Attempt, worker_id: str, now: float | None = None
) -> Completion:
    """What finishing this delivery writes (see the module docstring)."""
    now = time.time() if now is None else now
    base = _base_record(msg, worker_id)
    plan = Plan()
    chord_parts: list[ChordPart] = []
    failed_later: list[tuple[str, dict[str, Any]]] = []
    result_json = ""
    if attempt.outcome == "success":
        attempt, value, result_json = _serialized(msg, attempt)
    if attempt.outcome == "success":
        try:
            _plan_next(msg, value, plan)
        except Exception as exc:  # noqa: BLE001 - e.g. the next step rejects this result: fail, never loop
            plan = Plan()
            attempt = _failure(exc)
        else:
            _plan_links(msg, value, plan, failed_later)
    outcome = attempt.outcome
    if outcome == "success":
        record = {**base, "state": states.SUCCESS, "result": result_json, "date_done": now_iso()}
        if not msg.chain and msg.chord is not None:
            chord_parts.append(ChordPart(msg.chord.id, msg.id, msg.chord.index, ok=True, result_json=result_json))
    elif outcome == "retry":
        assert attempt.retry is not None
        eta_s = _retry_eta(attempt, now)
        deferred = eta_s > now
        again = msg.model_copy(
            update={
                "retries": msg.retries + 1,
                "args": attempt.retry.new_args if attempt.retry.new_args is not None else msg.args,
                "kwargs": attempt.retry.new_kwargs if attempt.retry.new_kwargs is not None else msg.kwargs,
                "eta": eta_s if deferred else None,
            }
        )
        exc_fields = exception_fields(attempt.exc, attempt.traceback) if attempt.exc else {}
        record = {**base, "state": states.RETRY, "retries": msg.retries + 1, "delivered": 0, **exc_fields}
        plan.enqueues.append(
            Enqueue(msg.id, encode(again), msg.queue, msg.priority, int(eta_s * 1000) if deferred else 0)
        )
    else:  # failure or revoked
        error = attempt.exc or TaskRevokedError("terminated")
        state = states.REVOKED if outcome == "revoked" else states.FAILURE
        failure = exception_fields(error, attempt.traceback or "")
        record = {**base, "state": state, **failure, "date_done": now_iso()}
        if outcome == "failure":
            record.update(replayable(msg))
            _plan_errbacks(msg, error, attempt.traceback, plan, failed_later)
        for later_id in leaf_ids_of(msg.chain):
            failed_later.append((later_id, {"state": state, **failure, "date_done": now_iso(), "parent_id": msg.id}))
        if msg.chord is not None:
            text = f"Dependency {msg.id} raised {type(error).__name__}({str(error)!r})"
            chord_parts.append(
                ChordPart(
                    msg.chord.id, msg.id, msg.chord.index, ok=False, error_text=text, traceback=attempt.traceback or ""
                )
            )
    children = [*attempt.children, *(e.id for e in plan.enqueues if e.id != msg.id)]
    if children and outcome != "retry":
        record["children"] = dumps(children).decode()  # Celery's AsyncResult.children
    final = outcome != "retry"
    ignore = msg.ignore_result if msg.ignore_result is not None else bool(task and task.options.ignore_result)
    idempotent = outcome == "success" and task is not None and task.options.idempotent
    return Completion(
        task_id=msg.id,
        record=None if (ignore and final) else record,
        final=final,
        clear_exception=outcome == "success" and bool(msg.retries),  # only an earlier attempt can have left them
        failed_later=failed_later,
        writes=plan.writes(),
        chord_parts=chord_parts,
        idempotent_value=result_json if idempotent else None,
        failed=outcome == "failure",
    )


def replayable(msg: Message) -> dict[str, Any]:
    """What a failed job's record keeps so ``tasks-engine retry`` can send it again (Celery's
    ``result_extended``): its arguments, queue and priority."""
    return {"args": dumps(msg.args).decode(), "kwargs": dumps(msg.kwargs).decode(), "queue": msg.queue,
            "priority": msg.priority}  # fmt: skip


def settle_failed(msg: Message, exc: BaseException, worker_id: str) -> Completion:
    """The last resort when finishing itself failed: the job is FAILURE with that error and acknowledged.

    Nothing else is planned (what failed was the planning); its chord still hears of the failure, and
    the steps after it are failed when their ids can be read."""
    failure = exception_fields(exc, format_error(exc))
    record = {**_base_record(msg, worker_id), "state": states.FAILURE, **failure, "date_done": now_iso()}
    try:
        later = leaf_ids_of(msg.chain)
    except Exception:  # noqa: BLE001 - garbage chain data: nothing more can be known
        later = []
    failed = [(i, {"state": states.FAILURE, **failure, "date_done": now_iso(), "parent_id": msg.id}) for i in later]
    parts = []
    if msg.chord is not None:
        text = f"Dependency {msg.id} raised {type(exc).__name__}({str(exc)!r})"
        parts.append(ChordPart(msg.chord.id, msg.id, msg.chord.index, ok=False, error_text=text))
    record.update(replayable(msg))
    return Completion(task_id=msg.id, record=record, final=True, failed_later=failed, chord_parts=parts, failed=True)


def fallback(completion: Completion, msg: Message | None, exc: BaseException, worker_id: str) -> Completion:
    """What to write when ``completion`` could not be: a rejection without its dead letter (the dead-letter
    list is what Redis refused, and the record alone settles the job), else the job as FAILURE with that
    error (:func:`settle_failed`), else ``completion`` once more."""
    if completion.dead_letter is not None:
        return replace(completion, dead_letter=None)
    if msg is not None:
        return settle_failed(msg, exc, worker_id)
    return completion


def rejected(
    task_id: str, raw: bytes, reason: str, worker_id: str, msg: Message | None, exc: BaseException | None = None
) -> Completion:
    """An undecodable, forged or unknown-task message: a dead letter with the reason, and acknowledged
    (left in ``active`` it would come back at every lease expiry and be dead-lettered again).

    A valid message for a task this worker lacks fails like any failure, so chains and chords learn.
    """
    entry = dumps(
        {
            "id": task_id,
            "reason": reason,
            "at": now_iso(),
            # Whole when small, so ``tasks-engine dead requeue`` can send it again; else its start only.
            "raw": raw[:DEAD_RAW_KEPT].decode(errors="replace"),
            "truncated": len(raw) > DEAD_RAW_KEPT,
            "peek_id": peek_id(raw),
            "task": msg.task if msg else None,
        }
    )
    if msg is not None:
        error = exc if exc is not None else NotRegistered(reason)
        completion = decide(msg, None, _failure(error, f"{type(error).__name__}: {reason}"), worker_id)
        completion.dead_letter = entry
        return completion
    record = {
        "state": states.FAILURE,
        "exc_type": "MessageError",
        "exc_module": "tasks_engine.exceptions",
        "exc_message": reason,
        "exc_args": dumps([reason]).decode(),
        "traceback": "",
        "date_done": now_iso(),
        "worker": worker_id,
        "task": "",
    }
    return Completion(task_id=task_id, record=record, final=True, dead_letter=entry)
