--- read: a lock's holders, its remaining life and the server's clock, in one command.
--
-- KEYS  lock_key   the lock's hash (its holders)
-- ARGV  (none)
--
-- Returns {HGETALL of the hash, its PTTL, TIME seconds, TIME microseconds}
-- (RedisLockClient._infos reads it).
--
-- Guarantees: one command on one key (a cluster client routes it like any single-key
-- command); which holders are live is then decided to the microsecond by the server's
-- clock, as the admission scripts decide it.

local lock_key = KEYS[1]

local t = redis.call('TIME')
return {redis.call('HGETALL', lock_key), redis.call('PTTL', lock_key), t[1], t[2]}
