-- uses: lib
-- ARGV: prefix, result_ttl, now_ms, now_iso, completion (JSON, see store/writes.py: Completion.payload)
-- Writes one finished delivery: result record, ack, next steps, chord parts, wake-ups — or nothing at
-- all when it is stale. Fencing: only the current lease holder may complete a job (its worker id is in
-- ``inflight`` and the record's ``delivered`` counter is still the one it was claimed with); a record
-- that is already final is never rewritten by another delivery. Returns 'ok', 'stale' or 'final'.
local p, ttl, now_ms, iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local c = cjson.decode(ARGV[5])
local null = cjson.null
local id = c.id
local rkey = p .. ':res:' .. id
local mkey = p .. ':msg:' .. id
local kind = redis.call('type', rkey)['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('del', rkey)  -- the store keeps only what its scripts can read
  kind = 'none'
end
if c.token ~= null then
  local _, _, owner = te_place(redis.call('hget', K_INFLIGHT, id), true)
  local delivered = tonumber(redis.call('hget', rkey, 'delivered'))
  if owner ~= c.worker or (delivered ~= nil and delivered ~= c.token) then return 'stale' end
end
if te_final(redis.call('hget', rkey, 'state')) then
  -- Another delivery already finished this job: take ours off the books, rewrite nothing.
  redis.call('zrem', K_ACTIVE, id)
  redis.call('hdel', K_INFLIGHT, id)
  if c.final then redis.call('del', mkey) end
  return 'final'
end
if c.dead ~= null then
  redis.call('lpush', K_DEAD, c.dead)
  redis.call('ltrim', K_DEAD, 0, 9999)
end
if c.record == null then
  redis.call('del', rkey)
elseif next(c.record) ~= nil then
  if c.clear then redis.call('hdel', rkey, 'exc_type', 'exc_module', 'exc_message', 'exc_args', 'traceback') end
  te_hset_all(rkey, c.record)
  redis.call('expire', rkey, ttl)
end
redis.call('zrem', K_ACTIVE, id)
redis.call('hdel', K_INFLIGHT, id)
if c.final then redis.call('del', mkey) end
te_apply(p, c, ttl, now_ms, iso)
if c.celery ~= nil and c.celery ~= null then te_celery_apply(c.celery) end
if c.failed then
  -- Failed for good: findable by time without scanning records (bounded: the last 10,000, within the TTL).
  local fkey = K_FAILED
  redis.call('zadd', fkey, now_ms, id)
  redis.call('zremrangebyscore', fkey, '-inf', string.format('%d', tonumber(now_ms) - tonumber(ttl) * 1000))
  redis.call('zremrangebyrank', fkey, 0, -10001)
end
if c.final then redis.call('publish', p .. ':done', id) end
if c.idempotent ~= null then
  redis.call('set', p .. ':done:' .. id, c.idempotent, 'EX', ttl)
end
return 'ok'
