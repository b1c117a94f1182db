--- holders: the functions shared by the scripts that take, count or expire holders.
--
-- Spliced into a script where it says `--- @include "holders"` (redis_scripts.py), after
-- the script's named KEYS and ARGV. Every key name is a parameter: nothing here reads
-- KEYS or ARGV.
--
-- The layout (docs/internals/redis.md): a lock's hash holds its exclusive holder in
-- top-level fields (key token fence cid acquired expires; the hash's PEXPIRE is its
-- expiry), every other holder in a field `h:<token>` = `expires|fence|shared|limit|
-- acquired|cid` (times in µs by the server's clock). The hash lives exactly as long as
-- its latest holder, of any mode.

--- @include "exclusive"

-- A holder table as its `h:<token>` field's value.
local function pack(h)
  return fmt(h.expires) .. '|' .. h.fence .. '|' .. h.shared .. '|' .. h.limit .. '|'
         .. h.acquired .. '|' .. h.cid
end

-- Pushes one wake-up (`value`: its hop count) onto the wake-up list, which lives
-- `wake_ttl` ms.
local function push_wake(wake_key, value, wake_ttl)
  redis.call('RPUSH', wake_key, value)
  redis.call('PEXPIRE', wake_key, wake_ttl)
end

-- Every live holder of the lock, the exclusive one included, as tables {token, expires,
-- fence, shared, limit, acquired, cid[, top]}; deletes the fields of expired holders (and
-- stale top-level fields) on the way.
local function live_holders(lock_key, now)
  local all = redis.call('HGETALL', lock_key)
  local holders, expired, top = {}, {}, {}
  for i = 1, #all, 2 do
    local name, value = all[i], all[i + 1]
    if string.sub(name, 1, 2) == 'h:' then
      local expires, fence, shared, limit, acquired, cid =
        string.match(value, '^(%d+)|(%d+)|(%d)|(%d+)|(%d+)|(.*)$')
      expires = tonumber(expires)
      if expires > now then
        holders[#holders + 1] = {token = string.sub(name, 3), expires = expires, fence = fence,
                                 shared = shared, limit = limit, acquired = acquired, cid = cid}
      else
        expired[#expired + 1] = name
      end
    else
      top[name] = value
    end
  end
  for i = 1, #expired, 1000 do
    redis.call('HDEL', lock_key, unpack(expired, i, math.min(i + 999, #expired)))
  end
  if top.token then
    if tonumber(top.expires) > now then
      holders[#holders + 1] = {token = top.token, expires = tonumber(top.expires), fence = top.fence,
                               shared = '0', limit = '1', acquired = top.acquired,
                               cid = top.cid or '', top = true}
    else
      redis.call('HDEL', lock_key, 'token', 'fence', 'cid', 'acquired', 'expires')
    end
  end
  return holders
end

-- The largest limit among `holders` (1 if none).
local function widest_limit(holders)
  local widest = 1
  for _, h in ipairs(holders) do widest = math.max(widest, tonumber(h.limit)) end
  return widest
end

-- The hash's PEXPIRE becomes its latest holder's expiry; with no holder it is deleted.
local function set_life(lock_key, holders, now)
  local latest = 0
  for _, h in ipairs(holders) do
    if h.expires > latest then latest = h.expires end
  end
  if latest == 0 then
    redis.call('DEL', lock_key)
  else
    redis.call('PEXPIRE', lock_key, math.ceil((latest - now) / 1000))
  end
end

-- release.lua for a shared or semaphore holder: only its own field goes, only while it is
-- alive, and one waiter is woken. Returns 1 if it did, 0 if `token` held nothing.
local function release_field(lock_key, wake_key, token, wake_ttl)
  local field = 'h:' .. token
  if redis.call('HEXISTS', lock_key, field) == 0 then return 0 end
  local now = clock_us()
  local rest, found = {}, false
  for _, h in ipairs(live_holders(lock_key, now)) do
    if h.token == token then found = true else rest[#rest + 1] = h end
  end
  if not found then return 0 end
  redis.call('HDEL', lock_key, field)
  set_life(lock_key, rest, now)
  redis.call('DEL', wake_key)
  push_wake(wake_key, '1', wake_ttl)
  return 1
end

-- extend.lua for a shared or semaphore holder: only its own field changes, only while it
-- is alive; the fencing counter is kept at least as long. Returns the new expiry in µs,
-- or '0' if `token` held nothing.
local function extend_field(lock_key, fence_key, token, ttl, grace)
  local field = 'h:' .. token
  if redis.call('HEXISTS', lock_key, field) == 0 then return '0' end
  local now = clock_us()
  local holders = live_holders(lock_key, now)
  local mine = nil
  for _, h in ipairs(holders) do
    if h.token == token then mine = h end
  end
  if mine == nil then return '0' end
  mine.expires = now + ttl * 1000
  redis.call('HSET', lock_key, field, pack(mine))
  set_life(lock_key, holders, now)
  if redis.call('PTTL', fence_key) < ttl + grace then redis.call('PEXPIRE', fence_key, ttl + grace) end
  return fmt(mine.expires)
end
