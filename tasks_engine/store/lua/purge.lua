-- ARGV: prefix, queue. Deletes every ready job of the queue and its message in one step, so a job
-- enqueued meanwhile is either purged with its message or kept whole, never orphaned.
local p, q = ARGV[1], ARGV[2]
local key = p .. ':q:' .. q
local ids = redis.call('zrange', key, 0, -1)
for i = 1, #ids, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #ids) do chunk[#chunk + 1] = p .. ':msg:' .. ids[j] end
  redis.call('del', unpack(chunk))
end
redis.call('del', key)
return #ids
