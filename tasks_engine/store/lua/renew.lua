-- uses: lib
-- ARGV: prefix, worker_id, lease_ms, ids... Extends the leases of the jobs this worker still holds, on
-- Redis's clock. A job another worker took over (this one was paused past its lease) is left alone.
local p, wid = ARGV[1], ARGV[2]
local deadline = string.format('%d', te_time_ms() + tonumber(ARGV[3]))
-- Returns the ids among them revoked with terminate=True: the worker stops those (the pub/sub command
-- may have been missed, e.g. sent while the job was being claimed).
local stop = {}
for i = 4, #ARGV do
  local _, _, owner = te_place(redis.call('hget', K_INFLIGHT, ARGV[i]), true)
  if owner == wid then
    redis.call('zadd', K_ACTIVE, 'XX', deadline, ARGV[i])
  end
  if redis.call('get', p .. ':revoked:' .. ARGV[i]) == 'terminate' then stop[#stop + 1] = ARGV[i] end
end
return stop
