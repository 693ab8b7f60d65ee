-- uses: lib
-- ARGV: base, result_ttl, now_ms, now_iso, plan (JSON: later, chords, groups, enqueues, parts; see
-- store/writes.py: Writes.payload). Writes a plan made outside a completion (a client's delay() of a
-- canvas, a failed chord header's follow-ups) in one step.
te_apply(ARGV[1], cjson.decode(ARGV[5]), ARGV[2], ARGV[3], ARGV[4])
return 1
