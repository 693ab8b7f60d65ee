"""One Redis client per event loop and the engine's typed operations on it (the Lua lives in ``lua/``).

Every write path of the engine goes through here: enqueue, claim, requeue, revoke, chord parts,
beat ticks, completions (group-committed, one MULTI per batch), dead letters, heartbeats and the
sweeps the application's housekeeping runs. Read views for results and operations are in
:mod:`tasks_engine.store.views`.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import redis as sync_redis
import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError

from tasks_engine.core.clock import Backoff, now_iso, now_ms
from tasks_engine.core.codec import dumps
from tasks_engine.core.config import EngineSettings, get_settings, redacted_url
from tasks_engine.exceptions import (
    REDIS_UNAVAILABLE,
    EngineConnectionError,
    NotReplicatedError,
)
from tasks_engine.store.batching import EnqueueBatcher, ReadBatcher
from tasks_engine.store.connection import PubSubSource, async_client, awaited, sync_client
from tasks_engine.store.housekeeping import Housekeeping
from tasks_engine.store.keys import Keys
from tasks_engine.store.scripts import SCRIPTS, lua
from tasks_engine.store.views import Views
from tasks_engine.store.waiter import ResultWaiter, messages
from tasks_engine.store.writes import ChordPart, Completion, Enqueue, Writes

log = structlog.get_logger("tasks_engine.store")

T = TypeVar("T")
_EXC_FIELDS = ("exc_type", "exc_module", "exc_message", "exc_args", "traceback")
CHORD_MIN_TTL = 7 * 86_400


class Duplicate(NamedTuple):
    """A delivery the store settled without running it: the job's record was already final (``state``;
    its message is deleted), or it was running under a lease (``state`` RUNNING; the running delivery
    keeps the message). Either way this copy is off the books and the record is untouched."""

    task_id: str
    state: str
    task: str


OnDuplicate = Callable[[Duplicate], None]


def _duplicates(entries: Sequence[Any], on_duplicate: OnDuplicate | None) -> None:
    for entry in entries:
        dup = Duplicate(*(part.decode(errors="replace") for part in entry))
        if on_duplicate is not None:
            on_duplicate(dup)
        else:
            log.warning("duplicate delivery settled unrun", task_id=dup.task_id, task_name=dup.task, state=dup.state)


class Broker(Views, Housekeeping):
    """One Redis client and the engine's scripts, bound to one event loop."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = Keys(self.prefix)
        self.cluster = settings.redis_target.mode == "cluster"
        self.redis: Redis = cast(
            "Redis",  # or a RedisCluster: the same commands, routed by key (see connection.py)
            async_client(
                settings,
                max_connections=200,
                socket_connect_timeout=5,
                socket_timeout=settings.redis_socket_timeout,  # a hung Redis is an outage, not a hang
                health_check_interval=30,
            ),
        )
        self.pubsub = PubSubSource(self.redis, settings)
        self.scripts: dict[str, AsyncScript] = {name: self.redis.register_script(lua(name)) for name in SCRIPTS}
        self.static_keys = self.keys.static
        self.base = self.keys.base
        self.waiter = ResultWaiter(self.pubsub, self.keys.done_channel)
        self.batcher = EnqueueBatcher(self._enqueue_now)
        self.record_reads = ReadBatcher(self.fetch_records)
        self.redis_clock = (0, 0.0)  # (Redis ms, monotonic s) at the last claim: to age hand-offs

    def redis_now_ms(self) -> int:
        """Redis's clock now, estimated from the last claim (0 before the first)."""
        at, seen = self.redis_clock
        return at + int((time.monotonic() - seen) * 1000) if at else 0

    def key(self, *parts: str) -> str:
        """A raw key under this prefix (tests and scripts that inspect Redis; the engine uses ``keys``)."""
        return ":".join((self.base, *parts))

    def run(self, name: str, args: Sequence[Any], client: Any = None, extra_keys: Sequence[str] = ()) -> Any:
        """Call one of the engine's scripts with the app's declared keys (see ``lua/keys.lua``)."""
        keys = [*self.static_keys, *extra_keys] if extra_keys else self.static_keys
        return self.scripts[name](keys=keys, args=args, client=client)

    def result_key(self, task_id: str) -> str:
        return self.keys.result(task_id)

    async def close(self) -> None:
        await self.waiter.close()
        await self.pubsub.close()
        await self.redis.aclose()

    async def retrying(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``fn``; while Redis is unreachable retry up to ``enqueue_wait_seconds``, then raise clearly."""
        deadline = time.monotonic() + self.settings.enqueue_wait_seconds
        backoff = Backoff(first=0.05, maximum=1.0)
        while True:
            try:
                return await fn()
            except REDIS_UNAVAILABLE as exc:
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise EngineConnectionError(
                        f"cannot {what}: Redis at {redacted_url(self.settings)} is unreachable ({exc})"
                    ) from exc
                await asyncio.sleep(delay)

    # ------------------------------------------------------------ enqueue and plans
    def _enqueue_args(self, items: Sequence[Enqueue]) -> list[Any]:
        return [self.base, now_ms(), *(item.packed() for item in items)]

    async def enqueue(self, items: Sequence[Enqueue]) -> int:
        """Place messages (with the concurrent callers' ones, one atomic script call); returns how many
        were new."""
        if not items:
            return 0
        return await self.batcher.submit(items)

    async def _enqueue_now(self, items: Sequence[Enqueue]) -> list[int]:
        if self.settings.replica_acks:
            flags = await self.replicated(lambda conn: self.run("enqueue", args=self._enqueue_args(items), client=conn))
        else:
            flags = await self.run("enqueue", args=self._enqueue_args(items))
        return [int(f) for f in flags]

    def plan_args(self, payload: bytes) -> list[Any]:
        return [self.base, self.settings.result_expires, now_ms(), now_iso(), payload]

    async def write(self, writes: Writes) -> None:
        """Write a plan atomically (one script), retrying within ``enqueue_wait_seconds`` while Redis is away."""

        async def attempt() -> None:
            if not writes.chords and not writes.groups:
                # Plain messages: the enqueue script takes them without the plan's JSON round.
                await self.enqueue(writes.enqueues)
            elif self.settings.replica_acks:
                await self.replicated(lambda conn: self.run("plan", args=self.plan_args(writes.payload()), client=conn))
            else:
                await self.run("plan", args=self.plan_args(writes.payload()))

        if not writes.chords and not writes.groups:
            try:  # the common case first, without the retry loop's set-up: one shared enqueue call
                await self.batcher.submit(writes.enqueues)
                return
            except REDIS_UNAVAILABLE:
                pass  # retried below: placing the same ids again replaces them, it does not add jobs
        await self.retrying(attempt, "enqueue")

    async def replicated(self, write: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``write`` on one connection, then ``WAIT`` until ``replica_acks`` replicas have it (WAIT
        counts the writes of its own connection only). Raises :class:`NotReplicatedError` when fewer
        confirm in ``replica_ack_timeout``: the write is on the primary but may not survive a failover."""
        wanted = self.settings.replica_acks
        async with self.redis.client() as conn:
            result = await write(conn)
            wait_ms = int(self.settings.replica_ack_timeout * 1000)
            acked = int(await conn.execute_command("WAIT", wanted, wait_ms))  # type: ignore[no-untyped-call]
        if acked < wanted:
            raise NotReplicatedError(
                f"only {acked} of {wanted} replicas confirmed the write within {self.settings.replica_ack_timeout}s"
            )
        return result

    # ------------------------------------------------------------ consuming
    async def claim(
        self,
        count: int,
        lease_ms: int,
        worker_id: str,
        rate_limits_json: str,
        queues: Sequence[str],
        on_duplicate: OnDuplicate | None = None,
    ) -> tuple[list[tuple[str, bytes, bool, int]], int | None]:
        """Take up to ``count`` jobs (best priority first across ``queues``): ``(id, raw, revoked, delivered)``
        each, and how many ms until the next deferred job is due (None: nothing deferred). Messages of jobs
        already finished or running are settled in the same call, unrun, and reported to ``on_duplicate``."""
        jobs, next_due, redis_now, dups = await self.run(
            "claim",
            args=[
                self.base,
                count,
                lease_ms,
                worker_id,
                rate_limits_json,
                now_iso(),
                self.settings.result_expires,
                *queues,
            ],
        )
        self.redis_clock = (int(redis_now), time.monotonic())
        _duplicates(dups, on_duplicate)
        out = []
        for tid, raw, revoked, delivered in jobs:
            try:
                out.append((tid.decode(), raw, bool(revoked), int(delivered)))
            except UnicodeDecodeError:  # no message of ours has such an id: take it off the books
                await self.quarantine(tid, "job id is not valid UTF-8")
        return out, max(0, int(next_due) - int(redis_now)) if next_due else None

    async def quarantine(self, task_id: str | bytes, reason: str) -> None:
        """Take a job off the books for good: a dead letter and a FAILURE record with ``reason``."""
        log.error("job quarantined", task_id=repr(task_id) if isinstance(task_id, bytes) else task_id, reason=reason)
        await self.run("quarantine", args=[self.base, task_id, reason, now_iso(), self.settings.result_expires])

    def wait_for_work(self, queues: Sequence[str], worker_id: str, timeout: int = 1) -> Awaitable[Any]:
        """Block until a job is handed to this worker (``(handoff key, payload)``) or one is enqueued on
        one of ``queues`` (``(wake key, _)``), or ``timeout`` seconds pass (None)."""
        keys = [self.keys.handoff(worker_id), *(self.keys.wake(q) for q in queues)]
        return awaited(self.redis.blpop(keys, timeout=timeout))

    def handed_off(self, reply: Any, worker_id: str) -> tuple[str, bytes, int, int] | None:
        """A job handed to this worker by an enqueue (see ``te_handoff`` in ``lua/lib.lua``):
        ``(id, message, delivered, handed at in Redis ms)``; None for a plain wake-up."""
        if not reply or reply[0].decode() != self.keys.handoff(worker_id):
            return None
        task_id, delivered, at, raw = reply[1].split(b"\n", 3)
        return task_id.decode(errors="surrogateescape"), raw, int(delivered), int(at)

    async def leave_idle(self, worker_id: str) -> list[str]:
        """End this worker's idle registration; returns the jobs handed to it that it never took."""
        return [i.decode() for i in await self.run("idle_leave", args=[self.base, worker_id])]

    async def requeue(self, ids: Sequence[str], worker_id: str, on_duplicate: OnDuplicate | None = None) -> list[str]:
        """Put this worker's running jobs back in their queues at their place, without counting a retry
        (those whose record is final meanwhile are settled instead: ``on_duplicate``)."""
        back, dups = await self.run(
            "requeue", args=[self.base, worker_id, "ids", now_iso(), self.settings.result_expires, *ids]
        )
        _duplicates(dups, on_duplicate)
        return [b.decode() for b in back]

    async def reap_expired(self, on_duplicate: OnDuplicate | None = None) -> list[str]:
        """Requeue jobs whose lease ran out on Redis's clock (their worker died or was paused); a job whose
        record is final after all is settled unrun instead (``on_duplicate``)."""
        back, dups = await self.run("requeue", args=[self.base, "", "expired", now_iso(), self.settings.result_expires])
        _duplicates(dups, on_duplicate)
        return [b.decode() for b in back]

    async def idempotent_result(self, task_id: str) -> bytes | None:
        return cast("bytes | None", await self.redis.get(self.keys.idempotent(task_id)))

    def control_messages(self) -> AsyncIterator[bytes]:
        """Broadcast commands to workers (JSON), as they are published."""
        return messages(self.pubsub(), self.keys.control_channel)

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.delete(self.keys.worker(worker_id))

    # ------------------------------------------------------------ completions
    async def commit(self, batch: Sequence[Completion]) -> list[str | BaseException]:
        """Write ``batch`` in one round trip and one ``complete.lua`` call (each completion written on its
        own and fenced). Per entry: ``'ok'``, ``'stale'`` (not the lease holder: nothing written),
        ``'final'`` (already finished by another delivery: only acknowledged) or the error for that entry.

        With ``replica_acks``, returns once that many replicas have the batch (a shortfall is logged: the
        jobs stay acknowledged on the primary, and a failover before they replicate runs them again).
        Raises what Redis raised when the whole round failed (the caller retries or splits)."""
        script = self.scripts["complete"]
        head: list[Any] = [self.base, self.settings.result_expires, now_ms(), now_iso()]
        out: list[str | BaseException | None] = [None] * len(batch)
        payloads: list[bytes | None] = [None] * len(batch)
        for index, completion in enumerate(batch):
            try:
                payloads[index] = completion.payload()
            except Exception as exc:  # noqa: BLE001 - one job's bad data must not sink the batch
                out[index] = exc
        todo = [i for i, payload in enumerate(payloads) if payload is not None]
        if self.cluster:
            # A Cluster pipeline refuses scripts: the calls go out together instead (one round trip).
            results = await asyncio.gather(
                *(self.run("complete", args=[*head, payloads[i]]) for i in todo), return_exceptions=True
            )
            for i, reply in zip(todo, results, strict=True):
                out[i] = reply if isinstance(reply, BaseException) else _completion_status(reply[0])
            todo = []
        keys = self.static_keys
        for _ in range(2 if todo else 0):  # a second round only after Redis lost its script cache
            async with self.redis.pipeline(transaction=False) as pipe:  # one command: no MULTI needed
                pipe.evalsha(script.sha, len(keys), *keys, *head, *(payloads[i] for i in todo))  # type: ignore[arg-type]
                if self.settings.replica_acks:
                    pipe.execute_command(
                        "WAIT", self.settings.replica_acks, int(self.settings.replica_ack_timeout * 1000)
                    )
                replies = await pipe.execute(raise_on_error=False)
            if self.settings.replica_acks:
                acked = replies[-1]
                if isinstance(acked, int) and acked < self.settings.replica_acks:
                    log.warning("completions not confirmed by replicas", jobs=len(todo), replicas=acked,
                                wanted=self.settings.replica_acks)  # fmt: skip
            statuses = replies[0]
            if isinstance(statuses, NoScriptError):
                await self.redis.script_load(script.script)
                continue
            if not isinstance(statuses, list):  # the whole call failed (e.g. OOM): each entry met that error
                statuses = [statuses] * len(todo)
            for i, status in zip(todo, statuses, strict=True):
                out[i] = status if isinstance(status, BaseException) else _completion_status(status)
            break
        return [r if r is not None else NoScriptError("script not loaded") for r in out]

    async def write_failed_later(
        self, failed: list[tuple[str, dict[str, Any]]], writes: Writes, part: ChordPart | None
    ) -> None:
        """After a chord header failed: fail the steps after its body, plan its errbacks and report to an
        enclosing chord, in one script."""
        payload = writes.payload(failed, [part] if part is not None else [])
        await self.run("plan", args=self.plan_args(payload))

    # ------------------------------------------------------------ control
    async def revoke(self, task_ids: Sequence[str], reason: str, terminate: bool) -> int:
        """Revoke ids (see ``lua/revoke.lua``); ``terminate`` also tells workers to stop running ones.
        Returns how many were still waiting (and so will never run)."""
        ttl = max(self.settings.result_expires, 3600)
        removed = 0
        for start in range(0, len(task_ids), 500):
            chunk = task_ids[start : start + 500]
            flag = "1" if terminate else "0"
            if self.cluster:  # a Cluster pipeline refuses scripts: the calls go out together instead
                calls = [self.run("revoke", args=[self.base, i, ttl, now_iso(), reason, flag]) for i in chunk]
                removed += sum(int(n) for n in await asyncio.gather(*calls))
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in chunk:
                    await self.run("revoke", args=[self.base, task_id, ttl, now_iso(), reason, flag], client=pipe)
                removed += sum(int(n) for n in await pipe.execute())
        if terminate and task_ids:
            await self.pubsub.publish(self.keys.control_channel, dumps({"action": "terminate", "ids": list(task_ids)}))
        return removed

    async def replan_rate_limit(self, task_name: str, value: str) -> int:
        """Install a runtime rate limit (``''`` = none) and put parked jobs back; returns how many."""
        released, first = 0, "1"
        while True:
            batch = int(await self.run("replan_rate_limit", args=[self.base, task_name, first, value]))
            released += batch
            first = "0"
            if batch < 1000:
                return released

    async def requeue_dead(self, items: Sequence[tuple[bytes, Enqueue]]) -> int:
        """Take dead letters off the list and enqueue their messages again, atomically per batch;
        ``items`` are (the stored entry, the message to enqueue). Returns how many were requeued."""
        requeued = 0
        for start in range(0, len(items), 200):
            argv: list[Any] = [self.base, now_ms()]
            for entry, item in items[start : start + 200]:
                argv += [entry, item.id, item.raw, item.queue, item.priority]
            requeued += int(await self.run("dead_requeue", args=argv))
        return requeued

    async def purge(self, queue: str) -> int:
        """Delete every ready job of a queue with its message, atomically."""
        return int(await self.run("purge", args=[self.base, queue]))

    async def eviction_policy(self) -> str | None:
        """Redis's ``maxmemory-policy``, or None where CONFIG is not allowed (managed services)."""
        try:
            reply = await self.redis.config_get("maxmemory-policy")
        except ResponseError:
            return None
        value = reply.get(b"maxmemory-policy", reply.get("maxmemory-policy"))
        return value.decode() if isinstance(value, bytes) else value

    # ------------------------------------------------------------ beat
    async def beat_tick(self, entry: str, tick_ms: int, ttl: int, item: Enqueue) -> bool:
        """Claim one periodic tick and enqueue its job, atomically; False if another worker had it."""
        won = await self.run(
            "beat_tick",
            extra_keys=[self.keys.beat_claim(entry, tick_ms), self.keys.beat_last(entry)],
            args=[self.base, ttl, tick_ms, item.id, item.raw, item.queue, item.priority, now_ms()],
        )
        return bool(won)

    async def beat_last(self, entry: str) -> int | None:
        raw = await self.redis.get(self.keys.beat_last(entry))
        try:
            return None if raw is None else int(raw)
        except ValueError:  # not ours: the entry starts afresh
            return None

    async def set_beat_last(self, entry: str, tick_ms: int, only_if_missing: bool = False) -> None:
        await self.redis.set(self.keys.beat_last(entry), tick_ms, nx=only_if_missing)


class SyncHeartbeat:
    """The heartbeat thread's own (blocking) client: lease renewals and the worker's advertisement."""

    def __init__(self, settings: EngineSettings) -> None:
        self.client = cast(
            "sync_redis.Redis", sync_client(settings, socket_timeout=min(5.0, settings.redis_socket_timeout))
        )
        self.keys = Keys(settings.key_prefix)
        self.renew = self.client.register_script(lua("renew"))

    def beat(self, worker_id: str, running: Sequence[str], lease_ms: int, info: dict[str, Any], ttl: int,
             ) -> list[str]:  # fmt: skip
        """Renew the leases this worker still holds (on Redis's clock) and advertise the worker; returns
        the running ids revoked with ``terminate`` meanwhile."""
        stop: list[bytes] = (
            self.renew(keys=self.keys.static, args=[self.keys.base, worker_id, lease_ms, *running]) if running else []
        )
        self.client.set(self.keys.worker(worker_id), dumps(info), ex=ttl)
        return [i.decode() for i in stop]

    def close(self) -> None:
        self.client.close()


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broker] = weakref.WeakKeyDictionary()


def get_broker() -> Broker:
    """The broker of the running event loop (redis-py's asyncio clients cannot cross loops).

    A new one is made when :func:`tasks_engine.core.config.configure` installed other settings."""
    loop = asyncio.get_running_loop()
    broker = _brokers.get(loop)
    if broker is None or broker.settings is not get_settings():
        broker = Broker(get_settings())
        _brokers[loop] = broker
    return broker


def loop_broker(loop: asyncio.AbstractEventLoop) -> Broker | None:
    """The broker made for ``loop``, if any (to close it before the loop closes)."""
    return _brokers.get(loop)


def _completion_status(status: bytes) -> str | BaseException:
    """One entry of ``complete.lua``'s reply: its status, or the error that completion met."""
    text = status.decode(errors="replace")
    return ResponseError(text[len("error:") :]) if text.startswith("error:") else text
