--- acquire: an exclusive attempt that has no writer mark to clear (the plain path).
--
-- KEYS  lock_key   the lock's hash (its holders)
--       fence_key  its fencing counter
--       wake_key   its wake-up list
-- ARGV  key        the lock's key, as the caller named it
--       token      this attempt's owner token
--       ttl        the lock's life, ms
--       cid        the correlation id ('' for none)
--       grace      FENCE_GRACE_MS: how much longer than the lock its counter lives, ms
--
-- Returns {fencing token, acquired µs} if taken, else {'0', the holders' PTTL ms}.
--
-- Guarantees: taken only if no one holds the key (the hash exists exactly while some
-- holder of any mode is alive: an expired lock's hash is gone), with a millisecond
-- expiry; the fencing counter advances to max(last + 1, server clock µs) in the same
-- step; stale wake-ups are cleared. If `token` already holds the key (an earlier attempt
-- of the same call won but its reply was lost: a failover, a socket timeout), that
-- acquisition is returned as it is, so a retried attempt is not blocked by itself.

local lock_key = KEYS[1]
local fence_key = KEYS[2]
local wake_key = KEYS[3]
local key = ARGV[1]
local token = ARGV[2]
local ttl = tonumber(ARGV[3])
local cid = ARGV[4]
local grace = tonumber(ARGV[5])

local remaining = redis.call('PTTL', lock_key)
if remaining ~= -2 then
  local mine = redis.call('HMGET', lock_key, 'token', 'fence', 'acquired')
  if mine[1] == token then return {mine[2], mine[3]} end
  return {'0', tostring(remaining)}
end

-- (Included only here, past the refusal: each included function is a closure made on
-- every run that reaches it.)
--- @include "exclusive"

local now = clock_us()
local fence_s = advance_fence(fence_key, now, ttl, grace)
return take_exclusive(lock_key, wake_key, key, token, cid, fence_s, now, ttl)
