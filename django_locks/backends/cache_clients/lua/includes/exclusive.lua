--- exclusive: the server's clock, and taking a lock exclusively with the next fencing
-- token: what acquire.lua needs, and all it includes (holders.lua includes it too).
--
-- Spliced in where a script says `--- @include "exclusive"` (redis_scripts.py). Every
-- key name is a parameter: nothing here reads KEYS or ARGV.

-- The server's clock, µs.
local function clock_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- A whole number as Redis stores it (no exponent).
local function fmt(n) return string.format('%.0f', n) end

-- The next fencing token, max(last + 1, now), stored in the counter for `ttl + grace` ms:
-- tokens rise across releases, expiries and restarts. Returns it as a string.
local function advance_fence(fence_key, now, ttl, grace)
  local fence_s = fmt(math.max(tonumber(redis.call('GET', fence_key) or 0) + 1, now))
  redis.call('SET', fence_key, fence_s, 'PX', ttl + grace)
  return fence_s
end

-- Writes `token` as the exclusive holder (top-level fields), the hash living `ttl` ms,
-- and clears stale wake-ups. Returns {fencing token, acquired µs}.
local function take_exclusive(lock_key, wake_key, key, token, cid, fence_s, now, ttl)
  local now_s = fmt(now)
  redis.call('HSET', lock_key, 'key', key, 'token', token, 'fence', fence_s,
             'cid', cid, 'acquired', now_s, 'expires', fmt(now + ttl * 1000))
  redis.call('PEXPIRE', lock_key, ttl)
  redis.call('DEL', wake_key)
  return {fence_s, now_s}
end
