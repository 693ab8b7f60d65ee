"""A worker's Celery consumer: takes protocol-2 messages off Celery's queues and into the engine's.

Turned on by ``celery_queues`` (settings or ``TE_CELERY_QUEUES=celery,emails``). Each Celery queue
is also consumed as an engine queue of the same name, so a taken-over message then runs like any
native job of the task registered under that name: the engine's retries, time limits (the message's
``timelimit`` or the task's), rate limits, revocation, leases and dead letters all apply unchanged.

The loop, per round: claim up to the worker's free slots (less the jobs already waiting in those
engine queues, so an idle Celery worker on the same queue keeps its share), translate each message
(:func:`tasks_engine.model.celery_wire.translate`, pure), and take them over in one script
(:class:`tasks_engine.store.celery.CeleryStore`: atomic claim, then atomic hand-over; see there for
why nothing is lost or run twice). A message that cannot run (not JSON, bad base64, pickle or any
other content type — never deserialised —, protocol 1, a missing header, an unknown task) becomes a
dead letter naming the reason and, when its id can be read, a FAILURE record Celery's ``AsyncResult``
reads; the loop goes on. Idle, it polls (kombu's lists can't be waited on without taking a message
out of them), from 20 ms up to 250 ms.

A second loop restores entries of kombu's unacked set older than ``celery_visibility_timeout``, the
rule kombu's own restore follows, for fleets without a Celery worker (every minute at most).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from tasks_engine.core.clock import Backoff, now_iso
from tasks_engine.core.codec import dumps
from tasks_engine.core.config import EngineSettings
from tasks_engine.exceptions import REDIS_UNAVAILABLE
from tasks_engine.model import celery_results as cr
from tasks_engine.model import states
from tasks_engine.model.celery_wire import CELERY_HEADER, Rejected, peek, translate
from tasks_engine.model.messages import Message, encode
from tasks_engine.model.registry import registry
from tasks_engine.store import Broker, Enqueue
from tasks_engine.store.celery import CeleryStore, Claimed, TakeOver

log = structlog.get_logger("tasks_engine.celery")
DEAD_RAW_KEPT = 65_536
ENVELOPE_OVERHEAD = 65_536  # headers, properties and embedded signatures around the body


def envelope_limit(max_payload_bytes: int) -> int:
    """The largest kombu envelope read: the payload limit, grown by base64 (4/3) and the headers."""
    return max_payload_bytes * 4 // 3 + ENVELOPE_OVERHEAD


def take_over(item: Claimed, result_key: Callable[[str], str], max_payload_bytes: int) -> TakeOver:
    """What becomes of one claimed message: an engine job, or a dead letter and a FAILURE record (at
    ``result_key(id)``). An envelope over the payload limit is refused before its body is decoded."""
    limit = envelope_limit(max_payload_bytes)
    if len(item.raw) > limit:
        task_id, task = peek(item.raw)
        reason = (f"Celery message is {len(item.raw)} bytes, over max_payload_bytes={max_payload_bytes} "
               f"({limit} as an envelope); refused unread")  # fmt: skip
        return _dead(item, Rejected(reason, task_id, task), result_key)
    message = translate(item.raw, item.queue)
    if isinstance(message, Message) and message.task not in registry:
        message = Rejected(
            f"Celery message for task {message.task!r}: no such task is registered here", message.id, message.task
        )
    if isinstance(message, Rejected):
        return _dead(item, message, result_key)
    side = dict(message.headers[CELERY_HEADER], result_key=result_key(message.id))  # for revoke.lua
    message = message.model_copy(update={"headers": {**message.headers, CELERY_HEADER: side}})
    try:
        raw = encode(message)
    except TypeError as exc:
        why = Rejected(f"Celery message for task {message.task!r}: {exc}", message.id, message.task)
        return _dead(item, why, result_key)
    eta_ms = int(message.eta * 1000) if message.eta else 0
    packed = Enqueue(message.id, raw, message.queue, message.priority, eta_ms, nx=True).packed()
    return TakeOver(item.tag, packed=packed, result_key=side["result_key"], record=now_iso())


def _dead(item: Claimed, why: Rejected, result_key: Callable[[str], str]) -> TakeOver:
    task_id, task = why.task_id, why.task
    if task_id is None:
        task_id, task = peek(item.raw)
    log.error("Celery message rejected", task_id=task_id, task=task, queue=item.queue, reason=why.reason)
    entry = dumps(
        {
            "id": task_id or "",
            "reason": why.reason,
            "at": now_iso(),
            "raw": item.raw[:DEAD_RAW_KEPT].decode(errors="replace"),
            "truncated": len(item.raw) > DEAD_RAW_KEPT,
            "task": task,
            "celery_queue": item.queue,
        }
    )
    if not task_id:
        return TakeOver(item.tag, dead=entry)
    unknown = task is not None and why.reason.endswith("no such task is registered here")
    error = (
        cr.error_result("NotRegistered", repr(task))
        if unknown
        else cr.error_result("MessageError", why.reason, "tasks_engine.exceptions")
    )
    record = cr.record(task_id, states.FAILURE, error, f"{error['exc_type']}: {why.reason}")
    return TakeOver(item.tag, dead=entry, result_key=result_key(task_id), record=record)


class CeleryConsumer:
    """The Celery consumer of one worker (see the module docstring)."""

    def __init__(self, broker: Broker, settings: EngineSettings, free_slots: Callable[[], int]) -> None:
        self.store = CeleryStore(broker, settings)
        self.settings = settings
        self.queues: Sequence[str] = list(settings.celery_queues)
        self.free_slots = free_slots
        self.taken = 0

    async def consume(self, stopping: Callable[[], bool]) -> None:
        idle = 0.02
        while not stopping():
            free = self.free_slots()
            if free <= 0:
                await asyncio.sleep(0.02)
                continue
            try:
                # Shielded: a claim cancelled before its take-over would leave its messages in kombu's
                # unacked set until the visibility timeout; a shutdown lets the round finish instead.
                round_trip = asyncio.ensure_future(self._round(min(free, 200)))
                try:
                    claimed = await asyncio.shield(round_trip)
                except asyncio.CancelledError:
                    await asyncio.wait({round_trip}, timeout=5.0)
                    raise
            except REDIS_UNAVAILABLE as exc:
                log.error("redis unreachable; Celery consumer backing off", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if claimed:
                idle = 0.02
                continue
            await asyncio.sleep(idle)
            idle = min(idle * 2, 0.25)

    async def _round(self, count: int) -> int:
        claimed = await self.store.claim(self.queues, count)
        if not claimed:
            return 0
        plans = [self._plan(item) for item in claimed]
        backoff = Backoff()
        for attempt in range(20):  # claimed messages wait in kombu's unacked set: hand them over while Redis comes back
            try:
                self.taken += sum(await self.store.accept(plans))
                return len(claimed)
            except REDIS_UNAVAILABLE as exc:
                log.warning("redis unreachable while taking Celery messages over; retrying", error=str(exc),
                            attempt=attempt)  # fmt: skip
                await asyncio.sleep(backoff.next())
        log.error("Celery messages left in kombu's unacked set for the visibility-timeout restore", count=len(plans))
        return len(claimed)

    def _plan(self, item: Claimed) -> TakeOver:
        try:
            return take_over(item, self.store.keys.result, self.settings.max_payload_bytes)
        except Exception as exc:  # the engine's own bug: the message is settled all the same, never looped
            log.exception("could not translate a Celery message; dead-lettering it")
            return _dead(item, Rejected(f"Celery message could not be read ({exc!r})"), self.store.keys.result)

    async def restorer(self, stopping: Callable[[], bool]) -> None:
        interval = min(60.0, max(1.0, self.settings.celery_visibility_timeout / 4))
        while not stopping():
            try:
                back = await self.store.restore()
                if back > 0:
                    log.warning("restored Celery messages left unacknowledged past the visibility timeout", count=back)
            except REDIS_UNAVAILABLE as exc:
                log.error("redis unreachable; Celery restore skipped", error=str(exc))
            await asyncio.sleep(interval)
