-- uses: lib
-- ARGV: prefix, now_ms, then groups of (dead entry JSON, id, msg, queue, priority). Takes each entry off
-- the dead letters and enqueues its message again, in one step: a requeued dead letter is never both
-- lost and kept, nor queued twice. Returns how many were requeued (an entry already gone is skipped).
local p, now = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 5 do
  if redis.call('lrem', K_DEAD, 1, ARGV[i]) == 1 then
    local rkey = p .. ':res:' .. ARGV[i + 1]
    redis.call('hset', rkey, 'state', 'PENDING', 'delivered', '0')
    redis.call('hdel', rkey, 'exc_type', 'exc_module', 'exc_message', 'exc_args', 'traceback', 'date_done')
    te_enqueue(p, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], '0', now, '0')
    n = n + 1
  end
end
return n
