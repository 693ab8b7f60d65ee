"""One delivery, from claimed message to written completion — whatever happens, it settles.

The worker hands every claimed job to :meth:`Deliveries.process`: decode (a bad, oversized or expired
signed message is a dead letter), the checks before running (revoked, expired, delivered too often,
unknown task, idempotent replay), the attempt itself, then :func:`tasks_engine.runtime.completion.decide`
and the group commit. Any failure on the way still ends in a final record, a retry or a dead letter. A
message of a job that already finished never gets here: the claim settles it (:meth:`Deliveries.duplicate`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from tasks_engine import signals
from tasks_engine.core.codec import loads
from tasks_engine.core.config import EngineSettings
from tasks_engine.core.tracing import running_span
from tasks_engine.exceptions import DeliveryLimitExceeded, MessageError, NotRegistered, TaskRevokedError
from tasks_engine.execution.attempt import Attempt, run_attempt
from tasks_engine.execution.timelimits import LimitedRun
from tasks_engine.model import states
from tasks_engine.model.celery_wire import celery_side
from tasks_engine.model.messages import Message, decode
from tasks_engine.model.registry import Request, TaskDefinition, get_task
from tasks_engine.runtime.celery_finish import finish_ops, started_record
from tasks_engine.runtime.commit import CommitQueue
from tasks_engine.runtime.completion import decide, fallback, format_error, rejected, settle_failed
from tasks_engine.store import Broker, Completion, Duplicate
from tasks_engine.store.celery import CeleryStore

if TYPE_CHECKING:
    from tasks_engine.ops.metrics import WorkerMetrics

log = structlog.get_logger("tasks_engine.worker")
OUTCOME_STATES = {"success": states.SUCCESS, "failure": states.FAILURE, "retry": states.RETRY,
                  "revoked": states.REVOKED}  # fmt: skip


class Deliveries:
    """Runs and settles the jobs of one worker."""

    def __init__(self, worker_id: str, settings: EngineSettings, broker: Broker, commits: CommitQueue,
                 metrics: Callable[[], WorkerMetrics | None]) -> None:  # fmt: skip
        self.id = worker_id
        self.settings = settings
        self.broker = broker
        self.commits = commits
        self.metrics = metrics
        self._celery: CeleryStore | None = None  # for Celery-sent jobs (runtime/celery_finish.py)

    async def process(self, task_id: str, raw: bytes, revoked: bool, delivered: int, run: LimitedRun) -> None:
        """Run one delivery and settle it: whatever happens, it ends in a final record, a retry or a dead letter."""
        try:
            msg = decode(raw, expected_id=task_id)
        except MessageError as exc:
            await self._settle_rejected(task_id, raw, str(exc), None, delivered)
            return
        with structlog.contextvars.bound_contextvars(task_id=msg.id, task_name=msg.task, retries=msg.retries):
            try:
                await self._run_and_finish(msg, raw, revoked, delivered, run)
            except asyncio.CancelledError:
                raise  # cold shutdown: the job is requeued (or its lease expires)
            except Exception as exc:  # the engine's own failure: settle the job, never loop
                log.exception("internal error while processing job; recording it as failed")
                await self._finish(msg, None, Attempt("failure", exc=exc, traceback=format_error(exc)), delivered)

    def duplicate(self, dup: Duplicate) -> None:
        """A delivery the store settled unrun (see ``claim.lua``): a replayed or re-sent message of a job that
        already finished (or is running). Logged and counted; the job's record is left as it is."""
        log.warning("duplicate delivery settled unrun: this job already finished or is running; its record "
                    "is left as it is", task_id=dup.task_id, task_name=dup.task, state=dup.state)  # fmt: skip
        metrics = self.metrics()
        if metrics is not None:  # a label per task this worker knows: a forged name must not add series
            try:
                metrics.duplicate(get_task(dup.task).name, dup.state)
            except NotRegistered:
                metrics.duplicate("unregistered", dup.state)

    async def _run_and_finish(self, msg: Message, raw: bytes, revoked: bool, delivered: int, run: LimitedRun) -> None:
        if revoked:
            await self._finish(msg, None, Attempt("revoked", exc=TaskRevokedError("revoked")), delivered)
            return
        if msg.expires is not None and time.time() > msg.expires:
            await self._finish(msg, None, Attempt("revoked", exc=TaskRevokedError("expired")), delivered)
            return
        limit = self.settings.max_deliveries
        if delivered > limit:
            reason = (
                f"delivered {delivered} times without finishing (max_deliveries={limit}): each delivery "
                "died before its result was written"
            )
            await self._settle_rejected(msg.id, raw, reason, msg, delivered, exc=DeliveryLimitExceeded(reason))
            return
        try:
            task = get_task(msg.task)
        except NotRegistered as exc:
            await self._settle_rejected(msg.id, raw, str(exc), msg, delivered)
            return
        if task.options.idempotent and self.broker is not None:
            # The task id doubles as an idempotency key: a job id that already succeeded never runs again.
            stored = await self.broker.idempotent_result(msg.id)
            if stored is not None:
                log.info("idempotent task already succeeded under this id; not running it again")
                await self._finish(msg, task, Attempt("success", value=loads(stored)), delivered)
                return
        soft = msg.soft_time_limit if msg.soft_time_limit is not None else task.soft_time_limit
        hard = msg.time_limit if msg.time_limit is not None else task.time_limit
        req = Request(
            id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, retries=msg.retries, delivered=delivered,
            called_directly=False, queue=msg.queue, priority=msg.priority, eta=msg.eta, expires=msg.expires,
            parent_id=msg.parent_id, root_id=msg.root_id, group_id=msg.group_id, hostname=self.id,
            time_limit=hard, soft_time_limit=soft, headers=msg.headers,
        )  # fmt: skip
        if delivered > 1:
            log.warning("job delivered again (a worker died or shut down while running it)", delivered=delivered)
        if signals.task_prerun.receivers:
            await signals.task_prerun.send(sender=task, task_id=msg.id, task=task, args=msg.args, kwargs=msg.kwargs)
        if task.options.track_started and celery_side(msg) is not None:
            await self._celery_started(msg, task.options.ignore_result)
        with running_span(msg.task, msg.id, msg.retries, msg.headers) as traced:
            started = time.monotonic()
            attempt = await run_attempt(task, req, soft, hard, run, log_context_bound=True)
            if attempt.outcome == "failure":
                log.error("task failed", error=repr(attempt.exc), seconds=round(time.monotonic() - started, 3))
            elif attempt.outcome == "retry":
                log.warning("task will retry", error=repr(attempt.exc),
                            countdown=attempt.retry and attempt.retry.countdown)  # fmt: skip
            await self._finish(msg, task, attempt, delivered, time.monotonic() - started)
            traced(OUTCOME_STATES[attempt.outcome], attempt.exc)
        await announce(task, msg, req, attempt)

    async def _settle_rejected(
        self,
        task_id: str,
        raw: bytes,
        reason: str,
        msg: Message | None,
        delivered: int,
        exc: BaseException | None = None,
    ) -> None:
        """A message that must not run (undecodable, forged, unknown task, delivered too often): dead letter."""
        log.error("message rejected", task_id=task_id, reason=reason)
        try:
            completion = rejected(task_id, raw, reason, self.id, msg, exc)
            if msg is not None and celery_side(msg) is not None:
                completion.celery = finish_ops(msg, completion, None, self.settings)
        except Exception as error:
            log.exception("could not plan the rejection; quarantining the job")
            await self._quarantine(task_id, f"{reason}; then: {error!r}")
            return
        await self._write(completion, delivered, raw)

    async def _finish(self, msg: Message, task: TaskDefinition | None, attempt: Attempt, delivered: int,
                      seconds: float | None = None) -> None:  # fmt: skip
        """Record the outcome and move the workflow on, all in one transaction with the ack."""
        try:
            completion = decide(msg, task, attempt, self.id)
        except Exception as exc:  # finishing failed: the job is a FAILURE with that error (logged)
            log.exception("could not finish the job (callbacks or workflow data); recording it as failed")
            completion = settle_failed(msg, exc, self.id)
        if celery_side(msg) is not None:
            completion.celery = finish_ops(msg, completion, attempt.value, self.settings)
        await self._write(completion, delivered, None, msg)
        metrics = self.metrics()
        if metrics is not None:
            state = (completion.record or {}).get("state") or OUTCOME_STATES[attempt.outcome]
            metrics.finished(msg.task, str(state), seconds)

    async def _write(self, completion: Completion, delivered: int, raw: bytes | None, msg: Message | None = None,
                     ) -> None:  # fmt: skip
        completion.token, completion.worker = delivered, self.id
        try:
            outcome = await self.commits.submit(completion)
        except Exception as exc:
            log.exception("could not write the job's completion; recording it as failed",
                          dead_letter_dropped=completion.dead_letter is not None)  # fmt: skip
            try:
                second = fallback(completion, msg, exc, self.id)
                second.token, second.worker = delivered, self.id
                outcome = await self.commits.submit(second)
            except Exception as again:  # noqa: BLE001 - nothing can be written for it: take it off the books
                await self._quarantine(completion.task_id, f"its completion cannot be written: {again!r}")
                return
        if outcome == "stale":
            log.warning(
                "result dropped: this worker no longer holds the job (it was paused or cut off past its "
                "lease and another worker took the job over)"
            )
        elif outcome == "final":
            log.warning("result dropped: another delivery had already finished this job")

    async def _celery_started(self, msg: Message, ignore_result: bool) -> None:
        """Celery's STARTED record (its ``track_started``), before the body runs; best effort, as in Celery."""
        record = started_record(msg, self.id, os.getpid(), ignore_result)
        if record is None:
            return
        if self._celery is None:
            self._celery = CeleryStore(self.broker, self.settings)
        try:
            await self._celery.store_result(msg.id, record)
        except Exception:  # the job runs anyway; its final record follows
            log.exception("could not write the Celery STARTED record")

    async def _quarantine(self, task_id: str, reason: str) -> None:
        try:
            await self.broker.quarantine(task_id, reason)
        except Exception:
            log.exception("could not quarantine the job", task_id=task_id, reason=reason)


_NO_HANDLER = {name: getattr(TaskDefinition, name) for name in ("on_success", "on_failure", "on_retry", "after_return")}


async def announce(task: TaskDefinition, msg: Message, req: Request, attempt: Attempt) -> None:
    """After the outcome is stored: the task's handler methods (``base=`` classes) and Celery's signals.
    Their errors are logged; the job's outcome is already settled and stays as it is."""
    state = OUTCOME_STATES[attempt.outcome]
    args, kwargs, einfo = msg.args, msg.kwargs, attempt.traceback
    retval = attempt.value if attempt.outcome == "success" else attempt.exc
    if attempt.outcome == "success":
        await _handler(task, "on_success", attempt.value, msg.id, args, kwargs)
        if signals.task_success.receivers:
            await signals.task_success.send(sender=task, result=attempt.value)
    elif attempt.outcome == "failure":
        await _handler(task, "on_failure", attempt.exc, msg.id, args, kwargs, einfo)
        if signals.task_failure.receivers:
            await signals.task_failure.send(sender=task, task_id=msg.id, exception=attempt.exc, args=args,
                                            kwargs=kwargs, traceback=einfo, einfo=einfo)  # fmt: skip
    elif attempt.outcome == "retry":
        await _handler(task, "on_retry", attempt.exc, msg.id, args, kwargs, einfo)
        if signals.task_retry.receivers:
            await signals.task_retry.send(sender=task, request=req, reason=attempt.exc, einfo=einfo)
    await _handler(task, "after_return", state, retval, msg.id, args, kwargs, einfo)
    if signals.task_postrun.receivers:
        await signals.task_postrun.send(sender=task, task_id=msg.id, task=task, args=args, kwargs=kwargs,
                                        retval=retval, state=state)  # fmt: skip


async def _handler(task: TaskDefinition, name: str, *args: Any) -> None:
    method = getattr(type(task), name)
    if method is _NO_HANDLER[name]:
        return  # the common case costs nothing
    try:
        result = getattr(task, name)(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # a handler's bug is logged, never turned into the job's outcome
        log.exception("task handler failed", handler=name)
