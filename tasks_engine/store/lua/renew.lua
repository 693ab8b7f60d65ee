-- uses: lib
-- ARGV: prefix, worker_id, lease_ms, ids... Extends the leases of the jobs this worker still holds, on
-- Redis's clock. A job another worker took over (this one was paused past its lease) is left alone.
local p, wid = ARGV[1], ARGV[2]
local deadline = string.format('%d', te_time_ms() + tonumber(ARGV[3]))
local renewed = 0
for i = 4, #ARGV do
  local _, _, owner = te_place(redis.call('hget', p .. ':inflight', ARGV[i]), true)
  if owner == wid then
    redis.call('zadd', p .. ':active', 'XX', deadline, ARGV[i])
    renewed = renewed + 1
  end
end
return renewed
