--- extend: reset `token`'s holding to `ttl` ms from now, if it still holds the key.
--
-- KEYS  lock_key   the lock's hash (its holders)
--       fence_key  its fencing counter
-- ARGV  token      the holder's token
--       ttl        its new life, ms
--       grace      FENCE_GRACE_MS: how much longer than the lock its counter lives, ms
--
-- Returns the new expiry in µs (server clock), or '0' if `token` holds nothing.
--
-- Guarantees: only a live holding is extended; the fencing counter lives at least as
-- long, plus grace. The exclusive holder's top-level fields and the hash's life; a shared
-- or semaphore holder's own field alone (extend_field), the hash then living until its
-- latest holder's expiry.

local lock_key = KEYS[1]
local fence_key = KEYS[2]
local token = ARGV[1]
local ttl = tonumber(ARGV[2])
local grace = tonumber(ARGV[3])

--- @include "exclusive"

if redis.call('HGET', lock_key, 'token') == token then  -- the exclusive holder
  local expires = fmt(clock_us() + ttl * 1000)
  redis.call('HSET', lock_key, 'expires', expires)
  redis.call('PEXPIRE', lock_key, ttl)
  redis.call('PEXPIRE', fence_key, ttl + grace)
  return expires
end

-- (Included past the exclusive path: each included function is a closure made on every
-- run that reaches it.)
--- @include "holders"

return extend_field(lock_key, fence_key, token, ttl, grace)
