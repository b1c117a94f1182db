--- force_release: free the lock whoever holds it.
--
-- KEYS  lock_key   the lock's hash (its holders)
--       wake_key   its wake-up list
--       mark_key   its writer mark
-- ARGV  wake_ttl   WAKE_TTL_MS: the life of an unconsumed wake-up, ms
--
-- Returns 1 if something was held, else 0.
--
-- Guarantees: every holder goes (they are all in the hash), and the writer mark; if
-- something was held, one fresh wake-up is pushed.

local lock_key = KEYS[1]
local wake_key = KEYS[2]
local mark_key = KEYS[3]
local wake_ttl = ARGV[1]

redis.call('DEL', mark_key)
if redis.call('DEL', lock_key) == 0 then return 0 end
redis.call('DEL', wake_key)
redis.call('RPUSH', wake_key, '1')
redis.call('PEXPIRE', wake_key, wake_ttl)
return 1
