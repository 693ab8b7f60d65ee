-- uses: lib
-- ARGV: prefix, n, now (s, the host clock kombu also scores with), now_iso, unacked, unacked_index, then
-- pairs (native queue key, Celery queue name), then triples (Celery list key, queue name, '') in the order
-- to consume them (each queue's best priority step first).
-- Takes up to n - (jobs already waiting in the native queues) Celery messages: each leaves its list and
-- enters kombu's unacked hash and unacked_index zset in this one script, as ``[envelope, exchange,
-- routing_key]`` under its delivery tag, so it is never in neither place and kombu's restore (or ours,
-- celery_restore.lua) brings it back if this worker dies before celery_accept.lua takes it over.
-- An entry that is not a JSON envelope with a delivery tag cannot be kept there (kombu's restore would
-- choke on it): it becomes a dead letter at once. Returns {tag, envelope, queue} per message.
local p, n, now, iso, unacked, index = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local i = 7
local backlog = 0
while ARGV[i] ~= '--' do
  backlog = backlog + redis.call('zcard', ARGV[i])
  i = i + 2
end
i = i + 1
local out = {}
local room = n - backlog
while i + 1 <= #ARGV and #out < room do
  local key, queue = ARGV[i], ARGV[i + 1]
  local raw = redis.call('rpop', key)
  if not raw then
    i = i + 2
  else
    local ok, env = pcall(cjson.decode, raw)
    local props = ok and type(env) == 'table' and env.properties
    local tag = type(props) == 'table' and props.delivery_tag
    if type(tag) == 'string' and tag ~= '' then
      local ex, rk = '', queue
      local info = props.delivery_info
      if type(info) == 'table' then
        if type(info.exchange) == 'string' then ex = info.exchange end
        if type(info.routing_key) == 'string' then rk = info.routing_key end
      end
      redis.call('hset', unacked, tag, '[' .. raw .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
      redis.call('zadd', index, now, tag)
      out[#out + 1] = {tag, raw, queue}
    else
      local reason = 'Celery message is not a JSON envelope with a delivery tag'
      if not ok then reason = 'Celery message is not JSON' end
      redis.call('lpush', K_DEAD, cjson.encode({id = '', reason = te_text(reason), at = iso,
        raw = te_text(string.sub(raw, 1, 65536)), truncated = #raw > 65536, celery_queue = te_text(queue)}))
      redis.call('ltrim', K_DEAD, 0, 9999)
    end
  end
end
return out
