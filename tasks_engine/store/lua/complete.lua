-- uses: lib
-- ARGV: prefix, result_ttl, now_ms, now_iso, completion... (JSON each, see store/writes.py: Completion.payload)
-- Writes finished deliveries, each on its own: result record, ack, next steps, chord parts, wake-ups — or
-- nothing at all when it is stale. Fencing: only the current lease holder may complete a job (its worker
-- id is in ``inflight`` and the record's ``delivered`` counter is still the one it was claimed with); a
-- record that is already final is never rewritten by another delivery. Returns one status per completion:
-- 'ok', 'stale', 'final', or 'error:<text>' when that completion could not be written (the others are).
-- The acknowledgements, message deletes and the ``done`` announcement are made once for the whole call.
local p, ttl, now_ms, iso = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local null = cjson.null
local finished = {}
te_acks, te_dels = {}, {}
-- What the entry being written had already marked before it began: an entry that raises half-way is
-- taken back off the call's acknowledgements, so the worker's fallback write still finds its lease.
local entry = nil

local function complete(payload)
  local c = cjson.decode(payload)
  local id = c.id
  local rkey = p .. ':res:' .. id
  local mkey = p .. ':msg:' .. id
  entry = {id = id, mkey = mkey, acked = te_acks[id], deleted = te_dels[mkey], finished = #finished}
  local readable, record = pcall(redis.call, 'hmget', rkey, 'state', 'delivered')
  if not readable then
    redis.call('del', rkey)  -- the store keeps only what its scripts can read
    record = {false, false}
  end
  if c.token ~= null then
    local owner = nil
    if not te_acks[id] then  -- acknowledged earlier in this call: no longer anybody's
      local _, _, holder = te_place(redis.call('hget', K_INFLIGHT, id), true)
      owner = holder
    end
    local delivered = tonumber(record[2])
    if owner ~= c.worker or (delivered ~= nil and delivered ~= c.token) then return 'stale' end
  end
  te_acks[id] = true
  if te_final(record[1]) then
    -- Another delivery already finished this job: take ours off the books, rewrite nothing.
    if c.final then te_dels[mkey] = true end
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
  if c.final then te_dels[mkey] = true end
  te_apply(p, c, ttl, now_ms, iso)
  if c.celery ~= nil and c.celery ~= null then te_celery_apply(c.celery) end
  if c.failed then
    -- Failed for good: findable by time without scanning records (bounded: the last 10,000, within the TTL).
    local fkey = K_FAILED
    redis.call('zadd', fkey, now_ms, id)
    redis.call('zremrangebyscore', fkey, '-inf', string.format('%d', tonumber(now_ms) - tonumber(ttl) * 1000))
    redis.call('zremrangebyrank', fkey, 0, -10001)
  end
  if c.final then finished[#finished + 1] = id end
  if c.idempotent ~= null then
    redis.call('set', p .. ':done:' .. id, c.idempotent, 'EX', ttl)
  end
  return 'ok'
end

local statuses = {}
for i = 5, #ARGV do
  entry = nil
  local ok, status = pcall(complete, ARGV[i])
  if not ok then
    status = 'error:' .. tostring(type(status) == 'table' and (status.err or status.message) or status)
    if entry ~= nil then
      te_acks[entry.id] = entry.acked
      te_dels[entry.mkey] = entry.deleted
      for j = #finished, entry.finished + 1, -1 do finished[j] = nil end
    end
  end
  statuses[#statuses + 1] = status
end
local acked, dels = {}, {}
for id in pairs(te_acks) do acked[#acked + 1] = id end
for key in pairs(te_dels) do dels[#dels + 1] = key end
te_acks, te_dels = nil, nil
te_chunked('zrem', K_ACTIVE, acked, 1)
te_chunked('hdel', K_INFLIGHT, acked, 1)
te_chunked('del', nil, dels, 1)
-- One announcement for the call: the finished ids, a line each (store/waiter.py reads them so).
if #finished > 0 then redis.call('publish', p .. ':done', table.concat(finished, '\n')) end
return statuses
