"""Operations on a running cluster: revoke, rate limits at runtime, queue and worker views."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions
import structlog

from tasks_engine.broker import get_broker
from tasks_engine.config import get_settings
from tasks_engine.exceptions import EngineConnectionError
from tasks_engine.limits import parse_rate_limit
from tasks_engine.messages import dumps, loads
from tasks_engine.results import now_iso

T = TypeVar("T")
log = structlog.get_logger("tasks_engine.control")
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def redacted_url() -> str:
    """The Redis URL without its password (in the userinfo or a ``?password=`` query), fit for logs."""
    url = get_settings().redis_url.get_secret_value()
    scheme, sep, rest = url.partition("://")
    rest, qmark, query = rest.partition("?")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user + ':' if user else ''}***@{host}"
    if query:
        query = "&".join("password=***" if part.lower().startswith("password=") else part for part in query.split("&"))
    return f"{scheme}{sep}{rest}{qmark}{query}"


async def with_redis_retry(fn: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``fn``; while Redis is unreachable retry up to ``enqueue_wait_seconds``, then raise clearly."""
    deadline = time.monotonic() + get_settings().enqueue_wait_seconds
    delay = 0.05
    while True:
        try:
            return await fn()
        except REDIS_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise EngineConnectionError(f"cannot {what}: Redis at {redacted_url()} is unreachable ({exc})") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def revoke(task_ids: list[str], terminate: bool = False, reason: str = "revoked") -> int:
    """Revoke ids: waiting jobs are removed now (REVOKED); future ones never start; running ones
    are cancelled on whichever worker runs them when ``terminate`` is set. Returns how many were waiting."""
    broker = get_broker()
    ttl = max(get_settings().result_expires, 3600)
    removed = 0
    for start in range(0, len(task_ids), 500):
        async with broker.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids[start : start + 500]:
                await broker.revoke_script(args=[broker.prefix, task_id, ttl, now_iso(), reason], client=pipe)
            removed += sum(int(n) for n in await pipe.execute())
    if terminate and task_ids:
        await broker.redis.publish(broker.control_channel, dumps({"action": "terminate", "ids": task_ids}))
    log.info("revoked", ids=len(task_ids), waiting=removed, terminate=terminate)
    return removed


async def queued_messages(queues: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(queue or 'delayed', task id, task name) of every waiting job."""
    broker = get_broker()
    out: list[tuple[str, str, str]] = []
    names = queues if queues is not None else await known_queues()
    sources = [(q, broker.key("q", q)) for q in names] + [("delayed", broker.key("delayed"))]
    for label, key in sources:
        ids = [i.decode() for i in await broker.redis.zrange(key, 0, -1)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            raws = await broker.redis.mget([broker.key("msg", i) for i in chunk])
            for task_id, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    continue
                text = raw.decode(errors="replace")
                marker = text.find('"task":"')
                name = text[marker + 8 : text.find('"', marker + 8)] if marker >= 0 else "?"
                out.append((label, task_id, name))
    return out


async def revoke_matching(pattern: str, queues: list[str] | None = None) -> int:
    """Drop every queued or deferred job whose task name matches a glob, e.g. ``report.*``."""
    ids = [tid for _, tid, name in await queued_messages(queues) if fnmatch.fnmatchcase(name, pattern)]
    return await revoke(ids, reason=f"revoked by pattern {pattern!r}") if ids else 0


# Jobs parked under the old limit go back to their queue (at their priority's place) to be checked
# against the new one; the old reservations are dropped, so a change takes effect at once both ways.
_REPLAN_LUA = """
-- ARGV: prefix, task, first ('1': also install the new limit and reset the arrival time), value ('' = none)
local p, task = ARGV[1], ARGV[2]
if ARGV[3] == '1' then
  if ARGV[4] == '' then
    redis.call('hdel', p .. ':rate-limits', task)
  else
    redis.call('hset', p .. ':rate-limits', task, ARGV[4])
  end
  redis.call('del', p .. ':rl:' .. task)
end
local ids = redis.call('spop', p .. ':rl-pass:' .. task, 1000)
local woken = {}
for _, id in ipairs(ids) do
  local info = redis.call('hget', p .. ':dq', id)
  if info then
    local sep = string.find(info, '|', 1, true)
    local q = string.sub(info, 1, sep - 1)
    redis.call('zrem', p .. ':delayed', id)
    redis.call('hdel', p .. ':dq', id)
    redis.call('zadd', p .. ':q:' .. q, string.sub(info, sep + 1), id)
    if not woken[q] then
      woken[q] = true
      redis.call('lpush', p .. ':wake:' .. q, '1')
    end
  end
end
return #ids
"""


async def set_rate_limit(task_name: str, rate: str | float | None, burst: int = 1) -> int:
    """Change a task's rate limit for the whole cluster, at once (Celery's ``control rate_limit``).

    ``rate`` uses the task option's grammar (``"0"`` = unlimited); None restores the declared limit.
    Running workers apply it on their next claim; jobs already parked under the old limit are put
    back and re-planned. Returns how many parked jobs were released.
    """
    broker = get_broker()
    value = ""
    if rate is not None:
        try:
            parsed = parse_rate_limit(rate, burst)
        except ValueError as exc:
            raise ValueError(f"task {task_name!r}: {exc}") from None
        value = dumps(parsed.lua_value() if parsed else [0, 0]).decode()
    script = broker.redis.register_script(_REPLAN_LUA)
    released, first = 0, "1"
    while True:
        batch = int(await script(args=[broker.prefix, task_name, first, value]))
        released += batch
        first = "0"
        if batch < 1000:
            break
    log.info("rate limit changed", task=task_name, rate=rate, burst=burst, released=released)
    return released


async def known_queues() -> list[str]:
    broker = get_broker()
    prefix = broker.key("q", "")
    names = {k.decode()[len(prefix) :] async for k in broker.redis.scan_iter(match=prefix + "*", count=500)}
    for worker in await workers():
        names.update(worker.get("queues", []))
    return sorted(names | {get_settings().default_queue})


async def workers() -> list[dict[str, Any]]:
    """Live workers (heartbeat within the lease): id, queues, running jobs, pid, host."""
    broker = get_broker()
    out = []
    async for key in broker.redis.scan_iter(match=broker.key("worker", "*"), count=200):
        raw = await broker.redis.get(key)
        if raw is not None:
            out.append(loads(raw))
    return sorted(out, key=lambda w: str(w.get("id")))


async def queue_stats() -> list[dict[str, Any]]:
    """Per queue: ready jobs, consumers; plus deferred and running totals."""
    broker = get_broker()
    live = await workers()
    stats = []
    for queue in await known_queues():
        consumers = [w["id"] for w in live if queue in w.get("queues", [])]
        ready = await broker.redis.zcard(broker.key("q", queue))
        stats.append({"queue": queue, "ready": ready, "consumers": consumers})
    return stats


async def purge(queue: str) -> int:
    """Delete every ready job of a queue (not deferred or running ones)."""
    broker = get_broker()
    key = broker.key("q", queue)
    ids = [i.decode() for i in await broker.redis.zrange(key, 0, -1)]
    if ids:
        await broker.redis.delete(key, *[broker.key("msg", i) for i in ids])
    return len(ids)
