-- uses: lib
-- ARGV: prefix, id, reason, now_iso, result_ttl. Takes a job the worker cannot even read off the books
-- (see te_quarantine): a dead letter, a FAILURE record, nothing left to be delivered again.
te_quarantine(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
