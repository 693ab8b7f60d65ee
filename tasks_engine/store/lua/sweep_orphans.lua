-- uses: lib
-- ARGV: prefix, now_iso, ids...
local p = ARGV[1]
local moved = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local msg = redis.call('get', p .. ':msg:' .. id)
  if msg then
    local q = string.match(msg, '"queue":"(.-)"')
    local queued = q and redis.call('zscore', p .. ':q:' .. q, id)
    local waiting = redis.call('zscore', K_DELAYED, id) or redis.call('zscore', K_ACTIVE, id)
    if not queued and not waiting then
      redis.call('lpush', K_DEAD, cjson.encode({id = id, reason = 'orphaned message: in no queue', at = ARGV[2],
        raw = te_text(string.sub(msg, 1, 4096))}))
      redis.call('del', p .. ':msg:' .. id)
      moved[#moved + 1] = id
    end
  end
end
return moved
