-- uses: lib
-- ARGV: prefix, chord_id, task_id, index, ok, result_json, exc_message, traceback, now_ms, now_iso, ttl
return te_chord_part(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10],
  ARGV[11])
