-- uses: lib
-- ARGV: prefix, now, then groups of (id, msg, queue, priority, eta_ms, nx)
local n = 0
for i = 3, #ARGV, 6 do
  n = n + te_enqueue(ARGV[1], ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[2], ARGV[i+5])
end
return n
