-- uses: lib
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
