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
  local _, _, owner = te_place(redis.call('hget', p .. ':inflight', id), true)
  local delivered = tonumber(redis.call('hget', rkey, 'delivered'))
  if owner ~= c.worker or (delivered ~= nil and delivered ~= c.token) then return 'stale' end
end
if te_final(redis.call('hget', rkey, 'state')) then
  -- Another delivery already finished this job: take ours off the books, rewrite nothing.
  redis.call('zrem', p .. ':active', id)
  redis.call('hdel', p .. ':inflight', id)
  if c.final then redis.call('del', mkey) end
  return 'final'
end
if c.dead ~= null then
  redis.call('lpush', p .. ':dead', c.dead)
  redis.call('ltrim', p .. ':dead', 0, 9999)
end
local function hset_all(key, fields)
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  if #flat > 0 then redis.call('hset', key, unpack(flat)) end
end
if c.record == null then
  redis.call('del', rkey)
elseif next(c.record) ~= nil then
  if c.clear then redis.call('hdel', rkey, 'exc_type', 'exc_module', 'exc_message', 'exc_args', 'traceback') end
  hset_all(rkey, c.record)
  redis.call('expire', rkey, ttl)
end
for _, later in ipairs(c.later) do
  local lkey = p .. ':res:' .. later[1]
  hset_all(lkey, later[2])
  redis.call('expire', lkey, ttl)
  redis.call('set', p .. ':revoked:' .. later[1], '1', 'EX', ttl)  -- they must never start now
  redis.call('publish', p .. ':done', later[1])
end
redis.call('zrem', p .. ':active', id)
redis.call('hdel', p .. ':inflight', id)
if c.final then redis.call('del', mkey) end
for _, ch in ipairs(c.chords) do
  local ckey = p .. ':chord:' .. ch[1]
  -- HSETNX, field by field: planning the same chord again (a re-delivered parent) keeps its count.
  redis.call('hsetnx', ckey, 'total', ch[2])
  redis.call('hsetnx', ckey, 'body_id', ch[1])
  redis.call('hsetnx', ckey, 'count', 0)
  redis.call('hsetnx', ckey, 'body', ch[3])
  redis.call('hsetnx', ckey, 'on_error', ch[4])
  redis.call('expire', ckey, math.max(tonumber(ttl), 7 * 86400))
end
for _, g in ipairs(c.groups) do
  redis.call('set', p .. ':group:' .. g[1], g[2], 'EX', ttl)
end
for _, e in ipairs(c.enqueues) do
  te_enqueue(p, e[1], e[2], e[3], e[4], e[5], now_ms, e[6])
end
for _, part in ipairs(c.parts) do
  te_chord_part(p, part[1], part[2], part[3], part[4], part[5], part[6], part[7], now_ms, iso, ttl)
end
if c.failed then
  -- Failed for good: findable by time without scanning records (bounded: the last 10,000, within the TTL).
  local fkey = p .. ':failed'
  redis.call('zadd', fkey, now_ms, id)
  redis.call('zremrangebyscore', fkey, '-inf', string.format('%d', tonumber(now_ms) - tonumber(ttl) * 1000))
  redis.call('zremrangebyrank', fkey, 0, -10001)
end
if c.final then redis.call('publish', p .. ':done', id) end
if c.idempotent ~= null then
  redis.call('set', p .. ':done:' .. id, c.idempotent, 'EX', ttl)
end
return 'ok'
