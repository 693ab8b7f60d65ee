"""Redis layout and the atomic operations on it (Lua), one place for every key the engine uses.

Layout under ``<prefix>`` (``te`` by default, so two apps can share one Redis):

``q:<queue>``     zset of ready job ids, score = priority * 1e12 + enqueue sequence, so the lowest
                  score is the best priority and, within it, the oldest job (FIFO). Readiness is NOT
                  in this score — unlike arq, where one score means both "runnable at" and "order".
``delayed``       zset of deferred job ids, score = runnable-at (ms); ``dq`` hash id -> "queue|score"
                  remembers where the job goes when due, so it keeps its priority's place.
``msg:<id>``      the JSON message; no TTL, so a countdown of days is safe.
``active``        zset id -> lease deadline (ms); ``inflight`` hash id -> "queue|score|worker".
                  Workers renew leases every ``heartbeat_seconds``; any worker requeues expired ones.
``res:<id>``      hash: the result record (state, result, traceback, retries, …).
``wake:<queue>``  list pushed on enqueue; idle workers block on it (BLPOP) instead of polling.
``done``          pub/sub channel: a finished job's id, so ``get()`` wakes at once.
``chord:<id>``    chord state; the body is dispatched by Lua exactly once.
``rl:<task>``     GCRA arrival time of a rate-limited task (one limit for the whole cluster);
                  ``rl-pass:<task>`` set of jobs parked in ``delayed`` until their reserved slot;
                  ``rl-log:<task>`` zset of its starts in the last second (caps late catch-up);
                  ``rate-limits`` hash task -> limit set at runtime (wins over the declared one).
``revoked:<id>``  revoke mark, expires with the result record (no id stays poisoned).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from tasks_engine.config import EngineSettings, get_settings

PRIORITY_WEIGHT = 1_000_000_000_000  # 1e12 sequence numbers per priority level
T = TypeVar("T")
CHORD_PLACEHOLDER = '"__te_chord_results__"'

# Shared Lua helpers. Numbers are formatted with %d: Redis converts Lua numbers with %.14g.
_LUA_ENQUEUE_FN = """
local function te_enqueue(p, id, msg, q, prio, eta, now, nx)
  local mkey = p .. ':msg:' .. id
  if nx == '1' then
    if redis.call('exists', mkey) == 1 then return 0 end
    local st = redis.call('hget', p .. ':res:' .. id, 'state')
    if st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then return 0 end
  end
  local seq = redis.call('incr', p .. ':seq')
  local score = string.format('%d', tonumber(prio) * 1000000000000 + seq)
  redis.call('set', mkey, msg)
  if tonumber(eta) > tonumber(now) then
    redis.call('zadd', p .. ':delayed', eta, id)
    redis.call('hset', p .. ':dq', id, q .. '|' .. score)
    redis.call('lpush', p .. ':wake:' .. q, '1')  -- an idle worker re-reads the next due time
    redis.call('ltrim', p .. ':wake:' .. q, 0, 999)
  else
    redis.call('zadd', p .. ':q:' .. q, score, id)
    redis.call('lpush', p .. ':wake:' .. q, '1')
    redis.call('ltrim', p .. ':wake:' .. q, 0, 999)
  end
  return 1
end
"""

ENQUEUE_LUA = (
    _LUA_ENQUEUE_FN
    + """
-- ARGV: prefix, now, then groups of (id, msg, queue, priority, eta_ms, nx)
local n = 0
for i = 3, #ARGV, 6 do
  n = n + te_enqueue(ARGV[1], ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[2], ARGV[i+5])
end
return n
"""
)

CLAIM_LUA = """
-- ARGV: prefix, now_ms, n, lease_deadline_ms, worker_id, rate_limits_json, queue...
-- Returns {{id, msg, revoked, delivered}, ...} and the next deferred due time (ms) or ''.
local p, now, n, lease, wid = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local limits = cjson.decode(ARGV[6])
local queues = {}
for i = 7, #ARGV do queues[#queues + 1] = ARGV[i] end
-- Due deferred jobs join their queue at the score they got when enqueued: their priority's place.
local due = redis.call('zrangebyscore', p .. ':delayed', '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('zrem', p .. ':delayed', id)
  local info = redis.call('hget', p .. ':dq', id)
  if info then
    local sep = string.find(info, '|', 1, true)
    redis.call('hdel', p .. ':dq', id)
    redis.call('zadd', p .. ':q:' .. string.sub(info, 1, sep - 1), string.sub(info, sep + 1), id)
  end
end
local function park(id, q, score, at)
  redis.call('zadd', p .. ':delayed', string.format('%d', at), id)
  redis.call('hset', p .. ':dq', id, q .. '|' .. score)
end
local function expires_ms(msg)
  if not string.find(msg, '"expires":%d') then return nil end  -- cheap filter: no number, no expiry
  local ok, m = pcall(cjson.decode, string.sub(msg, string.find(msg, '{', 1, true) or 1))
  if ok and type(m) == 'table' and type(m.expires) == 'number' then return m.expires * 1000 end
  return nil
end
-- Rate limits (per task name, one limit for every worker sharing this Redis), on Redis's own clock
-- (one clock for every host, and immune to a worker paused between reading its clock and calling us):
-- 1. GCRA with reservation: ``rl:<task>`` is the theoretical arrival time; each job reserves the next
--    slot, so a job over its limit is parked in ``delayed`` until its own slot (holding no worker slot,
--    counting no retry, nothing polling) and listed in ``rl-pass:<task>`` so its slot is not taken twice.
--    A job that would expire before its slot waits for its expiry instead, without taking a slot.
-- 2. Every start is also checked against ``rl-log:<task>``, the starts of the last second: at most
--    limit + burst of them, and (beyond the burst) half an interval apart. A worker that wakes late
--    (a busy host) would otherwise start several due slots at once; this way it catches up at twice
--    the rate at most, and no 1-second window exceeds the limit.
-- The runtime override hash ``rate-limits`` (control.set_rate_limit) wins over the limits the worker
-- declares in ARGV; a limit is {emission interval ms, burst tolerance ms}.
local clock = redis.call('time')
local rnow = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function rate_limited(id, q, score, task, rl, msg)
  local pass = p .. ':rl-pass:' .. task
  local reserved = redis.call('srem', pass, id) == 1
  local exp = expires_ms(msg)
  if exp and exp <= rnow then return false end  -- expired: the worker records it REVOKED, no slot used
  local at = nil
  if not reserved then
    local key = p .. ':rl:' .. task
    local tat = math.max(tonumber(redis.call('get', key) or '0'), rnow)
    local allow_at = tat - rl[2]
    if allow_at > rnow and exp and exp < allow_at then
      park(id, q, score, exp + 1)  -- %d truncates: +1 so it is due only once expired
      return true
    end
    local new_tat = tat + rl[1]
    redis.call('set', key, string.format('%d', new_tat), 'PX', string.format('%d', new_tat - rnow + rl[1] + 1000))
    if allow_at > rnow then at = allow_at end
  end
  if not at then
    local log = p .. ':rl-log:' .. task
    redis.call('zremrangebyscore', log, '-inf', '(' .. string.format('%d', rnow - 1000))
    local burst = math.floor(rl[2] / rl[1]) + 1
    local count = redis.call('zcard', log)
    if count >= math.floor(1000 / rl[1]) + burst then
      at = tonumber(redis.call('zrange', log, 0, 0, 'WITHSCORES')[2]) + 1001
    end
    if count >= burst then
      local spaced = tonumber(redis.call('zrange', log, -burst, -burst, 'WITHSCORES')[2]) + math.floor(rl[1] / 2)
      if spaced > rnow and (not at or spaced > at) then at = spaced end
    end
    if not at then
      redis.call('zadd', log, rnow, id)
      redis.call('pexpire', log, 2000)
      return false
    end
  end
  redis.call('sadd', pass, id)
  redis.call('pexpire', pass, string.format('%d', at - rnow + 86400000))
  park(id, q, score, at)
  return true
end
local out, taken, popped, capped = {}, 0, 0, false
while taken < n do
  if popped >= n * 4 + 500 then capped = true break end
  popped = popped + 1
  local bq, bid, bscore, bs = nil, nil, nil, nil
  for _, q in ipairs(queues) do
    local head = redis.call('zrange', p .. ':q:' .. q, 0, 0, 'WITHSCORES')
    if head[1] and (bscore == nil or tonumber(head[2]) < bscore) then
      bq, bid, bscore, bs = q, head[1], tonumber(head[2]), head[2]
    end
  end
  if not bid then break end
  redis.call('zrem', p .. ':q:' .. bq, bid)
  local msg = redis.call('get', p .. ':msg:' .. bid)
  if msg then
    local revoked = redis.call('exists', p .. ':revoked:' .. bid)
    local deferred = false
    local task = string.match(msg, '"task":"(.-)"')
    if revoked == 0 and task then
      local o = redis.call('hget', p .. ':rate-limits', task)
      local rl = nil
      if o then rl = cjson.decode(o) else rl = limits[task] end
      if rl and rl[1] > 0 then deferred = rate_limited(bid, bq, bs, task, rl, msg) end
    end
    if not deferred then
      redis.call('zadd', p .. ':active', lease, bid)
      redis.call('hset', p .. ':inflight', bid, bq .. '|' .. bs .. '|' .. wid)
      local rkey = p .. ':res:' .. bid
      local delivered = redis.call('hincrby', rkey, 'delivered', 1)
      if revoked == 0 then
        redis.call('hset', rkey, 'state', 'STARTED', 'worker', wid, 'date_started', string.format('%d', rnow))
      end
      out[#out + 1] = {bid, msg, revoked, delivered}
      taken = taken + 1
    end
  end
end
if capped then
  redis.call('lpush', p .. ':wake:' .. queues[1], '1')  -- parked a long run of jobs: claim again at once
elseif taken == 0 then
  for _, q in ipairs(queues) do redis.call('del', p .. ':wake:' .. q) end
end
local nxt = redis.call('zrange', p .. ':delayed', 0, 0, 'WITHSCORES')
return {out, nxt[2] or ''}
"""

REQUEUE_LUA = """
-- ARGV: prefix, now_ms, mode ('expired' = reap leases past now; 'ids' = the given ids), ids...
local p, now = ARGV[1], ARGV[2]
local ids = {}
if ARGV[3] == 'expired' then
  ids = redis.call('zrangebyscore', p .. ':active', '-inf', now, 'LIMIT', 0, 500)
else
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local back = {}
for _, id in ipairs(ids) do
  local info = redis.call('hget', p .. ':inflight', id)
  redis.call('zrem', p .. ':active', id)
  redis.call('hdel', p .. ':inflight', id)
  if info and redis.call('exists', p .. ':msg:' .. id) == 1 then
    local a = string.find(info, '|', 1, true)
    local b = string.find(info, '|', a + 1, true)
    local q = string.sub(info, 1, a - 1)
    redis.call('zadd', p .. ':q:' .. q, string.sub(info, a + 1, b - 1), id)
    redis.call('lpush', p .. ':wake:' .. q, '1')
    redis.call('hset', p .. ':res:' .. id, 'state', 'PENDING')
    back[#back + 1] = id
  end
end
return back
"""

REVOKE_LUA = """
-- ARGV: prefix, id, ttl, now_iso, reason. Returns 1 when a waiting job was removed.
-- Waiting (queued, deferred, parked by a rate limit): removed and REVOKED now, never run early.
-- Not enqueued yet (a later chain step, a chord body): REVOKED now, so it is never enqueued; a chord
-- whose body is revoked is marked failed, so its header can no longer dispatch the body.
-- Running: untouched here (terminate is a pub/sub command); the mark stops any retry of it.
-- The ``revoked:<id>`` mark expires with the result record, so no id stays poisoned.
local p, id, ttl = ARGV[1], ARGV[2], ARGV[3]
local rkey = p .. ':res:' .. id
redis.call('set', p .. ':revoked:' .. id, '1', 'EX', ttl)
if redis.call('exists', p .. ':chord:' .. id) == 1 then
  redis.call('hsetnx', p .. ':chord:' .. id, 'failed', 'revoked')
end
local msg = redis.call('get', p .. ':msg:' .. id)
local removed = 0
if redis.call('hget', p .. ':dq', id) then
  redis.call('zrem', p .. ':delayed', id)
  redis.call('hdel', p .. ':dq', id)
  removed = 1
elseif msg then
  local ok, m = pcall(cjson.decode, string.sub(msg, string.find(msg, '{', 1, true) or 1))
  if ok and type(m) == 'table' and type(m.queue) == 'string'
      and redis.call('zrem', p .. ':q:' .. m.queue, id) == 1 then
    removed = 1
  end
end
if msg then
  local task = string.match(msg, '"task":"(.-)"')
  if task then redis.call('srem', p .. ':rl-pass:' .. task, id) end
end
local state = redis.call('hget', rkey, 'state')
local final = state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED'
local unseen = not msg and not final and redis.call('hexists', p .. ':inflight', id) == 0
if removed == 1 then redis.call('del', p .. ':msg:' .. id) end
if removed == 1 or unseen then
  redis.call('hset', rkey, 'state', 'REVOKED', 'exc_type', 'TaskRevokedError',
    'exc_module', 'tasks_engine.exceptions', 'exc_message', ARGV[5], 'date_done', ARGV[4])
  redis.call('expire', rkey, ttl)
  redis.call('publish', p .. ':done', id)
end
return removed
"""

CHORD_PART_LUA = (
    _LUA_ENQUEUE_FN
    + """
-- ARGV: prefix, chord_id, task_id, index, ok, result_json, exc_message, traceback, now_ms, now_iso, ttl
local p, cid, tid = ARGV[1], ARGV[2], ARGV[3]
local ckey = p .. ':chord:' .. cid
if redis.call('exists', ckey) == 0 then return 'unknown' end
if redis.call('sadd', ckey .. ':done', tid) == 0 then return 'dup' end
local ttl = ARGV[11]
redis.call('expire', ckey .. ':done', ttl)
local function run_writes(raw, results)
  for _, w in ipairs(cjson.decode(raw)) do
    local msg = w[2]
    if results then
      local s, e = string.find(msg, '"__te_chord_results__"', 1, true)
      if s then msg = string.sub(msg, 1, s - 1) .. results .. string.sub(msg, e + 1) end
    end
    te_enqueue(p, w[1], msg, w[3], w[4], w[5], ARGV[9], '1')
  end
end
if ARGV[5] == '1' then
  redis.call('hset', ckey .. ':r', ARGV[4], ARGV[6])
  redis.call('expire', ckey .. ':r', ttl)
  local count = redis.call('hincrby', ckey, 'count', 1)
  local total = tonumber(redis.call('hget', ckey, 'total'))
  if count >= total and redis.call('hexists', ckey, 'failed') == 0
      and redis.call('hsetnx', ckey, 'dispatched', tid) == 1 then
    local parts = {}
    for i = 0, total - 1 do parts[#parts + 1] = redis.call('hget', ckey .. ':r', tostring(i)) or 'null' end
    run_writes(redis.call('hget', ckey, 'body'), '[' .. table.concat(parts, ',') .. ']')
    redis.call('expire', ckey, ttl)
    return 'fired'
  end
  return 'counted'
end
if redis.call('hsetnx', ckey, 'failed', tid) == 1 then
  local body_id = redis.call('hget', ckey, 'body_id')
  local rkey = p .. ':res:' .. body_id
  redis.call('hset', rkey, 'state', 'FAILURE', 'exc_type', 'ChordError', 'exc_module', 'tasks_engine.exceptions',
    'exc_message', ARGV[7], 'traceback', ARGV[8], 'date_done', ARGV[10])
  redis.call('expire', rkey, ttl)
  redis.call('publish', p .. ':done', body_id)
  run_writes(redis.call('hget', ckey, 'on_error'), nil)
  redis.call('expire', ckey, ttl)
  return 'failed'
end
return 'counted'
"""
)


@dataclass(frozen=True)
class Enqueue:
    """One message to place: ready now, or deferred to ``eta_ms``; ``nx`` skips ids already known."""

    id: str
    raw: bytes
    queue: str
    priority: int
    eta_ms: int = 0
    nx: bool = False

    def argv(self) -> list[Any]:
        return [self.id, self.raw, self.queue, self.priority, self.eta_ms, "1" if self.nx else "0"]


class Broker:
    """One Redis client and the engine's scripts, bound to one event loop."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.redis: Redis = Redis.from_url(
            settings.redis_url.get_secret_value(),
            max_connections=200,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self.enqueue_script: AsyncScript = self.redis.register_script(ENQUEUE_LUA)
        self.claim_script: AsyncScript = self.redis.register_script(CLAIM_LUA)
        self.requeue_script: AsyncScript = self.redis.register_script(REQUEUE_LUA)
        self.revoke_script: AsyncScript = self.redis.register_script(REVOKE_LUA)
        self.chord_part_script: AsyncScript = self.redis.register_script(CHORD_PART_LUA)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def result_key(self, task_id: str) -> str:
        return f"{self.prefix}:res:{task_id}"

    @property
    def done_channel(self) -> str:
        return f"{self.prefix}:done"

    @property
    def control_channel(self) -> str:
        return f"{self.prefix}:control"

    def enqueue_args(self, items: list[Enqueue]) -> list[Any]:
        argv: list[Any] = [self.prefix, now_ms()]
        for item in items:
            argv.extend(item.argv())
        return argv

    async def enqueue(self, items: list[Enqueue]) -> int:
        if not items:
            return 0
        return int(await self.enqueue_script(args=self.enqueue_args(items)))

    async def close(self) -> None:
        listener = getattr(getattr(self, "_waiter", None), "_listener", None)
        if listener is not None and not listener.done():
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        await self.redis.aclose()


def awaited(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types its asyncio commands as "awaitable or value"; on our async client it is awaitable."""
    return cast("Awaitable[T]", value)


def now_ms() -> int:
    return int(time.time() * 1000)


_brokers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Broker] = weakref.WeakKeyDictionary()


def get_broker() -> Broker:
    """The broker of the running event loop (redis-py's asyncio clients cannot cross loops)."""
    loop = asyncio.get_running_loop()
    broker = _brokers.get(loop)
    if broker is None or broker.settings is not get_settings():
        broker = Broker(get_settings())
        _brokers[loop] = broker
    return broker


def reset_brokers() -> None:
    """Forget cached clients (after :func:`tasks_engine.config.configure`)."""
    _brokers.clear()
