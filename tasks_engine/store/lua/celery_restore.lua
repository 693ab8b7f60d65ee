-- ARGV: unacked, unacked_index, mutex, token, mutex_ttl_s, ceiling (s: now - visibility timeout), limit,
--   binding key prefix ('<transport prefix>_kombu.binding.'), queue key prefix, separator.
-- kombu's restore of delivered-but-unacked messages, for a fleet with no Celery worker to run it: under
-- kombu's own lock (unacked_mutex, a redis-py lock: token value, expiry), entries older than the
-- visibility timeout go back to the right end of their queue (consumed next), as kombu does. kombu's
-- restore WATCHes the unacked hash, so the two never both restore one entry. Returns how many went back.
local unacked, index, mutex, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not redis.call('set', mutex, token, 'NX', 'EX', ARGV[5]) then return -1 end
local back = 0
local steps = {0, 3, 6, 9}
local function step(priority)
  local s = 0
  for _, v in ipairs(steps) do if priority >= v then s = v end end
  return s
end
local function queues_for(ex, rk)
  if ex == '' then return {rk} end
  local found = {}
  for _, member in ipairs(redis.call('smembers', ARGV[8] .. ex)) do
    local mrk, q = string.match(member, '^(.-)' .. ARGV[10] .. '.-' .. ARGV[10] .. '(.*)$')
    if q and (mrk == rk or mrk == '#' or mrk == '*') then found[#found + 1] = q end
  end
  return found
end
for _, tag in ipairs(redis.call('zrangebyscore', index, '-inf', ARGV[6], 'LIMIT', 0, tonumber(ARGV[7]))) do
  local entry = redis.call('hget', unacked, tag)
  if not entry then redis.call('zrem', index, tag) end
  local raw, ex, rk = string.match(entry or '', '^%[(.*),%s*"([^"]*)",%s*"([^"]*)"%]$')
  local ok, env = pcall(cjson.decode, raw or '')
  if ok and type(env) == 'table' then  -- else left for kombu's restore: nothing is dropped here
    redis.call('hdel', unacked, tag)
    redis.call('zrem', index, tag)
    do
      local props = type(env.properties) == 'table' and env.properties or {}
      local priority = tonumber(props.priority) or 0
      priority = math.max(0, math.min(9, priority))
      for _, q in ipairs(queues_for(ex, rk)) do
        local s = step(priority)
        local key = ARGV[9] .. q
        if s > 0 then key = key .. ARGV[10] .. s end
        redis.call('rpush', key, raw)
      end
      back = back + 1
    end
  end
end
if redis.call('get', mutex) == token then redis.call('del', mutex) end
return back
