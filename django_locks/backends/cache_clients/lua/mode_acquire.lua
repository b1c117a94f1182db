--- mode_acquire: one attempt in any mode (shared, a semaphore, or exclusive by a waiter).
--
-- KEYS  lock_key   the lock's hash (its holders)
--       fence_key  its fencing counter
--       wake_key   its wake-up list
--       mark_key   its writer mark
-- ARGV  key        the lock's key, as the caller named it
--       token      this attempt's owner token
--       ttl        the holder's life, ms
--       cid        the correlation id ('' for none)
--       grace      FENCE_GRACE_MS: how much longer than the lock its counter lives, ms
--       shared     '1' for a shared (read) attempt, else '0'
--       limit      N of a semaphore (1: exclusive or shared)
--       waiter     '1' if the attempt is a waiter's (it may set the mark), else '0'
--       mark_ms    WRITER_MARK_MS: the writer mark's life, ms
--       wake_ttl   WAKE_TTL_MS: the life of an unconsumed wake-up, ms
--       hops       the hop count of the wake-up that woke this waiter (0 if none)
--       max_hops   WAKE_HOPS: how many times one wake-up is passed on at most
--
-- Returns {fencing token, acquired µs} if admitted, else {'0', ms until it could be by
-- expiry alone}.
--
-- Guarantees, atomically on the server's clock. Admission (values.Mode): a non-shared
-- attempt with limit N while fewer than N live holders hold the key; a shared one while no
-- live non-shared holder does and no writer mark is alive. Refused: a non-shared waiter
-- sets the mark to its token for mark_ms; a waiter woken by a wake-up it cannot use passes
-- it on (hop count + 1, up to max_hops) when another might use it: a shared one held back
-- by the mark alone (the writer that set it may proceed), any one while there are fewer
-- holders than the largest limit among them (a semaphore waiter may proceed). Admitted:
-- clears the mark if it is its own and advances the fencing counter as acquire.lua does;
-- an exclusive holder is written as acquire.lua writes it (stale wake-ups cleared), any
-- other into its own `h:<token>` field (an exclusive holder it joins is moved into its
-- field first), the hash living until its latest holder's expiry; an admitted waiter that
-- leaves room for more passes a wake-up on if none is pending. A token that already holds
-- the key gets its acquisition back (as in acquire.lua).

local lock_key = KEYS[1]
local fence_key = KEYS[2]
local wake_key = KEYS[3]
local mark_key = KEYS[4]
local key = ARGV[1]
local token = ARGV[2]
local ttl = tonumber(ARGV[3])
local cid = ARGV[4]
local grace = tonumber(ARGV[5])
local shared = ARGV[6] == '1'
local limit = tonumber(ARGV[7])
local waiter = ARGV[8] == '1'
local mark_ms = ARGV[9]
local wake_ttl = ARGV[10]
local hops = tonumber(ARGV[11])
local max_hops = tonumber(ARGV[12])

--- @include "holders"

local now = clock_us()
local exclusive = not shared and limit == 1

-- Admitted: the mark goes if it is this waiter's; the next fencing token.
local function admitted()
  if not shared and redis.call('GET', mark_key) == token then redis.call('DEL', mark_key) end
  return advance_fence(fence_key, now, ttl, grace)
end

if exclusive and redis.call('EXISTS', lock_key) == 0 then  -- an exclusive attempt on a free key
  return take_exclusive(lock_key, wake_key, key, token, cid, admitted(), now, ttl)
end
local holders = live_holders(lock_key, now)
for _, h in ipairs(holders) do
  if h.token == token then return {h.fence, h.acquired} end
end
local wait_us = nil
local widest = widest_limit(holders)
if shared then
  for _, h in ipairs(holders) do
    if h.shared == '0' and (wait_us == nil or h.expires - now > wait_us) then
      wait_us = h.expires - now
    end
  end
  if wait_us == nil then widest = math.huge end
  local mark = redis.call('PTTL', mark_key)
  if mark > 0 then wait_us = math.max(wait_us or 0, mark * 1000) end
elseif #holders >= limit then
  local expiries = {}
  for i, h in ipairs(holders) do expiries[i] = h.expires end
  table.sort(expiries)
  wait_us = expiries[#holders - limit + 1] - now
end
if wait_us ~= nil then
  if waiter and not shared then redis.call('SET', mark_key, token, 'PX', mark_ms) end
  if hops > 0 and hops < max_hops and #holders < widest then
    push_wake(wake_key, tostring(hops + 1), wake_ttl)
  end
  return {'0', fmt(math.floor(wait_us / 1000))}
end
local fence_s = admitted()
if exclusive then return take_exclusive(lock_key, wake_key, key, token, cid, fence_s, now, ttl) end
for _, h in ipairs(holders) do
  if h.top then
    redis.call('HDEL', lock_key, 'token', 'fence', 'cid', 'acquired', 'expires')
    redis.call('HSET', lock_key, 'h:' .. h.token, pack(h))
  end
end
local mine = {expires = now + ttl * 1000, fence = fence_s, shared = shared and '1' or '0',
              limit = fmt(limit), acquired = fmt(now), cid = cid}
redis.call('HSET', lock_key, 'key', key, 'h:' .. token, pack(mine))
holders[#holders + 1] = mine
set_life(lock_key, holders, now)
if waiter and (shared or #holders < limit) and redis.call('LLEN', wake_key) == 0 then
  push_wake(wake_key, '1', wake_ttl)
end
return {fence_s, mine.acquired}
