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
