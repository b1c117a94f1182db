--- release: free the lock if `token` holds it, and wake one waiter.
--
-- KEYS  lock_key   the lock's hash (its holders)
--       wake_key   its wake-up list
-- ARGV  token      the releasing holder's token
--       wake_ttl   WAKE_TTL_MS: the life of an unconsumed wake-up, ms
--
-- Returns 1 if `token` held the key, else 0.
--
-- Guarantees: only `token`'s holding goes. The exclusive holder's: the hash goes. A
-- shared or semaphore holder's (a token that is not the exclusive one's): only its own
-- field, the others stay (release_field). Either way one fresh wake-up is pushed.

local lock_key = KEYS[1]
local wake_key = KEYS[2]
local token = ARGV[1]
local wake_ttl = ARGV[2]

if redis.call('HGET', lock_key, 'token') == token then  -- the exclusive holder
  redis.call('DEL', lock_key, wake_key)
  redis.call('RPUSH', wake_key, '1')
  redis.call('PEXPIRE', wake_key, wake_ttl)
  return 1
end

-- (Included past the exclusive path, which needs none of it: each included function is a
-- closure made on every run that reaches it.)
--- @include "holders"

return release_field(lock_key, wake_key, token, wake_ttl)
