-- uses: lib
-- ARGV: prefix, now, then one argument per message: "id\nqueue\npriority\neta_ms\nnx\n" followed by the
-- message (Enqueue.packed). Returns one flag per message: 1 placed, 0 skipped (nx and already known).
-- One call may carry several callers' messages (store/batching.py); every one is read before any is placed.
local items = {}
for i = 3, #ARGV do
  local id, q, prio, eta, nx, at = string.match(ARGV[i], '^([^\n]+)\n([^\n]+)\n(%d)\n(%d+)\n([01])\n()')
  if not id then return redis.error_reply('enqueue: argument ' .. (i - 2) .. ' is not a packed message') end
  items[#items + 1] = {id, string.sub(ARGV[i], at), q, prio, eta, nx}
end
local placed = {}
te_batch_begin(#items)  -- their writes are gathered and made once for all at the end (lib.lua)
for _, m in ipairs(items) do
  placed[#placed + 1] = te_enqueue(ARGV[1], m[1], m[2], m[3], m[4], m[5], ARGV[2], m[6])
end
te_batch_flush(ARGV[1])
return placed
