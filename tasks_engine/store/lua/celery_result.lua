-- uses: lib
-- ARGV: Celery result key, record (JSON), ttl. Returns 1 when written, 0 when a SUCCESS was there.
return te_celery_store(ARGV[1], ARGV[2], ARGV[3])
