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
import inspect
import os
import resource
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import structlog

from tasks_engine import signals
from tasks_engine.client.beat import Beat
from tasks_engine.client.beat import entries as beat_entries
from tasks_engine.core.clock import Backoff, now_iso
from tasks_engine.core.codec import dumps, loads
from tasks_engine.core.config import EngineSettings, get_settings, redacted_url
from tasks_engine.core.context import Hook, current_worker_context
from tasks_engine.exceptions import (
    REDIS_UNAVAILABLE,
    EngineConfigurationError,
)
from tasks_engine.execution.timelimits import LimitedRun
from tasks_engine.model.registry import registry
from tasks_engine.runtime.celery_consumer import CeleryConsumer
from tasks_engine.runtime.commit import CommitQueue
from tasks_engine.runtime.delivery import Deliveries
from tasks_engine.runtime.supervision import HeartbeatThread, LoopHealth, supervised
from tasks_engine.store import Broker, get_broker

if TYPE_CHECKING:
    from tasks_engine.ops.metrics import WorkerMetrics

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
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.ctx: dict[str, Any] = {}  # the worker context its tasks see (worker_context())
        self.on_startup, self.on_shutdown = on_startup, on_shutdown
        self.queues = list(queues or [self.settings.default_queue])
        # Celery's queues (celery_queues) are engine queues too: taken-over messages run from there.
        self.queues += [q for q in self.settings.celery_queues if q not in self.queues]
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
        self._handed_started = False  # the last idle wake-up started a handed job (see _on_wake)
        self.loop_tick = time.monotonic()
        self.health = LoopHealth()
        self.started_at = now_iso()
        self.task_names = sorted(registry)
        self.metrics: WorkerMetrics | None = None  # with metrics_port
        self._metrics_server: asyncio.Server | None = None
        self._thread: HeartbeatThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commits: CommitQueue | None = None
        self.deliveries: Deliveries | None = None
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
        self._loop = asyncio.get_running_loop()
        self._commits = CommitQueue(self.broker)
        self.deliveries = Deliveries(self.id, self.settings, self.broker, self._commits, lambda: self.metrics)
        await self._wait_for_redis()
        await self._check_eviction()
        current_worker_context.set(self.ctx)  # every loop and job started from here on sees it
        if self.on_startup is not None:
            await _call_hook(self.on_startup, self.ctx)  # before the first job; an error stops the start
        if self.settings.metrics_port:
            await self._serve_metrics(self.settings.metrics_host, self.settings.metrics_port)
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
        self._thread = HeartbeatThread(self, self.settings)
        self._thread.start()
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "consume": self._consume, "reaper": self._reaper, "control": self._control_listener,
            "ticker": self._loop_ticker,
        }  # fmt: skip
        if self.settings.celery_queues:
            celery = CeleryConsumer(self.broker, self.settings, lambda: self.max_jobs - len(self.running))
            loops["celery"] = functools.partial(celery.consume, lambda: self.stopping)
            loops["celery-restore"] = functools.partial(celery.restorer, lambda: self.stopping)
        if self.beat_enabled and beat_entries:
            loops["beat"] = functools.partial(Beat(self.id).run, lambda: self.stopping)
        self._background = [
            asyncio.create_task(supervised(name, body, self.health, lambda: self.stopping), name=name)
            for name, body in loops.items()
        ]
        # What is loaded by now lives as long as the process: move it out of the collector's sight, so
        # the full collections that per-job garbage triggers scan only young objects (~15% of a
        # no-op job's CPU went to gc before).
        gc.freeze()
        if signals.worker_ready.receivers:
            await signals.worker_ready.send(sender=self)

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

    async def _serve_metrics(self, host: str, port: int) -> None:
        assert self.broker is not None
        # Imported here: prometheus_client is the optional `metrics` extra, needed only with a metrics port.
        from tasks_engine.ops.metrics import WorkerMetrics, serve_worker_probes

        self.metrics = WorkerMetrics(lambda: len(self.running), lambda: self.health.healthy)

        def problem() -> str | None:
            return "stopping" if self.stopping else None if self.health.healthy else str(self.health.states)

        self._metrics_server = await serve_worker_probes(host, port, self.metrics, self.broker.redis.ping, problem)

    async def _check_eviction(self) -> None:
        """A Redis that may evict keys loses jobs silently: refuse it unless the settings allow it."""
        assert self.broker is not None
        policy = await self.broker.eviction_policy()
        if policy is None:
            log.warning("cannot read Redis's maxmemory-policy (CONFIG not allowed); make sure it is noeviction")
        elif policy != "noeviction":
            if not self.settings.allow_eviction:
                raise EngineConfigurationError(
                    f"Redis at {redacted_url()} has maxmemory-policy={policy}: it may evict queued jobs and results "
                    "without a trace. Set it to noeviction, or TE_ALLOW_EVICTION=true to run anyway."
                )
            log.warning("Redis may evict keys (allowed by allow_eviction): jobs can be lost", policy=policy)

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
        await self._leave_idle()
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
        if self._thread is not None:
            self._thread.stopping.set()
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.broker is not None:
            try:
                await self.broker.forget_worker(self.id)
            except REDIS_UNAVAILABLE:
                pass
        if signals.worker_shutdown.receivers:
            await signals.worker_shutdown.send(sender=self)
        if self.on_shutdown is not None:
            try:
                await _call_hook(self.on_shutdown, self.ctx)  # after the last job drained
            except Exception:  # logged: the worker still stops cleanly
                log.exception("on_shutdown hook failed")
        log.info("worker stopped", worker=self.id, processed=self.processed)
        self._stopped.set()

    async def _leave_idle(self) -> None:
        """No job may be handed to a stopping worker; those handed already go back to their queue."""
        if self.broker is None:
            return
        try:
            handed = await self.broker.leave_idle(self.id)
        except REDIS_UNAVAILABLE:
            return  # their leases expire and the reaper puts them back
        if handed:
            await self._requeue(handed)

    async def _requeue(self, ids: list[str]) -> None:
        assert self.broker is not None
        try:
            log.warning("jobs put back in their queues", ids=await self.broker.requeue(ids, self.id))
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
        settled = self.deliveries.duplicate if self.deliveries is not None else None
        while not self.stopping:
            free = self.max_jobs - len(self.running)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                jobs, next_due = await broker.claim(min(free, 200), lease_ms, self.id, limits, self.queues, settled)
                backoff.reset()
            except REDIS_UNAVAILABLE as exc:
                delay = backoff.next()
                log.error("redis unreachable; backing off", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            for tid, raw, revoked, delivered in jobs:
                self._start_job(tid, raw, revoked, delivered)
            if jobs or self.stopping:
                continue
            # Redis times a blocking call out only on its cron tick (every 100 ms at the default hz=10)
            # unless other traffic wakes it: far too coarse for rate-limited and deferred jobs. So the due
            # time is kept by a local timer, while one BLPOP stays pending across rounds and still wakes
            # us the moment a job is enqueued.
            timeout = 1.0
            if next_due is not None:  # ms from now, on Redis's clock
                timeout = min(timeout, next_due / 1000)
            if self._idle_wait is None:
                self._idle_wait = asyncio.ensure_future(broker.wait_for_work(self.queues, self.id))
                # A handed job starts from the wake-up's own callback, a loop turn before this loop resumes.
                self._idle_wait.add_done_callback(functools.partial(self._on_wake, lease_ms))
            done, _ = await asyncio.wait({self._idle_wait}, timeout=timeout)
            if not done:
                continue
            finished, self._idle_wait = self._idle_wait, None
            if finished.cancelled():
                continue  # stop() cancelled it; the loop condition ends the round
            error = finished.exception()
            if error is None and self._handed_started:
                self._handed_started = False
                await asyncio.sleep(0)  # let the handed job start before this loop's next claim call
            elif isinstance(error, REDIS_UNAVAILABLE):
                log.error("redis unreachable while idle", error=str(error))
                await asyncio.sleep(backoff.next())
            elif error is not None:
                raise error

    def _start_job(self, tid: str, raw: bytes, revoked: bool, delivered: int) -> None:
        run = LimitedRun()
        assert self.deliveries is not None
        job = asyncio.create_task(self.deliveries.process(tid, raw, revoked, delivered, run))
        self.running[tid] = (job, run)
        job.add_done_callback(functools.partial(self._forget_job, tid))

    def _on_wake(self, lease_ms: int, finished: asyncio.Future[Any]) -> None:
        """Done callback of the idle wait: start a job handed to this worker (``_handed_started``)."""
        if not finished.cancelled() and finished.exception() is None:
            self._handed_started = self._take_handoff(finished.result(), lease_ms)

    def _take_handoff(self, reply: Any, lease_ms: int) -> bool:
        """Start a job an enqueue handed to this idle worker (already leased to it), unless it arrives
        after its lease ran out (the worker was paused): then the reaper gives it to someone else."""
        assert self.broker is not None
        try:
            handed = self.broker.handed_off(reply, self.id)
        except ValueError:
            log.error("unreadable hand-off entry; its lease will expire and another worker takes it")
            return False
        if handed is None:
            return False
        tid, raw, delivered, at = handed
        if self.broker.redis_now_ms() - at > lease_ms:
            log.warning("hand-off arrived after its lease; left to the reaper", task_id=tid)
            return False
        self._start_job(tid, raw, False, delivered)
        return True

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
                back = await self.broker.reap_expired(self.deliveries.duplicate if self.deliveries else None)
                if back:
                    log.warning("requeued jobs of a lost worker", ids=back)
            except REDIS_UNAVAILABLE:
                healthy_since = time.monotonic() + 1.0

    async def _control_listener(self) -> None:
        """Broadcast commands: ``terminate`` cancels a running job here if we have it."""
        assert self.broker is not None
        while True:
            try:
                async for data in self.broker.control_messages():
                    self._on_command(data)
            except REDIS_UNAVAILABLE:
                await asyncio.sleep(1.0)

    def terminate_soon(self, task_ids: list[str]) -> None:
        """From the heartbeat thread: stop these running jobs on the worker's own loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._terminate, task_ids)

    def _terminate(self, task_ids: list[Any]) -> None:
        for task_id in task_ids:
            entry = self.running.get(task_id) if isinstance(task_id, str) else None
            if entry is not None and not entry[1].terminated:
                log.warning("terminating running job (revoked)", task_id=task_id)
                entry[1].terminate()

    def _on_command(self, data: bytes) -> None:
        try:
            command = loads(data)
            ids = command.get("ids", []) if isinstance(command, dict) and command.get("action") == "terminate" else []
        except ValueError:
            ids = None
        if not isinstance(ids, list):
            log.warning("ignored a control message that is not one of ours", message=data[:200])
            return
        self._terminate(ids)

    async def _loop_ticker(self) -> None:
        while True:
            self.loop_tick = time.monotonic()
            await asyncio.sleep(0.1)


async def _call_hook(hook: Hook, ctx: dict[str, Any]) -> None:
    result = hook(ctx)
    if inspect.isawaitable(result):
        await result
