--- pass_on: give back the wake-up an abandoned wait may have taken.
--
-- KEYS  lock_key   the lock's hash (its holders)
--       wake_key   its wake-up list
-- ARGV  wake_ttl   WAKE_TTL_MS: the life of an unconsumed wake-up, ms
--
-- Returns 1 if it pushed a wake-up, else 0.
--
-- Guarantees: a waiter cancelled (or not unblocked) while its BLPOP was in flight may have
-- taken a release's wake-up with it. If none is pending and another waiter might now
-- proceed (the key is free, has room left under the largest limit among its holders, or
-- only shared holders: mode_acquire.lua's pass-on rule), one goes back, so the next
-- waiter does not sleep through that release. While an exclusive holder or a full
-- semaphore holds the key nothing is pushed: a cancelled waiter leaves nothing behind.

local lock_key = KEYS[1]
local wake_key = KEYS[2]
local wake_ttl = ARGV[1]

--- @include "holders"

if redis.call('EXISTS', wake_key) == 1 then return 0 end
local holders = live_holders(lock_key, clock_us())
local only_shared = true
for _, h in ipairs(holders) do
  if h.shared ~= '1' then only_shared = false end
end
if #holders > 0 and #holders >= widest_limit(holders) and not only_shared then return 0 end
push_wake(wake_key, '1', wake_ttl)
return 1
