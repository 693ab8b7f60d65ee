-- uses: lib
-- KEYS[12], KEYS[13]: claim key, last-run key. ARGV: prefix, claim ttl, tick_ms, id, msg, queue, priority, now
if not redis.call('set', KEYS[12], ARGV[4], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('set', KEYS[13], ARGV[3])
te_enqueue(ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7], '0', ARGV[8], '0')
return 1
