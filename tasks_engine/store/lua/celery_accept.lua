-- uses: lib
-- ARGV: prefix, now_ms, unacked, unacked_index, result_ttl, then per message 4 arguments:
--   delivery tag, 'job' or 'dead', the packed engine message (as enqueue.lua reads it) or the dead-letter
--   entry, the Celery result key ('' when no id could be read) and, for 'dead', the FAILURE record (for
--   'job', the time now, for a REVOKED record should the job have been revoked before it came here).
-- Takes claimed Celery messages over, each atomically: off kombu's unacked books and into the engine's
-- queue (nx: an id already queued, running or finished is not placed twice), or dead-lettered with its
-- FAILURE record. A message whose unacked entry is gone was restored to its queue meanwhile (a
-- visibility timeout shorter than the hand-over): it is skipped, so it runs once, from there.
-- Returns 1 per message taken over, 0 per message skipped.
local p, now_ms, unacked, index, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out = {}
for i = 6, #ARGV, 5 do
  local tag, kind, data, rkey, rec = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if redis.call('hdel', unacked, tag) == 1 then
    redis.call('zrem', index, tag)
    if kind == 'job' then
      local id, q, prio, eta, nx, at = string.match(data, '^([^\n]+)\n([^\n]+)\n(%d)\n(%d+)\n([01])\n()')
      if not id then return redis.error_reply('celery_accept: not a packed message') end
      if te_enqueue(p, id, string.sub(data, at), q, prio, eta, now_ms, nx) == 0
          and redis.call('hget', p .. ':res:' .. id, 'state') == 'REVOKED' then
        te_celery_revoked(rkey, id, 'revoked', rec, ttl)  -- revoked before it was taken over
      end
    else
      redis.call('lpush', K_DEAD, data)
      redis.call('ltrim', K_DEAD, 0, 9999)
      if rkey ~= '' then te_celery_store(rkey, rec, ttl) end
    end
    out[#out + 1] = 1
  else
    redis.call('zrem', index, tag)
    out[#out + 1] = 0
  end
end
return out
