--- unmark: remove a writer mark if it is this waiter's (a waiter that gave up).
--
-- KEYS  mark_key   the lock's writer mark
-- ARGV  token      the waiter's token
--
-- Returns 1 if it removed the mark, else 0.
--
-- Guarantees: never removes another waiter's mark.

local mark_key = KEYS[1]
local token = ARGV[1]

if redis.call('GET', mark_key) == token then return redis.call('DEL', mark_key) end
return 0
