"""The worker: claims jobs from Redis, runs them on one event loop, writes results, moves workflows on.

Flow per job: ``claim`` (Lua, a batch per round trip: due deferred jobs promoted, best priority
first across all consumed queues, rate limits applied, lease taken, STARTED recorded) → run the
attempt (limits, retries) → ``complete`` (one MULTI: result record, ack, next chain step / chord
part / callbacks, pub/sub wake-up). Idle workers block on a wake-up list instead of polling.

A heartbeat thread renews the leases of running jobs every ``heartbeat_seconds`` (even when a
task blocks the loop, which it then reports loudly); every worker requeues jobs whose lease ran
out, so a killed worker's jobs run again within ``lease_seconds`` + a heartbeat, whatever their
time limit.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import resource
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from datetime import UTC
from typing import Any

import redis as sync_redis
import structlog
from pydantic_core import PydanticSerializationError, to_jsonable_python

from tasks_engine import states
from tasks_engine.broker import Broker, Enqueue, awaited, get_broker, now_ms
from tasks_engine.canvas import Context, Plan, Signature, from_dict, leaf_ids_of, new_id
from tasks_engine.config import EngineSettings, get_settings
from tasks_engine.control import REDIS_ERRORS, redacted_url
from tasks_engine.exceptions import (
    MessageError,
    NotRegistered,
    TaskRevokedError,
)
from tasks_engine.execution import Attempt, run_attempt
from tasks_engine.limits import LimitedRun, current_steps
from tasks_engine.messages import Message, decode, dumps, encode, loads, peek_id
from tasks_engine.results import EagerResult, exception_fields, now_iso
from tasks_engine.task import Request, Task, get_task, registry

log = structlog.get_logger("tasks_engine.worker")
_COMMIT_BATCH = 500  # completions per MULTI at most
_EXC_FIELDS = ("exc_type", "exc_module", "exc_message", "exc_args", "traceback")


class Worker:
    """Consumes one or more queues with one shared concurrency limit (``max_jobs``)."""

    def __init__(
        self,
        queues: Iterable[str] | None = None,
        max_jobs: int | None = None,
        settings: EngineSettings | None = None,
        beat: bool | None = None,
        max_tasks: int | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.queues = list(queues or [self.settings.default_queue])
        self.max_jobs = max_jobs or self.settings.max_jobs
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.beat_enabled = self.settings.beat_enabled if beat is None else beat
        self.max_tasks = max_tasks if max_tasks is not None else self.settings.max_tasks_per_child
        self.running: dict[str, tuple[asyncio.Task[None], LimitedRun]] = {}
        self.processed = 0
        self.stopping = False
        self._slot = asyncio.Event()
        self._stopped = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []
        self._idle_wait: asyncio.Task[Any] | None = None
        self._loop_tick = time.monotonic()
        self._thread_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_writes: list[tuple[str, Any, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._signals = 0
        self._spawned: set[asyncio.Task[Any]] = set()
        self.broker: Broker | None = None

    # ------------------------------------------------------------ lifecycle
    async def run(self, handle_signals: bool = True) -> None:
        await self.start(handle_signals)
        await self._stopped.wait()

    async def start(self, handle_signals: bool = True) -> None:
        self.broker = get_broker()
        await self._wait_for_redis()
        log.info("worker starting", worker=self.id, queues=self.queues, max_jobs=self.max_jobs,
                 tasks=len(registry), redis=redacted_url())
        if handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.handle_signal, sig)
        self._thread = threading.Thread(target=self._heartbeat_thread, name="tasks-engine-heartbeat", daemon=True)
        self._thread.start()
        self._background = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._reaper(), name="reaper"),
            asyncio.create_task(self._control_listener(), name="control"),
            asyncio.create_task(self._loop_ticker(), name="ticker"),
        ]
        # What is loaded by now lives as long as the process: move it out of the collector's sight, so
        # the full collections that per-job garbage triggers scan only young objects (~15% of a
        # no-op job's CPU went to gc before).
        gc.freeze()
        if self.beat_enabled:
            from tasks_engine.beat import Beat

            self._background.append(asyncio.create_task(Beat(self.id).run(lambda: self.stopping), name="beat"))

    async def _wait_for_redis(self) -> None:
        assert self.broker is not None
        delay = 0.2
        while True:
            try:
                await self.broker.redis.ping()
                return
            except REDIS_ERRORS as exc:
                log.warning("redis unreachable, retrying", redis=redacted_url(), error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not garbage-collected mid-way."""
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def handle_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT: warm shutdown (finish running jobs up to the grace period). Second: cold."""
        self._signals += 1
        if self._signals == 1:
            log.warning("warm shutdown: no new jobs; waiting for running ones",
                        running=len(self.running), grace=self.settings.shutdown_grace_seconds, signal=signum)
            self.spawn(self.stop())
        else:
            log.warning("cold shutdown: cancelling running jobs and putting them back", running=len(self.running))
            self.spawn(self.stop(grace=0))

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking jobs, wait for running ones (``grace``), then requeue the rest without counting a retry."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.stopping = True
        self._slot.set()
        if self._idle_wait is not None:
            self._idle_wait.cancel()
        if self._stopped.is_set():
            return
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if grace == 0 or self.running:
            leftover = list(self.running)
            for task, run in list(self.running.values()):
                run.terminated = False
                task.cancel()
            await asyncio.gather(*(t for t, _ in list(self.running.values())), return_exceptions=True)
            if leftover:
                await self._requeue(leftover)
        await self._flush_pending(final=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._thread_stop.set()
        if self.broker is not None:
            try:
                await self.broker.redis.delete(self.broker.key("worker", self.id))
            except REDIS_ERRORS:
                pass
        log.info("worker stopped", worker=self.id, processed=self.processed)
        self._stopped.set()

    async def _requeue(self, ids: list[str]) -> None:
        assert self.broker is not None
        try:
            back = await self.broker.requeue_script(args=[self.broker.prefix, now_ms(), "ids", *ids])
            log.warning("jobs put back in their queues", ids=[b.decode() for b in back])
        except REDIS_ERRORS as exc:
            log.error("could not put jobs back; their leases will expire and another worker takes them",
                      ids=ids, error=str(exc))

    # ------------------------------------------------------------ consuming
    def _rate_limits(self) -> str:
        return dumps({name: t.rate.lua_value() for name, t in registry.items() if t.rate is not None}).decode()

    async def _consume(self) -> None:
        assert self.broker is not None
        broker = self.broker
        limits = self._rate_limits()
        delay = 0.1
        wake_keys = [broker.key("wake", q) for q in self.queues]
        while not self.stopping:
            free = self.max_jobs - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                now = now_ms()
                lease = now + int(self.settings.lease_seconds * 1000)
                jobs, next_due = await broker.claim_script(
                    args=[broker.prefix, now, min(free, 200), lease, self.id, limits, *self.queues]
                )
                delay = 0.1
            except REDIS_ERRORS as exc:
                log.error("redis unreachable; backing off", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for task_id, raw, revoked, delivered in jobs:
                tid = task_id.decode()
                run = LimitedRun()
                job = asyncio.create_task(self._process(tid, raw, bool(revoked), int(delivered), run))
                self.running[tid] = (job, run)
                job.add_done_callback(functools.partial(self._forget_job, tid))
            if jobs or self.stopping:
                continue
            # Redis times a blocking call out only on its cron tick (every 100 ms at the default hz=10)
            # unless other traffic wakes it: far too coarse for rate-limited and deferred jobs. So the due
            # time is kept by a local timer, while one BLPOP stays pending across rounds and still wakes
            # us the moment a job is enqueued.
            timeout = 1.0
            if next_due:
                timeout = min(timeout, max(0.0, (int(next_due) - now_ms()) / 1000))
            if self._idle_wait is None:
                self._idle_wait = asyncio.ensure_future(awaited(broker.redis.blpop(wake_keys, timeout=1)))
            done, _ = await asyncio.wait({self._idle_wait}, timeout=timeout)
            if not done:
                continue
            finished, self._idle_wait = self._idle_wait, None
            if finished.cancelled():
                continue  # stop() cancelled it; the loop condition ends the round
            error = finished.exception()
            if isinstance(error, REDIS_ERRORS):
                log.error("redis unreachable while idle", error=str(error))
                await asyncio.sleep(delay)
            elif error is not None:
                raise error

    def _forget_job(self, task_id: str, _done: asyncio.Task[None]) -> None:
        self.running.pop(task_id, None)
        self.processed += 1
        self._slot.set()
        if not self.stopping and self._should_recycle():
            self.spawn(self.stop())

    def _should_recycle(self) -> bool:
        if self.max_tasks and self.processed >= self.max_tasks:
            log.info("max_tasks_per_child reached; exiting for a fresh process", processed=self.processed)
            return True
        ceiling = self.settings.max_memory_per_child_kb
        if ceiling:
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if rss_kb > ceiling:
                log.warning("max_memory_per_child exceeded; exiting for a fresh process",
                            rss_kb=rss_kb, limit_kb=ceiling)
                return True
        return False

    # ------------------------------------------------------------ one job
    async def _process(self, task_id: str, raw: bytes, revoked: bool, delivered: int, run: LimitedRun) -> None:
        try:
            msg = decode(raw, expected_id=task_id)
        except MessageError as exc:
            await self._dead_letter(task_id, raw, str(exc))
            return
        bound = structlog.contextvars.bind_contextvars(task_id=msg.id, task_name=msg.task, retries=msg.retries)
        try:
            if revoked:
                await self._complete(msg, None, Attempt("revoked", exc=TaskRevokedError("revoked")))
                return
            if msg.expires is not None and time.time() > msg.expires:
                await self._complete(msg, None, Attempt("revoked", exc=TaskRevokedError("expired")))
                return
            try:
                task = get_task(msg.task)
            except NotRegistered as exc:
                await self._dead_letter(task_id, raw, str(exc), msg)
                return
            if task.options.idempotent and self.broker is not None:
                # The task id doubles as an idempotency key: a job id that already succeeded never runs again.
                stored = await self.broker.redis.get(self.broker.key("done", msg.id))
                if stored is not None:
                    log.info("idempotent task already succeeded under this id; not running it again")
                    await self._complete(msg, task, Attempt("success", value=loads(stored)))
                    return
            soft = msg.soft_time_limit if msg.soft_time_limit is not None else task.soft_time_limit
            hard = msg.time_limit if msg.time_limit is not None else task.time_limit
            req = Request(
                id=msg.id, task=msg.task, args=msg.args, kwargs=msg.kwargs, retries=msg.retries,
                delivered=delivered, called_directly=False, queue=msg.queue, priority=msg.priority, eta=msg.eta,
                expires=msg.expires, parent_id=msg.parent_id, root_id=msg.root_id, group_id=msg.group_id,
                hostname=self.id, time_limit=hard, soft_time_limit=soft, headers=msg.headers,
            )
            if delivered > 1:
                log.warning("job delivered again (a worker died or shut down while running it)", delivered=delivered)
            started = time.monotonic()
            attempt = await run_attempt(task, req, soft, hard, run)
            if attempt.outcome == "failure":
                log.error("task failed", error=repr(attempt.exc), seconds=round(time.monotonic() - started, 3))
            elif attempt.outcome == "retry":
                log.warning("task will retry", error=repr(attempt.exc),
                            countdown=attempt.retry and attempt.retry.countdown)
            await self._complete(msg, task, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error while processing job")
        finally:
            del bound
            structlog.contextvars.unbind_contextvars("task_id", "task_name", "retries")

    async def _dead_letter(self, task_id: str, raw: bytes, reason: str, msg: Message | None = None) -> None:
        """An undecodable, forged or unknown-task message: FAILURE with the reason, kept in ``dead``, and
        acknowledged (left in ``active`` it would come back at every lease expiry and be dead-lettered again)."""
        assert self.broker is not None
        b = self.broker
        log.error("message rejected", task_id=task_id, reason=reason)
        record = {"state": states.FAILURE, "exc_type": "MessageError", "exc_module": "tasks_engine.exceptions",
                  "exc_message": reason, "exc_args": dumps([reason]).decode(), "traceback": "",
                  "date_done": now_iso(), "worker": self.id, "task": ""}
        entry = dumps({"id": task_id, "reason": reason, "at": now_iso(), "raw": raw[:4096].decode(errors="replace"),
                       "peek_id": peek_id(raw), "task": msg.task if msg else None})

        def add(pipe: Any) -> None:
            pipe.lpush(b.key("dead"), entry)
            pipe.ltrim(b.key("dead"), 0, 9999)
            if msg is None:
                pipe.hset(b.result_key(task_id), mapping=record)
                pipe.expire(b.result_key(task_id), self.settings.result_expires)
                pipe.zrem(b.key("active"), task_id)
                pipe.hdel(b.key("inflight"), task_id)
                pipe.delete(b.key("msg", task_id))
                pipe.publish(b.done_channel, task_id)

        await self._write(task_id, add, [])
        if msg is not None:  # a valid message for a task we lack: fail it like any failure, so chains/chords learn
            exc = NotRegistered(reason)
            await self._complete(msg, None, Attempt("failure", exc=exc, traceback=f"NotRegistered: {reason}"))

    async def _complete(self, msg: Message, task: Task | None, attempt: Attempt) -> None:
        """Record the outcome and move the workflow on, all in one transaction with the ack."""
        assert self.broker is not None
        b = self.broker
        ttl = self.settings.result_expires
        base = {"task": msg.task, "retries": msg.retries, "worker": self.id, "root_id": msg.root_id or msg.id}
        if msg.parent_id:
            base["parent_id"] = msg.parent_id
        if msg.group_id:
            base["group_id"] = msg.group_id
        plan = Plan()
        chord_calls: list[list[Any]] = []
        extra_records: list[tuple[str, dict[str, Any]]] = []
        ignore = msg.ignore_result if msg.ignore_result is not None else bool(task and task.options.ignore_result)
        outcome = attempt.outcome

        if outcome == "success":
            try:
                value = to_jsonable_python(attempt.value)
                result_json = dumps(value).decode()
            except (TypeError, PydanticSerializationError, ValueError):
                exc = TypeError(f"task {msg.task!r} returned a {type(attempt.value).__name__}, which cannot be "
                                "serialized to JSON")
                attempt = Attempt("failure", exc=exc, traceback=str(exc))
                outcome = "failure"
        if outcome == "success":
            try:
                ctx = Context(parent_id=msg.id, root_id=msg.root_id, nx=True)
                for link in msg.links:
                    from_dict(link)._plan([value], replace(ctx, partial=False), plan)
                if msg.chain:
                    nxt, rest = from_dict(msg.chain[0]), [from_dict(d) for d in msg.chain[1:]]
                    nxt._plan([value], replace(ctx, chain_rest=rest, chord=msg.chord), plan)
            except Exception as exc:  # noqa: BLE001 - e.g. the next step rejects this result: fail, never loop
                plan = Plan()
                attempt = Attempt("failure", exc=exc, traceback="".join(traceback.format_exception(exc)))
                outcome = "failure"
        if outcome == "success":
            record = {**base, "state": states.SUCCESS, "result": result_json, "date_done": now_iso()}
            if not msg.chain and msg.chord is not None:
                chord_calls.append([msg.chord.id, msg.id, msg.chord.index, "1", result_json, "", ""])
        elif outcome == "retry":
            assert attempt.retry is not None
            retry = attempt.retry
            countdown = retry.countdown
            if countdown is not None:  # countdown wins over eta, as in Celery
                eta_s = time.time() + countdown
            else:
                eta = retry.eta
                # A naive eta means UTC, as everywhere else in the engine.
                eta_s = (eta if eta.tzinfo else eta.replace(tzinfo=UTC)).timestamp() if eta else time.time()
            again = msg.model_copy(update={
                "retries": msg.retries + 1,
                "args": retry.new_args if retry.new_args is not None else msg.args,
                "kwargs": retry.new_kwargs if retry.new_kwargs is not None else msg.kwargs,
                "eta": eta_s if eta_s > time.time() else None,
            })
            exc_fields = exception_fields(attempt.exc, attempt.traceback) if attempt.exc else {}
            record = {**base, "state": states.RETRY, "retries": msg.retries + 1, "delivered": 0, **exc_fields}
            plan.enqueues.append(Enqueue(msg.id, encode(again), msg.queue, msg.priority,
                                         int(eta_s * 1000) if eta_s > time.time() else 0))
        else:  # failure or revoked
            error = attempt.exc or TaskRevokedError("terminated")
            state = states.REVOKED if outcome == "revoked" else states.FAILURE
            record = {**base, "state": state, **exception_fields(error, attempt.traceback or ""),
                      "date_done": now_iso()}
            if outcome == "failure":
                for errback in msg.link_errors:
                    from_dict(errback)._errback_call(msg.id, error, attempt.traceback)._plan(
                        [], Context(parent_id=msg.id, nx=False), plan)
            later = leaf_ids_of(msg.chain)
            for later_id in later:
                extra_records.append((later_id, {"state": state, **exception_fields(error, attempt.traceback or ""),
                                                 "date_done": now_iso(), "parent_id": msg.id}))
            if msg.chord is not None:
                text = f"Dependency {msg.id} raised {type(error).__name__}({str(error)!r})"
                chord_calls.append([msg.chord.id, msg.id, msg.chord.index, "0", "null", text,
                                    attempt.traceback or ""])
        done = outcome != "retry"

        async def add(pipe: Any) -> None:
            key = b.result_key(msg.id)
            if ignore and done:
                pipe.delete(key)
            else:
                if outcome == "success" and msg.retries:  # only an earlier attempt can have left them
                    pipe.hdel(key, *_EXC_FIELDS)
                pipe.hset(key, mapping=record)
                pipe.expire(key, ttl)
            for other_id, other in extra_records:
                pipe.hset(b.result_key(other_id), mapping=other)
                pipe.expire(b.result_key(other_id), ttl)
                pipe.set(b.key("revoked", other_id), "1", ex=ttl)  # they must never start now
                pipe.publish(b.done_channel, other_id)
            pipe.zrem(b.key("active"), msg.id)
            pipe.hdel(b.key("inflight"), msg.id)
            if done:
                pipe.delete(b.key("msg", msg.id))
            await plan.add_to(pipe)
            for call in chord_calls:
                await b.chord_part_script(
                    args=[b.prefix, call[0], call[1], call[2], call[3], call[4], call[5], call[6], now_ms(),
                          now_iso(), ttl], client=pipe)
            if done:
                pipe.publish(b.done_channel, msg.id)
            if outcome == "success" and task is not None and task.options.idempotent:
                pipe.set(b.key("done", msg.id), result_json, ex=ttl)

        await self._write(msg.id, add, [])

    async def _write(self, task_id: str, add: Any, _unused: list[Any]) -> None:
        """Queue one completion for the next group commit and return once Redis has it.

        Completions that finish while a commit is in flight share the next MULTI: one connection
        checkout, one socket write and one read for the whole batch instead of one each per job.
        Each job's writes are inside that transaction, so each stays all-or-nothing."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_writes.append((task_id, add, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._commit_loop(), name="commit")
        await asyncio.shield(fut)  # a cancelled job still gets its result written

    async def _commit_loop(self) -> None:
        """Drain ``_pending_writes``, one MULTI per batch."""
        while self._pending_writes:
            batch = self._pending_writes[:_COMMIT_BATCH]
            del self._pending_writes[:_COMMIT_BATCH]
            try:
                errors = await self._commit(batch)
            except Exception:  # noqa: BLE001 - Redis refused the transaction: redo one by one, only the culprit fails
                errors = []
                for entry in batch:
                    try:
                        errors.extend(await self._commit([entry]))
                    except Exception as exc:  # noqa: BLE001 - reported to that job's _process
                        errors.append(exc)
            for (_, _, fut), error in zip(batch, errors, strict=True):
                if fut.done():
                    continue
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)

    async def _commit(self, batch: list[tuple[str, Any, asyncio.Future[None]]]) -> list[BaseException | None]:
        """Write ``batch`` in one MULTI; while Redis is down keep it and retry (never drop it)."""
        assert self.broker is not None
        delay = 0.1
        while True:
            spans: list[tuple[int, int]] = []
            failed: dict[int, BaseException] = {}
            try:
                async with self.broker.redis.pipeline(transaction=True) as pipe:
                    for index, (_, add, _) in enumerate(batch):
                        first = len(pipe.command_stack)
                        try:
                            maybe = add(pipe)
                            if asyncio.iscoroutine(maybe):
                                await maybe
                        except Exception as exc:  # noqa: BLE001 - one job's bug must not sink the batch
                            del pipe.command_stack[first:]
                            failed[index] = exc
                        spans.append((first, len(pipe.command_stack)))
                    replies = await pipe.execute(raise_on_error=False) if pipe.command_stack else []
            except REDIS_ERRORS as exc:
                if delay == 0.1:
                    log.error("redis unreachable: results buffered until it is back", jobs=len(batch),
                              task_ids=[t for t, _, _ in batch[:10]], error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return [failed.get(i) or next((r for r in replies[a:b] if isinstance(r, Exception)), None)
                    for i, (a, b) in enumerate(spans)]

    async def _flush_pending(self, final: bool = False) -> None:
        """Wait for buffered completions (at shutdown: up to the grace period, then give up loudly;
        the leases of those jobs expire and they run again elsewhere)."""
        writer = self._writer
        if writer is None or writer.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(writer), self.settings.shutdown_grace_seconds if final else None)
        except TimeoutError:
            log.error("results still unwritten at shutdown (redis unreachable); their jobs will run again",
                      jobs=len(self._pending_writes))
            writer.cancel()

    # ------------------------------------------------------------ background duties
    async def _reaper(self) -> None:
        """Requeue jobs whose lease expired (their worker died); every worker does this, cheaply.

        After a Redis outage every lease looks expired, so reaping waits until Redis has answered
        for two heartbeats — time for live workers (this one included) to renew theirs.
        """
        assert self.broker is not None
        healthy_since = 0.0  # at start-up there is no outage to wait out
        while True:
            await asyncio.sleep(1.0)
            try:
                if time.monotonic() - healthy_since < 2 * self.settings.heartbeat_seconds:
                    await self.broker.redis.ping()
                    continue
                back = await self.broker.requeue_script(args=[self.broker.prefix, now_ms(), "expired"])
                if back:
                    log.warning("requeued jobs of a lost worker", ids=[b.decode() for b in back])
            except REDIS_ERRORS:
                healthy_since = time.monotonic() + 1.0

    async def _control_listener(self) -> None:
        """Broadcast commands: ``terminate`` cancels a running job here if we have it."""
        assert self.broker is not None
        while True:
            pubsub = self.broker.redis.pubsub()
            try:
                await pubsub.subscribe(self.broker.control_channel)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    command = loads(message["data"])
                    if command.get("action") == "terminate":
                        for task_id in command.get("ids", []):
                            entry = self.running.get(task_id)
                            if entry is not None:
                                log.warning("terminating running job (revoked)", task_id=task_id)
                                entry[1].terminate()
            except REDIS_ERRORS:
                await asyncio.sleep(1.0)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _loop_ticker(self) -> None:
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(0.1)

    def _heartbeat_thread(self) -> None:
        """Renew leases and advertise this worker from a thread, so a blocked loop cannot lose its jobs;
        also the watchdog that names the task blocking the loop."""
        client = sync_redis.Redis.from_url(self.settings.redis_url.get_secret_value(), socket_timeout=5)
        prefix = self.settings.key_prefix
        interval = self.settings.heartbeat_seconds
        reported_stall = False
        next_beat = 0.0
        while not self._thread_stop.wait(0.25):
            stalled = time.monotonic() - self._loop_tick
            if stalled > self.settings.blocked_loop_seconds:
                if not reported_stall:
                    # The task whose step holds the loop (the engine steps every async task itself).
                    culprit = max(current_steps(), key=lambda step: step[1], default=(None, 0.0))[0]
                    log.error("event loop blocked: a task runs sync code without awaiting; use a def task "
                              "(runs in a thread) or await", task_id=culprit, blocked_seconds=round(stalled, 2),
                              running=list(self.running))
                    reported_stall = True
            else:
                reported_stall = False
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + interval
            try:
                ids = tuple(self.running)
                deadline = now_ms() + int(self.settings.lease_seconds * 1000)
                pipe = client.pipeline(transaction=False)
                if ids:
                    pipe.zadd(f"{prefix}:active", dict.fromkeys(ids, deadline), xx=True)
                pipe.set(f"{prefix}:worker:{self.id}", dumps({
                    "id": self.id, "queues": self.queues, "running": len(ids), "pid": os.getpid(),
                    "host": socket.gethostname(), "processed": self.processed, "max_jobs": self.max_jobs,
                    "seen": now_iso()}), ex=max(3, int(self.settings.lease_seconds)))
                pipe.execute()
            except (sync_redis.exceptions.ConnectionError, sync_redis.exceptions.TimeoutError, OSError, RuntimeError):
                next_beat = time.monotonic() + 0.5
        client.close()


# ---------------------------------------------------------------- eager execution
async def run_eager(sig: Signature, prefix: list[Any], parent: Any) -> EagerResult:
    """Run one signature in-process like a worker would (JSON round trip, retries at once, callbacks)."""
    task = get_task(sig.task)
    args = ([] if sig.immutable else list(prefix)) + list(sig.args)
    kwargs = dict(sig.kwargs)
    args, kwargs = task.prepare_args(args, kwargs, complete=True)
    result = EagerResult(sig.options.get("task_id") or new_id(), parent)
    soft = sig.options.get("soft_time_limit", task.soft_time_limit)
    hard = sig.options.get("time_limit", task.time_limit)
    req = Request(id=result.id, task=task.name, args=args, kwargs=kwargs, is_eager=True, called_directly=False)
    while True:
        attempt = await run_attempt(task, req, soft, hard)
        if attempt.outcome == "retry":
            assert attempt.retry is not None
            req = replace(req, retries=req.retries + 1,
                          args=attempt.retry.new_args if attempt.retry.new_args is not None else req.args,
                          kwargs=attempt.retry.new_kwargs if attempt.retry.new_kwargs is not None else req.kwargs)
            result.retries = req.retries
            continue
        break
    if attempt.outcome == "success":
        try:
            value = loads(dumps(to_jsonable_python(attempt.value)))
        except (TypeError, PydanticSerializationError, ValueError):
            exc = TypeError(
                f"task {task.name!r} returned a {type(attempt.value).__name__}, which cannot be serialized to JSON"
            )
            result._finish(states.FAILURE, exc=exc, tb=str(exc))
            return result
        result._finish(states.SUCCESS, value=value)
        for link in sig.options.get("link", []) or []:
            await (link if isinstance(link, Signature) else from_dict(link))._eager([value], result)
        return result
    error: BaseException = attempt.exc or TaskRevokedError("revoked")
    result._finish(states.REVOKED if attempt.outcome == "revoked" else states.FAILURE, exc=error, tb=attempt.traceback)
    for errback in sig.options.get("link_error", []) or []:
        eb = errback if isinstance(errback, Signature) else from_dict(errback)
        await eb._errback_call(result.id, error, attempt.traceback)._eager([], result)
    return result
