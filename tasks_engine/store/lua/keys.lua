-- Prepended to every script. KEYS[1..11] are the app's own keys (store/keys.py STATIC_KEYS), declared
-- so a Cluster routes the script to their slot; the per-job keys a script builds from ARGV[1] (the
-- app's '{prefix}' hash tag) hash to that same slot. KEYS[11] (slot-guard) is never touched: it exists
-- only so a Cluster refuses the script while the slot migrates (store/keys.py).
local K_SEQ, K_DELAYED, K_DQ, K_ACTIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_INFLIGHT, K_DEAD, K_FAILED, K_RATE_LIMITS = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local K_IDLE_INFO, K_RL_TASKS = KEYS[9], KEYS[10]
