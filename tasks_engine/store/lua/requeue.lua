-- uses: lib
-- ARGV: prefix, worker_id ('' for the reaper), mode ('expired' = leases past Redis's clock; 'ids'), now_iso,
-- ttl, ids... Puts jobs back in their queue at their place, without counting a retry. In 'ids' mode only
-- jobs this worker holds are put back (a worker paused past its lease must not take a job back from the
-- worker that runs it now). A job whose bookkeeping cannot be read is quarantined, never left to stop us.
-- A job whose record is already final (it finished, or a replayed copy of a finished job was running) is
-- taken off the books instead, unrun. Returns {requeued ids, {{id, state, task}, ...} settled as duplicates}.
local p, wid, iso, ttl = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local ids = {}
if ARGV[3] == 'expired' then
  ids = redis.call('zrangebyscore', K_ACTIVE, '-inf', te_time_ms(), 'LIMIT', 0, 500)
else
  for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local back, dups = {}, {}
for _, id in ipairs(ids) do
  local info = redis.call('hget', K_INFLIGHT, id)
  local q, score, owner = te_place(info, true)
  if ARGV[3] == 'ids' and owner ~= wid then
    -- not ours (any more): leave it alone
  elseif info and not q then
    te_quarantine(p, id, 'unreadable running-job entry: ' .. tostring(info), iso, ttl)
  else
    redis.call('zrem', K_ACTIVE, id)
    redis.call('hdel', K_INFLIGHT, id)
    local rkey = p .. ':res:' .. id
    local t = redis.call('type', rkey)['ok']
    local state = t == 'hash' and redis.call('hget', rkey, 'state')
    if q and te_final(state) then
      -- Finished after all: never run again, its record stays.
      local ok, msg = pcall(redis.call, 'get', p .. ':msg:' .. id)
      redis.call('del', p .. ':msg:' .. id)
      if ok and type(msg) == 'string' then dups[#dups + 1] = {id, state, string.match(msg, '"task":"(.-)"') or ''} end
    elseif q and redis.call('exists', p .. ':msg:' .. id) == 1 then
      redis.call('zadd', p .. ':q:' .. q, score, id)
      redis.call('lpush', p .. ':wake:' .. q, '1')
      redis.call('hset', p .. ':res:' .. id, 'state', 'PENDING')
      back[#back + 1] = id
    elseif q then
      te_quarantine(p, id, 'message lost while running (evicted or deleted)', iso, ttl)
    end
  end
end
return {back, dups}
