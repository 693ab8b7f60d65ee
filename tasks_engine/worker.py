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
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

import structlog

from tasks_engine.beat import Beat
from tasks_engine.clock import Backoff, now_iso, now_ms
from tasks_engine.codec import dumps, loads
from tasks_engine.commit import CommitQueue
from tasks_engine.completion import decide, rejected
from tasks_engine.config import EngineSettings, get_settings, redacted_url
from tasks_engine.exceptions import REDIS_UNAVAILABLE, MessageError, NotRegistered, TaskRevokedError
from tasks_engine.execution import Attempt, run_attempt
from tasks_engine.messages import Message, decode
from tasks_engine.registry import Request, TaskDefinition, get_task, registry
from tasks_engine.store import Broker, SyncHeartbeat, get_broker
from tasks_engine.timelimits import LimitedRun, current_steps

log = structlog.get_logger("tasks_engine.worker")


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
        self._idle_wait: asyncio.Future[Any] | None = None
        self._loop_tick = time.monotonic()
        self._thread_stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._commits: CommitQueue | None = None
        self._signals = 0
        self._spawned: set[asyncio.Task[Any]] = set()
        self.broker: Broker | None = None

    @property
    def signals_received(self) -> int:
        return self._signals

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # ------------------------------------------------------------ lifecycle
    async def run(self, handle_signals: bool = True) -> None:
        await self.start(handle_signals)
        await self._stopped.wait()

    async def start(self, handle_signals: bool = True) -> None:
        self.broker = get_broker()
        self._commits = CommitQueue(self.broker)
        await self._wait_for_redis()
        log.info(
            "worker starting",
            worker=self.id,
            queues=self.queues,
            max_jobs=self.max_jobs,
            tasks=len(registry),
            redis=redacted_url(),
        )
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
            self._background.append(asyncio.create_task(Beat(self.id).run(lambda: self.stopping), name="beat"))

    async def _wait_for_redis(self) -> None:
        assert self.broker is not None
        backoff = Backoff(first=0.2)
        while True:
            try:
                await self.broker.redis.ping()
                return
            except REDIS_UNAVAILABLE as exc:
                delay = backoff.next()
                log.warning("redis unreachable, retrying", redis=redacted_url(), error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not garbage-collected mid-way."""
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    def handle_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT: warm shutdown (finish running jobs up to the grace period). Second: cold."""
        self._signals += 1
        if self._signals == 1:
            log.warning(
                "warm shutdown: no new jobs; waiting for running ones",
                running=len(self.running),
                grace=self.settings.shutdown_grace_seconds,
                signal=signum,
            )
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
        if self._commits is not None:
            await self._commits.flush(self.settings.shutdown_grace_seconds)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._thread_stop.set()
        if self.broker is not None:
            try:
                await self.broker.forget_worker(self.id)
            except REDIS_UNAVAILABLE:
                pass
        log.info("worker stopped", worker=self.id, processed=self.processed)
        self._stopped.set()

    async def _requeue(self, ids: list[str]) -> None:
        assert self.broker is not None
        try:
            log.warning("jobs put back in their queues", ids=await self.broker.requeue(ids))
        except REDIS_UNAVAILABLE as exc:
            log.error(
                "could not put jobs back; their leases will expire and another worker takes them",
                ids=ids,
                error=str(exc),
            )

    # ------------------------------------------------------------ consuming
    def _rate_limits(self) -> str:
        return dumps({name: t.rate.lua_value() for name, t in registry.items() if t.rate is not None}).decode()

    async def _consume(self) -> None:
        assert self.broker is not None
        broker = self.broker
        limits = self._rate_limits()
        backoff = Backoff()
        lease_ms = int(self.settings.lease_seconds * 1000)
        while not self.stopping:
            free = self.max_jobs - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                jobs, next_due = await broker.claim(min(free, 200), lease_ms, self.id, limits, self.queues)
                backoff.reset()
            except REDIS_UNAVAILABLE as exc:
                delay = backoff.next()
                log.error("redis unreachable; backing off", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            for tid, raw, revoked, delivered in jobs:
                run = LimitedRun()
                job = asyncio.create_task(self._process(tid, raw, revoked, delivered, run))
                self.running[tid] = (job, run)
                job.add_done_callback(functools.partial(self._forget_job, tid))
            if jobs or self.stopping:
                continue
            # Redis times a blocking call out only on its cron tick (every 100 ms at the default hz=10)
            # unless other traffic wakes it: far too coarse for rate-limited and deferred jobs. So the due
            # time is kept by a local timer, while one BLPOP stays pending across rounds and still wakes
            # us the moment a job is enqueued.
            timeout = 1.0
            if next_due is not None:
                timeout = min(timeout, max(0.0, (next_due - now_ms()) / 1000))
            if self._idle_wait is None:
                self._idle_wait = asyncio.ensure_future(broker.wait_for_work(self.queues))
            done, _ = await asyncio.wait({self._idle_wait}, timeout=timeout)
            if not done:
                continue
            finished, self._idle_wait = self._idle_wait, None
            if finished.cancelled():
                continue  # stop() cancelled it; the loop condition ends the round
            error = finished.exception()
            if isinstance(error, REDIS_UNAVAILABLE):
                log.error("redis unreachable while idle", error=str(error))
                await asyncio.sleep(backoff.next())
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
                log.warning(
                    "max_memory_per_child exceeded; exiting for a fresh process", rss_kb=rss_kb, limit_kb=ceiling
                )
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
                stored = await self.broker.idempotent_result(msg.id)
                if stored is not None:
                    log.info("idempotent task already succeeded under this id; not running it again")
                    await self._complete(msg, task, Attempt("success", value=loads(stored)))
                    return
            soft = msg.soft_time_limit if msg.soft_time_limit is not None else task.soft_time_limit
            hard = msg.time_limit if msg.time_limit is not None else task.time_limit
            req = Request(
                id=msg.id,
                task=msg.task,
                args=msg.args,
                kwargs=msg.kwargs,
                retries=msg.retries,
                delivered=delivered,
                called_directly=False,
                queue=msg.queue,
                priority=msg.priority,
                eta=msg.eta,
                expires=msg.expires,
                parent_id=msg.parent_id,
                root_id=msg.root_id,
                group_id=msg.group_id,
                hostname=self.id,
                time_limit=hard,
                soft_time_limit=soft,
                headers=msg.headers,
            )
            if delivered > 1:
                log.warning("job delivered again (a worker died or shut down while running it)", delivered=delivered)
            started = time.monotonic()
            attempt = await run_attempt(task, req, soft, hard, run)
            if attempt.outcome == "failure":
                log.error("task failed", error=repr(attempt.exc), seconds=round(time.monotonic() - started, 3))
            elif attempt.outcome == "retry":
                log.warning(
                    "task will retry", error=repr(attempt.exc), countdown=attempt.retry and attempt.retry.countdown
                )
            await self._complete(msg, task, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error while processing job")
        finally:
            del bound
            structlog.contextvars.unbind_contextvars("task_id", "task_name", "retries")

    async def _dead_letter(self, task_id: str, raw: bytes, reason: str, msg: Message | None = None) -> None:
        log.error("message rejected", task_id=task_id, reason=reason)
        await self._submit(rejected(task_id, raw, reason, self.id, msg))

    async def _complete(self, msg: Message, task: TaskDefinition | None, attempt: Attempt) -> None:
        """Record the outcome and move the workflow on, all in one transaction with the ack."""
        await self._submit(decide(msg, task, attempt, self.id))

    async def _submit(self, completion: Any) -> None:
        assert self._commits is not None
        await self._commits.submit(completion)

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
                back = await self.broker.reap_expired()
                if back:
                    log.warning("requeued jobs of a lost worker", ids=back)
            except REDIS_UNAVAILABLE:
                healthy_since = time.monotonic() + 1.0

    async def _control_listener(self) -> None:
        """Broadcast commands: ``terminate`` cancels a running job here if we have it."""
        assert self.broker is not None
        while True:
            pubsub = self.broker.redis.pubsub()
            try:
                await pubsub.subscribe(self.broker.keys.control_channel)
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
            except REDIS_UNAVAILABLE:
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
        heartbeat = SyncHeartbeat(self.settings)
        interval = self.settings.heartbeat_seconds
        reported_stall = False
        next_beat = 0.0
        while not self._thread_stop.wait(0.25):
            stalled = time.monotonic() - self._loop_tick
            if stalled > self.settings.blocked_loop_seconds:
                if not reported_stall:
                    # The task whose step holds the loop (the engine steps every async task itself).
                    culprit = max(current_steps(), key=lambda step: step[1], default=(None, 0.0))[0]
                    log.error(
                        "event loop blocked: a task runs sync code without awaiting; use a def task "
                        "(runs in a thread) or await",
                        task_id=culprit,
                        blocked_seconds=round(stalled, 2),
                        running=list(self.running),
                    )
                    reported_stall = True
            else:
                reported_stall = False
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + interval
            try:
                ids = tuple(self.running)
                heartbeat.beat(
                    self.id,
                    ids,
                    now_ms() + int(self.settings.lease_seconds * 1000),
                    {
                        "id": self.id,
                        "queues": self.queues,
                        "running": len(ids),
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "processed": self.processed,
                        "max_jobs": self.max_jobs,
                        "seen": now_iso(),
                    },
                    ttl=max(3, int(self.settings.lease_seconds)),
                )
            except REDIS_UNAVAILABLE:
                next_beat = time.monotonic() + 0.5
            except RuntimeError:  # interpreter shutting down
                next_beat = time.monotonic() + 0.5
        heartbeat.close()
