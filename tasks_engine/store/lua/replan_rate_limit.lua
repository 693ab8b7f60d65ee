-- ARGV: prefix, task, first ('1': also install the new limit and reset the arrival time), value ('' = none)
local p, task = ARGV[1], ARGV[2]
if ARGV[3] == '1' then
  if ARGV[4] == '' then
    redis.call('hdel', K_RATE_LIMITS, task)
  else
    redis.call('hset', K_RATE_LIMITS, task, ARGV[4])
  end
  redis.call('del', p .. ':rl:' .. task)
end
local ids = redis.call('spop', p .. ':rl-pass:' .. task, 1000)
local woken = {}
for _, id in ipairs(ids) do
  local info = redis.call('hget', K_DQ, id)
  if info then
    local sep = string.find(info, '|', 1, true)
    local q = string.sub(info, 1, sep - 1)
    redis.call('zrem', K_DELAYED, id)
    redis.call('hdel', K_DQ, id)
    redis.call('zadd', p .. ':q:' .. q, string.sub(info, sep + 1), id)
    if not woken[q] then
      woken[q] = true
      redis.call('lpush', p .. ':wake:' .. q, '1')
    end
  end
end
return #ids
