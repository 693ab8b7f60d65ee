-- uses: lib
-- ARGV: prefix, id, ttl, now_iso, reason, terminate ('1'/'0'). Returns 1 when a waiting job was removed.
-- Waiting (queued, deferred, parked by a rate limit): removed and REVOKED now, never run early.
-- Not enqueued yet (a later chain step, a chord body): REVOKED now, so it is never enqueued; a chord
-- whose body is revoked is marked failed, so its header can no longer dispatch the body.
-- Running: untouched here (terminate is a pub/sub command); the mark stops any retry of it.
-- The ``revoked:<id>`` mark expires with the result record, so no id stays poisoned.
-- A Celery-sent job (runtime/celery_consumer.py) also gets Celery's REVOKED record at its result key.
local p, id, ttl = ARGV[1], ARGV[2], ARGV[3]
local rkey = p .. ':res:' .. id
-- 'terminate' also tells the heartbeat of whichever worker runs it to stop it (should the pub/sub
-- command be missed); a later plain revoke keeps that.
local mark = p .. ':revoked:' .. id
if ARGV[6] == '1' or redis.call('get', mark) == 'terminate' then
  redis.call('set', mark, 'terminate', 'EX', ttl)
else
  redis.call('set', mark, '1', 'EX', ttl)
end
if redis.call('exists', p .. ':chord:' .. id) == 1 then
  redis.call('hsetnx', p .. ':chord:' .. id, 'failed', 'revoked')
end
local msg = redis.call('get', p .. ':msg:' .. id)
local removed = 0
if redis.call('hget', K_DQ, id) then
  redis.call('zrem', K_DELAYED, id)
  redis.call('hdel', K_DQ, id)
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
local unseen = not msg and not final and redis.call('hexists', K_INFLIGHT, id) == 0
if removed == 1 then redis.call('del', p .. ':msg:' .. id) end
if removed == 1 or unseen then
  redis.call('hset', rkey, 'state', 'REVOKED', 'exc_type', 'TaskRevokedError',
    'exc_module', 'tasks_engine.exceptions', 'exc_message', ARGV[5], 'date_done', ARGV[4])
  redis.call('expire', rkey, ttl)
  redis.call('publish', p .. ':done', id)
  local ok, m = pcall(cjson.decode, msg and string.find(msg, '"celery":', 1, true)
    and string.sub(msg, string.find(msg, '{', 1, true) or 1) or '')
  local side = ok and type(m) == 'table' and type(m.headers) == 'table' and m.headers.celery
  if type(side) == 'table' and type(side.result_key) == 'string' then
    te_celery_revoked(side.result_key, id, ARGV[5], ARGV[4], ttl)
  end
end
return removed
