-- Shared helpers, prepended to the scripts that start with '-- uses: lib'.
local function te_enqueue(p, id, msg, q, prio, eta, now, nx)
  local mkey = p .. ':msg:' .. id
  if nx == '1' then
    if redis.call('exists', mkey) == 1 then return 0 end
    local st = redis.call('hget', p .. ':res:' .. id, 'state')
    if st == 'SUCCESS' or st == 'FAILURE' or st == 'REVOKED' then return 0 end
  end
  local seq = redis.call('incr', p .. ':seq')
  local score = string.format('%d', tonumber(prio) * 1000000000000 + seq)
  redis.call('set', mkey, msg)
  if tonumber(eta) > tonumber(now) then
    redis.call('zadd', p .. ':delayed', eta, id)
    redis.call('hset', p .. ':dq', id, q .. '|' .. score)
    redis.call('lpush', p .. ':wake:' .. q, '1')  -- an idle worker re-reads the next due time
    redis.call('ltrim', p .. ':wake:' .. q, 0, 999)
  else
    redis.call('zadd', p .. ':q:' .. q, score, id)
    redis.call('lpush', p .. ':wake:' .. q, '1')
    redis.call('ltrim', p .. ':wake:' .. q, 0, 999)
  end
  return 1
end
