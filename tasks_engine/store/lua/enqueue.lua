-- uses: lib
-- ARGV: prefix, now, then groups of (id, msg, queue, priority, eta_ms, nx). Returns one flag per
-- message: 1 placed, 0 skipped (nx and already known). One call may carry several callers' messages
-- (store/batching.py).
local placed = {}
for i = 3, #ARGV, 6 do
  placed[#placed + 1] = te_enqueue(ARGV[1], ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[2], ARGV[i+5])
end
return placed
