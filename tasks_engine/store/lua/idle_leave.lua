-- ARGV: base, worker_id. Ends the worker's idle registration (it is stopping) and returns the ids of
-- the jobs handed to it that it has not taken; the caller puts them back (requeue.lua, 'ids' mode).
local p, wid = ARGV[1], ARGV[2]
local lease_ms, queues = string.match(redis.call('hget', K_IDLE_INFO, wid) or '', '^(%d+)|(.*)$')
if queues then
  for name in string.gmatch(queues, '[^\n]+') do redis.call('zrem', p .. ':idle:' .. name, wid) end
end
redis.call('hdel', K_IDLE_INFO, wid)
local box = p .. ':handoff:' .. wid
local ids = {}
for _, item in ipairs(redis.call('lrange', box, 0, -1)) do
  local id = string.match(item, '^([^\n]*)\n')
  if id then ids[#ids + 1] = id end
end
redis.call('del', box)
return ids
