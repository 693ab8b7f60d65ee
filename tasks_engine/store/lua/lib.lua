-- Shared helpers, prepended to the scripts that start with '-- uses: lib'.
-- Numbers are formatted with %d: Redis converts Lua numbers with %.14g.

-- Redis's own clock in ms: one clock for every host (leases, due times, rate limits).
local function te_time_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function te_final(state)
  return state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED'
end

-- 'queue|score' (dq) or 'queue|score|worker' (inflight), read from the right: the score and the
-- worker id never contain '|', so a queue name that does (refused at enqueue since) still parses.
local function te_place(info, with_worker)
  if type(info) ~= 'string' then return nil end
  local worker = nil
  if with_worker then
    local w = string.match(info, '|([^|]*)$')
    if not w then return nil end
    worker = w
    info = string.sub(info, 1, #info - #w - 1)
  end
  local q, score = string.match(info, '^(.+)|([^|]+)$')
  if not q or not tonumber(score) then return nil end
  return q, score, worker
end

-- True when s is valid UTF-8: cjson copies bytes as they are, and the engine's readers need JSON text.
local function te_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c, len = string.byte(s, i), 0
    if c < 128 then len = 1
    elseif c >= 194 and c <= 223 then len = 2
    elseif c >= 224 and c <= 239 then len = 3
    elseif c >= 240 and c <= 244 then len = 4
    else return false end
    for j = i + 1, i + len - 1 do
      local d = string.byte(s, j)
      if not d or d < 128 or d > 191 then return false end
    end
    i = i + len
  end
  return true
end

-- s as text fit for a JSON document: itself, without a character cut in half at the end, or its hex.
local function te_text(s)
  for cut = 0, 3 do
    local head = string.sub(s, 1, #s - cut)
    if te_utf8(head) then return head end
  end
  return 'hex:' .. (string.gsub(s, '.', function(ch) return string.format('%02x', string.byte(ch)) end))
end

-- A job the engine cannot handle (bad bookkeeping, lost message): it leaves every structure, gets a
-- FAILURE record naming the reason, a dead letter keeps what is known, and waiters are woken.
local function te_quarantine(p, id, reason, iso, ttl)
  local mkey = p .. ':msg:' .. id
  local ok, msg = pcall(redis.call, 'get', mkey)
  if not ok or type(msg) ~= 'string' then msg = '' end
  redis.call('zrem', K_DELAYED, id)
  redis.call('hdel', K_DQ, id)
  redis.call('zrem', K_ACTIVE, id)
  redis.call('hdel', K_INFLIGHT, id)
  redis.call('del', mkey)
  redis.call('lpush', K_DEAD, cjson.encode({id = te_text(id), reason = te_text(reason), at = iso,
    raw = te_text(string.sub(msg, 1, 4096))}))
  redis.call('ltrim', K_DEAD, 0, 9999)
  local rkey = p .. ':res:' .. id
  local t = redis.call('type', rkey)['ok']
  if t ~= 'hash' and t ~= 'none' then redis.call('del', rkey) end
  if not te_final(redis.call('hget', rkey, 'state')) then
    redis.call('hset', rkey, 'state', 'FAILURE', 'exc_type', 'MessageError', 'exc_module', 'tasks_engine.exceptions',
      'exc_message', te_text(reason), 'exc_args', cjson.encode({te_text(reason)}), 'traceback', '', 'date_done', iso)
    redis.call('expire', rkey, ttl)
    redis.call('publish', p .. ':done', id)
  end
end

-- One enqueue call (enqueue.lua) places many messages: te_batch_begin gathers their writes and
-- te_batch_flush makes them with one command each for the whole call: one INCRBY for the sequence, one
-- MSET for the messages, one ZADD and one wake-up per queue. A hand-off sees the messages gathered
-- before it, so a later job never overtakes an earlier one. Outside such a call (nil) every write is
-- made at once.
local te_batch = nil
local function te_batch_begin(count)
  te_batch = {seq = 1, last = 0, left = math.max(count, 1), known = {}, mset = {}, zadd = {}, wake = {},
    no_handoff = {}}
end
-- A completion call (complete.lua) acknowledges its jobs and deletes their messages at its end, a command
-- for all (te_acks: ids, te_dels: message keys); nil outside one.
local te_acks, te_dels = nil, nil

-- redis.call(cmd, [key,] items...) in chunks of whole groups of `width` items.
local function te_chunked(cmd, key, items, width)
  local step = 1000 - 1000 % width
  for first = 1, #items, step do
    local last = math.min(first + step - 1, #items)
    if key then
      redis.call(cmd, key, unpack(items, first, last))
    else
      redis.call(cmd, unpack(items, first, last))
    end
  end
end

local function te_wake_now(p, q)
  redis.call('lpush', p .. ':wake:' .. q, '1')
  redis.call('ltrim', p .. ':wake:' .. q, 0, 999)
end

-- Wake the workers waiting on q (once per queue in an enqueue call).
local function te_wake(p, q)
  if te_batch then te_batch.wake[q] = true else te_wake_now(p, q) end
end

-- Direct hand-off: a worker whose claim found nothing is registered as idle (claim.lua); a ready job
-- goes straight to the freshest such worker, already leased to it as a claim would, so it starts without
-- a claim round trip. Never for a revoked, finished or running job or a task with a rate limit (the claim
-- applies those), and never to a registration older than 3 s; a job handed to a worker that died
-- meanwhile comes back when its lease expires, like any job of a dead worker. One hand-off per
-- registration. Never past a job already waiting for that worker (queued in any of its queues, or
-- deferred and due): the claim those jobs woke it for takes them first, in priority and FIFO order, so a
-- later job cannot overtake them.
local function te_handoff(p, id, msg, q, score)
  local b = te_batch
  if b and (b.no_handoff[q] or b.zadd[q]) then return false end
  local idle = p .. ':idle:' .. q
  if redis.call('exists', idle) == 0 or redis.call('exists', p .. ':q:' .. q) == 1 then
    -- Within one enqueue call no worker registers as idle and no queue empties: asked once per queue.
    if b then b.no_handoff[q] = true end
    return false
  end
  local now = te_time_ms()
  local due = redis.call('zrange', K_DELAYED, 0, 0, 'WITHSCORES')[2]
  if due and tonumber(due) <= now then return false end
  local freshest = redis.call('zrange', idle, -1, -1, 'WITHSCORES')
  local wid = freshest[1]
  if not wid then return false end
  if tonumber(freshest[2]) < now - 3000 then  -- every registration is stale (the freshest is)
    redis.call('del', idle)
    return false
  end
  local task = string.match(msg, '"task":"(.-)"')
  if not task or redis.call('sismember', K_RL_TASKS, task) == 1 or redis.call('hexists', K_RATE_LIMITS, task) == 1
      or redis.call('exists', p .. ':revoked:' .. id) == 1 then
    return false
  end
  if te_acks and te_acks[id] then  -- acknowledged by this completion call (a retry): made now, not at its end
    redis.call('zrem', K_ACTIVE, id)
    redis.call('hdel', K_INFLIGHT, id)
    te_acks[id] = nil
  end
  local rkey = p .. ':res:' .. id
  local readable, record = pcall(redis.call, 'hmget', rkey, 'state', 'delivered')
  if not readable then  -- the store keeps only what its scripts can read
    redis.call('del', rkey)
    record = {false, false}
  end
  -- A job already finished or running (a replayed or re-sent message): queued, the claim settles it.
  if te_final(record[1]) or redis.call('hexists', K_INFLIGHT, id) == 1 then return false end
  local lease_ms, queues = string.match(redis.call('hget', K_IDLE_INFO, wid) or '', '^(%d+)|(.*)$')
  if not lease_ms then
    redis.call('zrem', idle, wid)
    return false
  end
  for name in string.gmatch(queues, '[^\n]+') do
    if (b and b.zadd[name]) or redis.call('exists', p .. ':q:' .. name) == 1 then return false end
  end
  for name in string.gmatch(queues, '[^\n]+') do redis.call('zrem', p .. ':idle:' .. name, wid) end
  redis.call('hdel', K_IDLE_INFO, wid)
  redis.call('zadd', K_ACTIVE, string.format('%d', now + tonumber(lease_ms)), id)
  redis.call('hset', K_INFLIGHT, id, q .. '|' .. score .. '|' .. wid)
  local delivered = (tonumber(record[2]) or 0) + 1
  redis.call('hset', rkey, 'delivered', delivered, 'state', 'STARTED', 'worker', wid, 'date_started',
    string.format('%d', now))
  local box = p .. ':handoff:' .. wid
  redis.call('rpush', box, id .. '\n' .. delivered .. '\n' .. string.format('%d', now) .. '\n' .. msg)
  redis.call('pexpire', box, 60000)
  return true
end

local function te_enqueue(p, id, msg, q, prio, eta, now, nx)
  local b = te_batch
  local mkey = p .. ':msg:' .. id
  if nx == '1' then
    if b and b.known[id] then return 0 end
    if redis.call('exists', mkey) == 1 then return 0 end
    local st = redis.call('hget', p .. ':res:' .. id, 'state')
    if te_final(st) then return 0 end
  end
  local seq
  if b then
    if b.seq > b.last then  -- one INCRBY reserves the sequence numbers of the whole call
      b.last = tonumber(redis.call('incrby', K_SEQ, b.left))
      b.seq = b.last - b.left + 1
    end
    seq = b.seq
    b.seq = seq + 1
    b.left = math.max(b.left - 1, 1)
  else
    seq = redis.call('incr', K_SEQ)
  end
  local score = string.format('%d', tonumber(prio) * 1000000000000 + seq)
  if b then
    b.known[id] = true
    b.mset[#b.mset + 1] = mkey
    b.mset[#b.mset + 1] = msg
  else
    if te_dels then te_dels[mkey] = nil end  -- written again after a delete this call put off
    redis.call('set', mkey, msg)
  end
  if tonumber(eta) > tonumber(now) then
    redis.call('zadd', K_DELAYED, eta, id)
    redis.call('hset', K_DQ, id, q .. '|' .. score)
    te_wake(p, q)  -- an idle worker re-reads the next due time
  elseif not te_handoff(p, id, msg, q, score) then
    if b then
      local z = b.zadd[q] or {}
      z[#z + 1] = score
      z[#z + 1] = id
      b.zadd[q] = z
    else
      redis.call('zadd', p .. ':q:' .. q, score, id)
    end
    te_wake(p, q)
  end
  return 1
end

-- The gathered writes of te_batch_begin, a command each (in chunks, under Lua's unpack limit).
local function te_batch_flush(p)
  local b = te_batch
  te_batch = nil
  te_chunked('mset', nil, b.mset, 2)
  for q, z in pairs(b.zadd) do te_chunked('zadd', p .. ':q:' .. q, z, 2) end
  for q in pairs(b.wake) do te_wake_now(p, q) end
end

-- One chord header part: count a result (the last one dispatches the body, once) or fail the chord
-- (the body is recorded FAILURE with ChordError, naming the failed header task in chord_failed_id so
-- get() can raise that task's own exception, and the chord's on_error jobs are enqueued).
local function te_chord_part(p, cid, tid, index, ok, result_json, exc_message, traceback, now_ms, now_iso, ttl)
  local ckey = p .. ':chord:' .. cid
  if redis.call('exists', ckey) == 0 then return 'unknown' end
  if redis.call('sadd', ckey .. ':done', tid) == 0 then return 'dup' end
  redis.call('expire', ckey .. ':done', ttl)
  local function run_writes(raw, results)
    for _, w in ipairs(cjson.decode(raw)) do
      local msg = w[2]
      if results then
        local s, e = string.find(msg, '"__te_chord_results__"', 1, true)
        if s then msg = string.sub(msg, 1, s - 1) .. results .. string.sub(msg, e + 1) end
      end
      te_enqueue(p, w[1], msg, w[3], w[4], w[5], now_ms, '1')
    end
  end
  if ok == '1' then
    redis.call('hset', ckey .. ':r', index, result_json)
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
      'exc_message', exc_message, 'traceback', traceback, 'date_done', now_iso, 'chord_failed_id', tid)
    redis.call('expire', rkey, ttl)
    redis.call('publish', p .. ':done', body_id)
    run_writes(redis.call('hget', ckey, 'on_error'), nil)
    redis.call('expire', ckey, ttl)
    return 'failed'
  end
  return 'counted'
end

local function te_hset_all(key, fields)
  local flat = {}
  for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  if #flat > 0 then redis.call('hset', key, unpack(flat)) end
end

-- A plan's writes (store/writes.py: Completion.payload without the job's own part): records of steps
-- that will never run, chord records, group trees, messages, chord parts. One script, so a plan is
-- written all or nothing on a single Redis and on a Cluster alike.
local function te_apply(p, c, ttl, now_ms, iso)
  for _, later in ipairs(c.later) do
    local lkey = p .. ':res:' .. later[1]
    te_hset_all(lkey, later[2])
    redis.call('expire', lkey, ttl)
    redis.call('set', p .. ':revoked:' .. later[1], '1', 'EX', ttl)  -- they must never start now
    redis.call('publish', p .. ':done', later[1])
  end
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
end

-- Celery's result backend (store/celery.py): a record is kept for ttl and published on its own key (the
-- channel AsyncResult.get() listens on), unless a SUCCESS is stored there already (Celery's rule).
local function te_celery_store(key, value, ttl)
  local ok, old = pcall(redis.call, 'get', key)
  if ok and type(old) == 'string' and string.find(old, '"status": *"SUCCESS"') then return 0 end
  redis.call('set', key, value, 'EX', ttl)
  redis.call('publish', key, value)
  return 1
end

-- Celery's REVOKED record (TaskRevokedError, as Celery's AsyncResult raises it).
local function te_celery_revoked(key, id, reason, iso, ttl)
  te_celery_store(key, cjson.encode({status = 'REVOKED', result = {exc_type = 'TaskRevokedError',
    exc_message = {reason}, exc_module = 'celery.exceptions'}, traceback = cjson.null, date_done = iso,
    task_id = id}), ttl)
end

-- s as the inside of a JSON string (to put text into a message whose body is itself a JSON string).
local function te_json_inner(s)
  local quoted = cjson.encode(s)
  return string.sub(quoted, 2, #quoted - 1)
end

local function te_splice(text, mark, value)
  local s, e = string.find(text, mark, 1, true)
  if not s then return text end
  return string.sub(text, 1, s - 1) .. value .. string.sub(text, e + 1)
end

-- One header part of a Celery chord (Celery's native Redis chord: results in the '.j' zset scored by
-- group index, '.t' extra count, '.s' size set by the producer). The part that completes the count
-- sends the body once (a SET NX marker also stops a re-run part), with the results in header order, or
-- records the body FAILURE with a ChordError naming the failed part; then the chord keys go.
-- o: 'chord', jkey, tkey, skey, index, member, body list key, body message, body result key,
--    body failure record, fired key, ttl
local function te_celery_chord(o)
  local jkey, tkey, skey, ttl = o[2], o[3], o[4], o[12]
  redis.call('zadd', jkey, o[5], o[6])
  local ready = redis.call('zcard', jkey)
  local extra = tonumber(redis.call('get', tkey) or '0') or 0
  local size = tonumber(redis.call('get', skey) or '')
  redis.call('expire', jkey, ttl)
  if not size or ready ~= size + extra then return end
  if not redis.call('set', o[11], '1', 'NX', 'EX', ttl) then return end
  local parts, failed = {}, nil
  for _, m in ipairs(redis.call('zrange', jkey, 0, -1)) do
    local tid, state, value = string.match(m, '^%[%s*1%s*,%s*"([^"]*)"%s*,%s*"([^"]*)"%s*,%s*(.*)%]$')
    if not tid then
      failed = failed or 'Dependency ? could not be read'
    elseif state == 'FAILURE' or state == 'REVOKED' then
      local ok, e = pcall(cjson.decode, value)
      local kind, text = 'Exception', ''
      if ok and type(e) == 'table' then
        kind = type(e.exc_type) == 'string' and e.exc_type or kind
        local first = type(e.exc_message) == 'table' and e.exc_message[1] or e.exc_message
        if type(first) == 'string' then text = "'" .. first .. "'" elseif first ~= nil then text = tostring(first) end
      end
      failed = failed or ('Dependency ' .. tid .. ' raised ' .. kind .. '(' .. text .. ')')
    else
      parts[#parts + 1] = value
    end
  end
  redis.call('del', jkey, tkey, skey)
  if failed then
    te_celery_store(o[9], te_splice(o[10], '"__te_chord_error__"', cjson.encode(failed)), ttl)
  else
    local results = '[' .. table.concat(parts, ', ') .. ']'
    redis.call('lpush', o[7], te_splice(o[8], '\\"__te_celery_chord_results__\\"', te_json_inner(results)))
  end
end

-- The Celery side of a completion (runtime/celery_finish.py): records, messages to Celery queues, chord parts.
local function te_celery_apply(ops)
  for _, o in ipairs(ops) do
    if o[1] == 'result' then te_celery_store(o[2], o[3], o[4])
    elseif o[1] == 'send' then redis.call('lpush', o[2], o[3])
    elseif o[1] == 'chord' then te_celery_chord(o) end
  end
end
