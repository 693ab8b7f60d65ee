-- uses: lib
-- ARGV: prefix, n, lease_ms, worker_id, rate_limits_json, now_iso, result_ttl, queue...
-- Returns {{id, msg, revoked, delivered}, ...}, the next deferred due time (ms) or '', Redis's now (ms) and
-- the duplicates settled here, {{id, state, task}, ...}: a message of a job whose record is final (SUCCESS,
-- FAILURE, REVOKED; a RETRY is not) is deleted unrun, and a copy of a job that is running under a lease is
-- dropped, so a replayed or re-sent message never runs a job twice. Both are read here at no extra cost.
-- Leases and due times use Redis's clock, never the worker's. An entry the script cannot read (bad
-- bookkeeping, a lost message, a key of the wrong type) is quarantined: it must never stop every claim.
local p, n, lease_ms, wid = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local limits = cjson.decode(ARGV[5])
local iso, ttl = ARGV[6], ARGV[7]
local queues = {}
for i = 8, #ARGV do queues[#queues + 1] = ARGV[i] end
local rnow = te_time_ms()
local now = rnow
local lease = string.format('%d', rnow + lease_ms)
-- Due deferred jobs join their queue at the score they got when enqueued: their priority's place.
local due = redis.call('zrangebyscore', K_DELAYED, '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  local info = redis.call('hget', K_DQ, id)
  local q, score = te_place(info, false)
  if q then
    redis.call('zrem', K_DELAYED, id)
    redis.call('hdel', K_DQ, id)
    redis.call('zadd', p .. ':q:' .. q, score, id)
  elseif info then
    te_quarantine(p, id, 'unreadable deferred-job entry: ' .. tostring(info), iso, ttl)
  else
    redis.call('zrem', K_DELAYED, id)
  end
end
local function park(id, q, score, at)
  redis.call('zadd', K_DELAYED, string.format('%d', at), id)
  redis.call('hset', K_DQ, id, q .. '|' .. score)
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
local function rate_limited(id, q, score, task, rl, msg)
  local pass = p .. ':rl-pass:' .. task
  local reserved = redis.call('srem', pass, id) == 1
  local exp = expires_ms(msg)
  if exp and exp <= rnow then return false end  -- expired: the worker records it REVOKED, no slot used
  local at = nil
  if not reserved then
    local key = p .. ':rl:' .. task
    local tat = math.max(tonumber(redis.call('get', key) or '0') or 0, rnow)
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
local out, dups, taken, popped, capped
-- The runtime override of a task's limit (hash ``rate-limits``), read once per task and call.
local overrides = {}
local function runtime_limit(task)
  local cached = overrides[task]
  if cached == nil then
    cached = false
    local o = redis.call('hget', K_RATE_LIMITS, task)
    if o then
      local parsed, value = pcall(cjson.decode, o)
      if parsed and type(value) == 'table' and tonumber(value[1]) and tonumber(value[2]) then
        cached = value
      else
        redis.call('hdel', K_RATE_LIMITS, task)  -- unreadable runtime limit: the declared one applies
      end
    end
    overrides[task] = cached
  end
  return cached or nil
end
local cap = n * 4 + 500
-- The next jobs to look at, {queue, id, score} each, best first: from a single queue as many at once as
-- are wanted (one ZPOPMIN); across several queues one at a time, the best head of them.
local function next_jobs()
  local want = math.min(n - taken, cap - popped, 1000)
  if #queues == 1 then
    local got = redis.call('zpopmin', p .. ':q:' .. queues[1], want)
    local jobs = {}
    for i = 1, #got, 2 do jobs[#jobs + 1] = {queues[1], got[i], got[i + 1]} end
    return jobs
  end
  local bq, bid, bscore, bs = nil, nil, nil, nil
  for _, q in ipairs(queues) do
    local head = redis.call('zrange', p .. ':q:' .. q, 0, 0, 'WITHSCORES')
    if head[1] and (bscore == nil or tonumber(head[2]) < bscore) then
      bq, bid, bscore, bs = q, head[1], tonumber(head[2]), head[2]
    end
  end
  if not bid then return {} end
  redis.call('zrem', p .. ':q:' .. bq, bid)
  return {{bq, bid, bs}}
end
-- Taken jobs' leases and owners, written once for the call; `mine`: the ids this call took.
local leases, owners, mine = {}, {}, {}
local function take(bid, bq, bs, msg, revoked, rkey, delivered_before)
  leases[#leases + 1] = lease
  leases[#leases + 1] = bid
  owners[#owners + 1] = bid
  owners[#owners + 1] = bq .. '|' .. bs .. '|' .. wid
  mine[bid] = true
  local delivered = (tonumber(delivered_before) or 0) + 1
  if revoked == 0 then
    redis.call('hset', rkey, 'delivered', delivered, 'state', 'STARTED', 'worker', wid, 'date_started',
      string.format('%d', rnow))
  else
    redis.call('hset', rkey, 'delivered', delivered)
  end
  out[#out + 1] = {bid, msg, revoked, delivered}
  taken = taken + 1
end
-- One popped job: run it, settle it as a duplicate, park it (rate limit) or quarantine it.
local function consider(bq, bid, bs, msg, revoked, running)
  local mkey = p .. ':msg:' .. bid
  if not msg then
    local got, value = pcall(redis.call, 'get', mkey)  -- MGET reads a key of another type as nil
    if not got then
      te_quarantine(p, bid, 'message key holds a value of the wrong type', iso, ttl)
      return
    end
    msg = value
  end
  if not msg then
    if not te_final(redis.call('hget', p .. ':res:' .. bid, 'state')) then
      te_quarantine(p, bid, 'message lost while queued (evicted or deleted)', iso, ttl)
    end
    return
  end
  local rkey = p .. ':res:' .. bid
  local readable, record = pcall(redis.call, 'hmget', rkey, 'state', 'delivered')
  if not readable then  -- the store keeps only what it can read
    redis.call('del', rkey)
    record = {false, false}
  end
  local state = record[1]
  local task = string.match(msg, '"task":"(.-)"')
  if te_final(state) then
    -- Already finished (a replayed or re-sent message): never run again, record left as it is.
    redis.call('del', mkey)
    dups[#dups + 1] = {bid, state, task or ''}
  elseif running or mine[bid] then
    -- Running under a lease right now: a second copy of it, dropped (the running one owns the message).
    dups[#dups + 1] = {bid, 'RUNNING', task or ''}
  else
    if revoked == 0 and task then
      local rl = runtime_limit(task) or limits[task]
      if rl and rl[1] > 0 and rate_limited(bid, bq, bs, task, rl, msg) then return end
    end
    take(bid, bq, bs, msg, revoked, rkey, record[2])
  end
end
out, dups, taken, popped, capped = {}, {}, 0, 0, false
while taken < n do
  if popped >= cap then capped = true break end
  local jobs = next_jobs()
  if #jobs == 0 then break end
  popped = popped + #jobs
  -- Their messages, revoke marks and leases in one read each for the whole batch.
  local names, ids = {}, {}
  for _, job in ipairs(jobs) do
    names[#names + 1] = p .. ':msg:' .. job[2]
    names[#names + 1] = p .. ':revoked:' .. job[2]
    ids[#ids + 1] = job[2]
  end
  local values = redis.call('mget', unpack(names))
  local running = redis.call('hmget', K_INFLIGHT, unpack(ids))
  for i, job in ipairs(jobs) do
    consider(job[1], job[2], job[3], values[2 * i - 1] or nil, values[2 * i] and 1 or 0, running[i])
  end
end
te_chunked('zadd', K_ACTIVE, leases, 2)
te_chunked('hset', K_INFLIGHT, owners, 2)
if capped then
  redis.call('lpush', p .. ':wake:' .. queues[1], '1')  -- parked a long run of jobs: claim again at once
elseif taken == 0 then
  for _, q in ipairs(queues) do redis.call('del', p .. ':wake:' .. q) end
  -- Nothing to do: this worker may be handed the next job directly (lib.lua te_handoff).
  local limited = {}
  for name, rl in pairs(limits) do if type(rl) == 'table' and tonumber(rl[1]) and rl[1] > 0 then limited[#limited + 1] = name end end
  if #limited > 0 then
    redis.call('sadd', K_RL_TASKS, unpack(limited))
    redis.call('pexpire', K_RL_TASKS, 86400000)
  end
  redis.call('hset', K_IDLE_INFO, wid, string.format('%d', lease_ms) .. '|' .. table.concat(queues, '\n'))
  for _, q in ipairs(queues) do redis.call('zadd', p .. ':idle:' .. q, rnow, wid) end
elseif redis.call('hexists', K_IDLE_INFO, wid) == 1 then
  for _, q in ipairs(queues) do redis.call('zrem', p .. ':idle:' .. q, wid) end  -- busy again
  redis.call('hdel', K_IDLE_INFO, wid)
end
local nxt = redis.call('zrange', K_DELAYED, 0, 0, 'WITHSCORES')
return {out, nxt[2] or '', rnow, dups}
