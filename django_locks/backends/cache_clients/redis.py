"""Redis used natively, through the raw redis-py client of django-redis or of Django's
own ``RedisCache``.

Acquire, release, extend and force release are one round trip each: one Lua script, each
a named constant below with what it guarantees. A waiting acquirer blocks on a wake-up
list that release pushes to (BLPOP), bounded by the holder's remaining life, so it is
woken by a release at once and by an expiry on time. All keys of one lock share a Redis
Cluster hash slot, whatever the key (see :func:`hash_tag`). Keys go through the cache's
key function (KEY_PREFIX, VERSION).

The raw client may be a ``redis.Redis`` (one server, or a Sentinel-managed master) or a
``redis.cluster.RedisCluster`` (:mod:`django_locks.cluster`): only commands both have are
used, each on the keys of one lock, so a cluster sends each to the node of that lock's
slot.

Shared locks and semaphores, the layout. A lock's hash holds its exclusive holder as it
always did (fields ``key token fence cid acquired expires``, the key's PEXPIRE being its
expiry), so the exclusive acquire script, which refuses whenever the hash exists, needs
no extra command. Every other holder (shared, or of a semaphore) is one field of the same
hash, ``h:<token>`` -> ``expires|fence|shared|limit|acquired|cid`` (times in µs by the
server's clock), and the key's PEXPIRE is the latest holder's expiry: the hash exists
exactly while some holder is alive, whatever its mode. The top-level fields are only ever
a holder alone (an exclusive acquisition is admitted only among no holders); when a
semaphore acquisition joins it, it is first moved into its own ``h:`` field. Scripts
prune expired ``h:`` fields whenever they read them. The writer mark (a waiting
non-shared acquirer holds new shared acquisitions back) is a key of its own,
``...:{TAG}:mark`` (the waiter's token, PX ``WRITER_MARK_MS``): as a field it would keep the
hash alive and block exclusive acquisitions. Every key of a lock, the mark included, is
under the lock's hash tag, so in one cluster slot.

Which script: an exclusive attempt runs ACQUIRE_SCRIPT, unchanged (the hash exists while
any holder lives, so it refuses exactly when an exclusive acquisition must be refused,
and PTTL is then the last holder's life); every other attempt runs MODE_ACQUIRE_SCRIPT,
and so does an exclusive waiter once refused (it must set, renew, then clear the writer
mark). RELEASE_SCRIPT and EXTEND_SCRIPT keep their exclusive path as it was and only fall
back to the holder's own field when the token is not the exclusive holder's.

Wake-ups: every release pushes one wake-up (as an exclusive release always did); an
admitted waiter that leaves room for more (a shared holder, a semaphore below its limit)
passes one wake-up on if the list is empty, so a writer's release wakes every waiting
reader, one after the other, each within its own admission's round trip. A woken waiter
that cannot proceed passes its wake-up on when another waiter might (a reader held back
by a writer's mark alone: the writer; fewer holders than a holder's limit: a semaphore
waiter), at most ``WAKE_HOPS`` times per wake-up (the hop count is the value pushed), so
the one that can proceed is reached and waiters that all cannot stop passing it round.
Beyond that, a non-shared waiter re-attempts every ``WRITER_RECHECK_MS`` anyway, a
shared one every ``MAX_BLOCK_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

from django_locks.backends.cache_clients.base import CacheLockClient, LockKeys
from django_locks.exceptions import LockBackendError
from django_locks.values import WRITER_MARK_MS, Attempt, LockInfo, Mode

logger = logging.getLogger("django_locks")

try:  # redis is an optional dependency (the "redis" extra); without it no cache is Redis
    import redis.asyncio as redis_asyncio
    from redis import Redis
    from redis.cluster import RedisCluster
    from redis.connection import BlockingConnectionPool
    from redis.exceptions import (
        AskError,
        BusyLoadingError,
        ClusterDownError,
        MovedError,
        NoScriptError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        ResponseError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover
    redis_asyncio = Redis = RedisCluster = None
    class RedisError(Exception):  # type: ignore[no-redef]
        pass

    class NoScriptError(RedisError):  # type: ignore[no-redef]
        pass

    class RedisClusterException(Exception):  # type: ignore[no-redef]
        pass

    RedisConnectionError = RedisTimeoutError = BusyLoadingError = ClusterDownError = RedisError
    ReadOnlyError = TryAgainError = SlotNotCoveredError = RedisError
    ResponseError = MovedError = AskError = RedisError
    BlockingConnectionPool = None

try:
    from django_redis.cache import RedisCache as DjangoRedisPackageCache
except ImportError:  # pragma: no cover - django-redis not installed
    DjangoRedisPackageCache = None

if TYPE_CHECKING:
    from django_locks.backends.cache import CacheLock

#: A fencing counter outlives its lock by this much (ms). After that the server clock
#: (microseconds) is the floor of the next token, which is above every earlier one.
FENCE_GRACE_MS = 60_000
#: Life of an unconsumed wake-up (ms): covers a waiter between two attempts.
WAKE_TTL_MS = 5_000
#: Longest single block of a waiter (s), a bound for a lost wake-up.
MAX_BLOCK_SECONDS = 0.5
#: How many times one wake-up is passed on by woken waiters that cannot proceed (see
#: MODE_ACQUIRE_SCRIPT): enough to reach a waiter that can behind a few that cannot, few
#: enough that waiters that all cannot stop passing it round soon.
WAKE_HOPS = 8

#: The wake-up a waiter of this context (thread, or asyncio task: sync_to_async runs the
#: next attempt in a copy of it) was woken by: (wake-up list, its hop count), or None.
_woken: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "django_locks_woken", default=None
)
#: Redis ends a blocking command's timeout up to one server tick (1/hz, 100 ms by
#: default) late; a block is kept this much shorter than the client's socket timeout.
BLOCK_TIMEOUT_SLACK = 0.15

#: Failures that a failover or a restart causes and that end by themselves: a waiter
#: retries its attempts through them until its own deadline (BaseLock._retryable). The
#: unreachable node (connection refused or reset, socket timeout), a cluster without a
#: master for a slot (CLUSTERDOWN, an uncovered slot, TRYAGAIN during resharding), a
#: server still loading its data, and a demoted master refusing writes (READONLY).
#: Everything else (a script error, a bad configuration) fails the call at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
    ReadOnlyError,
    OSError,
)

# ----------------------------------------------------------------------------- Lua scripts

# Takes the lock only if no one holds it (an expired lock's hash is gone), with a
# millisecond expiry, and advances the key's fencing counter to max(last + 1, server
# clock in µs) in the same step, so tokens rise across releases, expiries and restarts.
# Clears stale wake-ups. Returns {fencing token, acquired µs} or {"0", holder's pttl}.
# If ARGV[2], this attempt's owner token, already holds the lock, an earlier attempt of
# the same call won but its reply was lost (a failover, a socket timeout): that
# acquisition is returned as it is, so a retried attempt is not blocked by itself.
ACQUIRE_SCRIPT = """
local remaining = redis.call('PTTL', KEYS[1])
if remaining ~= -2 then
  local mine = redis.call('HMGET', KEYS[1], 'token', 'fence', 'acquired')
  if mine[1] == ARGV[2] then return {mine[2], mine[3]} end
  return {'0', tostring(remaining)}
end
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local fence = math.max(tonumber(redis.call('GET', KEYS[2]) or 0) + 1, now_us)
local fence_s = string.format('%.0f', fence)
local now_s = string.format('%.0f', now_us)
local ttl = tonumber(ARGV[3])
redis.call('SET', KEYS[2], fence_s, 'PX', ttl + tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'token', ARGV[2], 'fence', fence_s,
           'cid', ARGV[4], 'acquired', now_s,
           'expires', string.format('%.0f', now_us + ttl * 1000))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('DEL', KEYS[3])
return {fence_s, now_s}
"""

# The functions of the scripts that see every holder of a lock (prepended to them). Key
# names are passed in; in RELEASE_SCRIPT and EXTEND_SCRIPT, KEYS[1] is the lock's hash and
# KEYS[2] its wake-up list or fencing counter.
#   live_holders: every live holder, the exclusive one included, as tables; deletes the
#     fields of expired holders (and stale top-level fields) on the way.
#   set_life: the hash's PEXPIRE becomes the latest holder's expiry; no holder: deleted.
#   release_field / extend_field: RELEASE_SCRIPT / EXTEND_SCRIPT for a shared or semaphore
#     holder: only its own field changes, only while it is alive; the others are kept.
HOLDERS_LUA = """
local function clock_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function fmt(n) return string.format('%.0f', n) end

local function pack(h)
  return fmt(h.expires) .. '|' .. h.fence .. '|' .. h.shared .. '|' .. h.limit .. '|'
         .. h.acquired .. '|' .. h.cid
end

local function live_holders(lock, now)
  local all = redis.call('HGETALL', lock)
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
    redis.call('HDEL', lock, unpack(expired, i, math.min(i + 999, #expired)))
  end
  if top.token then
    if tonumber(top.expires) > now then
      holders[#holders + 1] = {token = top.token, expires = tonumber(top.expires), fence = top.fence,
                               shared = '0', limit = '1', acquired = top.acquired,
                               cid = top.cid or '', top = true}
    else
      redis.call('HDEL', lock, 'token', 'fence', 'cid', 'acquired', 'expires')
    end
  end
  return holders
end

local function set_life(lock, holders, now)
  local latest = 0
  for _, h in ipairs(holders) do
    if h.expires > latest then latest = h.expires end
  end
  if latest == 0 then
    redis.call('DEL', lock)
  else
    redis.call('PEXPIRE', lock, math.ceil((latest - now) / 1000))
  end
end

local function release_field(token, wake_ttl)
  local field = 'h:' .. token
  if redis.call('HEXISTS', KEYS[1], field) == 0 then return 0 end
  local now = clock_us()
  local rest, found = {}, false
  for _, h in ipairs(live_holders(KEYS[1], now)) do
    if h.token == token then found = true else rest[#rest + 1] = h end
  end
  if not found then return 0 end
  redis.call('HDEL', KEYS[1], field)
  set_life(KEYS[1], rest, now)
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PEXPIRE', KEYS[2], wake_ttl)
  return 1
end

local function extend_field(token, ttl, grace)
  local field = 'h:' .. token
  if redis.call('HEXISTS', KEYS[1], field) == 0 then return '0' end
  local now = clock_us()
  local holders = live_holders(KEYS[1], now)
  local mine = nil
  for _, h in ipairs(holders) do
    if h.token == token then mine = h end
  end
  if mine == nil then return '0' end
  mine.expires = now + ttl * 1000
  redis.call('HSET', KEYS[1], field, pack(mine))
  set_life(KEYS[1], holders, now)
  if redis.call('PTTL', KEYS[2]) < ttl + grace then redis.call('PEXPIRE', KEYS[2], ttl + grace) end
  return fmt(mine.expires)
end
"""

# One attempt in any mode (shared, a semaphore, or exclusive by a waiter), atomically on
# the server's clock. KEYS: lock hash, fencing counter, wake-up list, writer mark. ARGV:
# key, token, ttl ms, correlation id, FENCE_GRACE_MS, shared (1/0), limit, waiter (1/0),
# WRITER_MARK_MS, WAKE_TTL_MS, hops (the hop count of the wake-up that woke this waiter,
# 0 if none), WAKE_HOPS. Admission (Mode): a non-shared attempt with limit N while
# fewer than N live holders hold the key; a shared one while no live non-shared holder
# does and no writer mark is alive. Refused: a non-shared waiter sets the mark to its
# token for WRITER_MARK_MS; a waiter woken by a wake-up it cannot use passes it on (hop
# count + 1, up to WAKE_HOPS) when another might use it: a shared one held back by the
# mark alone (the writer that set it may proceed), any one while there are fewer holders
# than the largest limit among them (a semaphore waiter may proceed). So a waiter behind
# it that can proceed does not sleep through the release, and exclusive waiters of a
# held key pass nothing round. Returns {"0", ms until it could succeed by expiry alone}.
# Admitted: clears the mark if it is its own, advances the fencing counter exactly as
# ACQUIRE_SCRIPT does (max(last + 1, server clock µs)); an exclusive holder is written in
# ACQUIRE_SCRIPT's layout (and clears stale wake-ups, as there), any other into its own
# ``h:<token>`` field (an exclusive holder it joins is moved into its field first), the
# hash living until its latest holder's expiry; an admitted waiter that leaves room for
# more passes a wake-up on if none is pending. Returns {fencing token, acquired µs}. As
# in ACQUIRE_SCRIPT, a token that already holds the key gets its acquisition back.
MODE_ACQUIRE_SCRIPT = HOLDERS_LUA + """
local token, ttl = ARGV[2], tonumber(ARGV[3])
local shared, limit, waiter = ARGV[6] == '1', tonumber(ARGV[7]), ARGV[8] == '1'
local now = clock_us()
-- Admitted: the mark goes if it is this waiter's; the next fencing token, as in
-- ACQUIRE_SCRIPT; an exclusive holder in ACQUIRE_SCRIPT's layout.
local function admitted()
  if not shared and redis.call('GET', KEYS[4]) == token then redis.call('DEL', KEYS[4]) end
  local fence_s = fmt(math.max(tonumber(redis.call('GET', KEYS[2]) or 0) + 1, now))
  redis.call('SET', KEYS[2], fence_s, 'PX', ttl + tonumber(ARGV[5]))
  return fence_s, fmt(now)
end
local function take_exclusive(fence_s, now_s)
  redis.call('HSET', KEYS[1], 'key', ARGV[1], 'token', token, 'fence', fence_s,
             'cid', ARGV[4], 'acquired', now_s, 'expires', fmt(now + ttl * 1000))
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('DEL', KEYS[3])
  return {fence_s, now_s}
end
if not shared and limit == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
  return take_exclusive(admitted())  -- an exclusive attempt on a free key
end
local holders = live_holders(KEYS[1], now)
for _, h in ipairs(holders) do
  if h.token == token then return {h.fence, h.acquired} end
end
local wait_us = nil
local widest = 1
for _, h in ipairs(holders) do widest = math.max(widest, tonumber(h.limit)) end
if shared then
  for _, h in ipairs(holders) do
    if h.shared == '0' and (wait_us == nil or h.expires - now > wait_us) then
      wait_us = h.expires - now
    end
  end
  if wait_us == nil then widest = math.huge end
  local mark = redis.call('PTTL', KEYS[4])
  if mark > 0 then wait_us = math.max(wait_us or 0, mark * 1000) end
elseif #holders >= limit then
  local expiries = {}
  for i, h in ipairs(holders) do expiries[i] = h.expires end
  table.sort(expiries)
  wait_us = expiries[#holders - limit + 1] - now
end
if wait_us ~= nil then
  if waiter and not shared then redis.call('SET', KEYS[4], token, 'PX', ARGV[9]) end
  local hops = tonumber(ARGV[11])
  if hops > 0 and hops < tonumber(ARGV[12]) and #holders < widest then
    redis.call('RPUSH', KEYS[3], tostring(hops + 1))
    redis.call('PEXPIRE', KEYS[3], ARGV[10])
  end
  return {'0', fmt(math.floor(wait_us / 1000))}
end
local fence_s, now_s = admitted()
if not shared and limit == 1 then return take_exclusive(fence_s, now_s) end
for _, h in ipairs(holders) do
  if h.top then
    redis.call('HDEL', KEYS[1], 'token', 'fence', 'cid', 'acquired', 'expires')
    redis.call('HSET', KEYS[1], 'h:' .. h.token, pack(h))
  end
end
local mine = {expires = now + ttl * 1000, fence = fence_s, shared = shared and '1' or '0',
              limit = ARGV[7], acquired = now_s, cid = ARGV[4]}
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'h:' .. token, pack(mine))
holders[#holders + 1] = mine
set_life(KEYS[1], holders, now)
if waiter and (shared or #holders < limit) and redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('RPUSH', KEYS[3], '1')
  redis.call('PEXPIRE', KEYS[3], ARGV[10])
end
return {fence_s, now_s}
"""

# Deletes the lock only if ARGV[1] is its holder's token, then wakes one waiter. A token
# that is not the exclusive holder's may be a shared or semaphore holder's field: then
# only that field goes (release_field, HOLDERS_LUA), the others stay.
RELEASE_SCRIPT = HOLDERS_LUA + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return release_field(ARGV[1], ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Resets the lock's life to ARGV[2] ms only if ARGV[1] still holds it (and keeps the
# fencing counter alive as long). Returns the new expiry in µs, or 0 if not held. A
# shared or semaphore holder's field is extended alone (extend_field, HOLDERS_LUA).
EXTEND_SCRIPT = HOLDERS_LUA + """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return extend_field(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
end
local ttl = tonumber(ARGV[2])
local clock = redis.call('TIME')
local expires = string.format('%.0f', tonumber(clock[1]) * 1000000 + tonumber(clock[2]) + ttl * 1000)
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[3]))
return expires
"""

# Deletes the lock whoever holds it (every holder: they are all in its hash) and the
# writer mark KEYS[3], and wakes one waiter. 1 if something was held.
FORCE_RELEASE_SCRIPT = """
redis.call('DEL', KEYS[3])
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# Removes a writer mark only if it is this waiter's (a waiter that gave up), never another
# waiter's mark. Returns 1 if it did.
UNMARK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A waiter cancelled while its BLPOP was in flight may have taken the release's wake-up
# with it: if no wake-up is pending and another waiter might now proceed (the key is
# free, has room left under the largest limit among its holders, or only shared holders:
# MODE_ACQUIRE_SCRIPT's pass-on rule), one goes back, so the next waiter does not sleep
# through that release. While an exclusive holder or a full semaphore holds the key,
# nothing is pushed: a cancelled waiter leaves nothing behind. KEYS: lock hash, wake-up
# list; ARGV: WAKE_TTL_MS. Returns 1 if it pushed one.
PASS_ON_SCRIPT = HOLDERS_LUA + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local holders = live_holders(KEYS[1], clock_us())
local widest, only_shared = 1, true
for _, h in ipairs(holders) do
  widest = math.max(widest, tonumber(h.limit))
  if h.shared ~= '1' then only_shared = false end
end
if #holders > 0 and #holders >= widest and not only_shared then return 0 end
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# Reads a lock's hash (every holder), its remaining life (PTTL) and the server's clock
# (TIME: which holders are live is decided to the microsecond, as the admission scripts
# decide it) in one command on one key, so a cluster client routes it like
# any single-key command. Returns {HGETALL, pttl, seconds, microseconds}; see
# RedisLockClient._infos.
READ_SCRIPT = """
local t = redis.call('TIME')
return {redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[1]), t[1], t[2]}
"""


class _Script:
    """A Lua script run by EVALSHA, loaded with EVAL when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    def on_node(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        """The script on a cluster client, sent to the node of its keys' slot as one
        command: :func:`node_command`."""
        command = node_command(client, keys[0])
        try:
            return command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return command("EVAL", self.source, len(keys), *keys, *args)

    def on_pool(self, pool: tuple[Callable[[], Any], Callable[[Any], None]],
                keys: list[str], args: list[Any]) -> Any:
        """The script on a pooled connection (``pool``: :func:`_direct_pool`'s get and
        release), as ``redis.Redis.execute_command`` runs a command (the connection's
        retries, a disconnect on failure) without the client's command layers."""
        get_connection, release = pool
        conn = get_connection()
        try:
            return conn.retry.call_with_retry(lambda: self._send(conn, keys, args),
                                              lambda error: conn.disconnect())
        finally:
            release(conn)

    def _send(self, conn: Any, keys: list[str], args: list[Any]) -> Any:
        conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return conn.read_response()
        except NoScriptError:
            conn.send_command("EVAL", self.source, len(keys), *keys, *args)
            return conn.read_response()


def is_cluster(client: Any) -> bool:
    """Whether a raw client is a ``redis.cluster.RedisCluster``."""
    return RedisCluster is not None and isinstance(client, RedisCluster)


def node_command(client: Any, key: str) -> Callable[..., Any]:
    """How to send a command about ``key`` on a cluster client once, to the node that
    serves ``key``'s slot: a call fails at once when that node is down, as on one server.

    A cluster client retries a command that met a refused connection, a timeout or
    CLUSTERDOWN: redis-py 5 three times at once (failing within milliseconds), redis-py 8
    up to 10 times with a backoff (about 3 s), long enough to reach the replica promoted
    meanwhile, so a call that began during the outage answered late, as if there had been
    none. Given its target node, a cluster client sends a command without those retries
    (every version since 4.1); it still follows MOVED and ASK to the slot's new owner, and
    asks for a topology refresh after the error. Lock waiters retry by themselves
    (BaseLock._retryable), with their own backoff and deadline.

    redis-py 8 runs the refresh an error asked for at the start of the next command, once
    due: after the node is chosen, so a command would go to the node the refresh just
    replaced (a hung master: one more socket timeout). The refresh runs first here, as the
    client's own command loop would run it.
    """
    node = node_of(client, key)

    def command(*args: Any) -> Any:
        return client.execute_command(*args, target_nodes=node)

    return command


def node_of(client: Any, key: str) -> Any:
    """The node of a cluster client that serves ``key``'s slot, after the topology
    refresh an earlier error asked for, if it is due (see :func:`node_command`)."""
    manager = client.nodes_manager
    if getattr(manager, "_refresh_requested", False):  # redis-py 8's paced refresh
        manager._run_requested_refresh(client.retry)
    return client.get_node_from_key(key)


def _direct_pool(client: Any) -> tuple[Callable[[], Any], Callable[[Any], None]] | None:
    """How to get and release a connection of the pool on which scripts run directly
    (:meth:`_Script.on_pool`), or None.

    A plain ``redis.Redis`` (one server, or a Sentinel-managed master) spends about as
    long in its command layers as the round trip to a local Redis takes; scripts skip them
    on its pool. Any other client goes through its own ``evalsha``: a cluster, a subclass
    that overrides ``execute_command``, one whose ``execute_command`` is wrapped (tracing
    instrumentation), a client bound to one connection, client-side caching.
    """
    execute = getattr(type(client), "execute_command", None)
    if (Redis is None or not isinstance(client, Redis) or execute is not Redis.execute_command
            or hasattr(execute, "__wrapped__") or getattr(client, "connection", None) is not None):
        return None
    return _pool_access(getattr(client, "connection_pool", None))


def _pool_access(pool: Any) -> tuple[Callable[[], Any], Callable[[Any], None]] | None:
    """A pool's get and release of a connection, or None for none or a pool with
    client-side caching (its connections answer some commands from the cache). Through
    the pool's own methods, so its fork check (a child gets new connections) applies."""
    if pool is None or getattr(pool, "cache", None) is not None:
        return None
    get_connection = pool.get_connection
    # redis-py < 5.3 requires a command name (later ones deprecate passing one).
    name = inspect.signature(get_connection).parameters.get("command_name")
    if name is not None and name.default is inspect.Parameter.empty:
        get_connection = functools.partial(get_connection, "EVALSHA")
    return get_connection, pool.release


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(fields: Any) -> list[Any]:
    """HGETALL's reply as a flat list (redis-py turns it into a dict outside scripts)."""
    if isinstance(fields, dict):
        return [item for pair in fields.items() for item in pair]
    return list(fields or [])


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


#: One raw client per Django RedisCache configuration and process (see _shared_client).
_shared_clients: dict[tuple[Any, ...], Any] = {}
_shared_clients_mutex = threading.Lock()


def _shared_client(cache: Any) -> Any:
    """The raw client of a Django ``RedisCache``, one per configuration and process.

    Django's ``RedisCache`` makes its connection pool per cache instance, and there is a
    cache instance per thread: N threads waiting for locks would open N pools. Locks share
    one client (so one pool) per LOCATION and OPTIONS, as django-redis shares its pools:
    N waiters then hold at most N connections, plus the pool's idle ones.
    """
    config = (type(cache), tuple(cache._servers), repr(sorted(cache._options.items())), os.getpid())
    client = _shared_clients.get(config)
    if client is None:
        with _shared_clients_mutex:
            client = _shared_clients.setdefault(config, cache._cache.get_client(write=True))
    return client


def async_client_like(sync_pool: Any) -> Any:
    """A ``redis.asyncio`` client connecting the way ``sync_pool``'s connections do
    (host and port or socket path, database, credentials, timeouts, TLS).

    Async waiters no longer use one (they block on a connection of the sync pool itself,
    see ``RedisLockClient.await_release``): an asyncio client is bound to its event loop,
    and one kept per loop was dropped unclosed with it, a connection left per loop."""
    connection_class = getattr(redis_asyncio, _ASYNC_CONNECTIONS[sync_pool.connection_class.__name__])
    # Every class's own parameters: redis-py 5+ asyncio connections take most settings
    # (db, credentials, timeouts) in a base class's __init__, through **kwargs.
    accepted = {
        name for klass in connection_class.__mro__ if "__init__" in vars(klass)
        for name in inspect.signature(vars(klass)["__init__"]).parameters
    }
    kwargs = {
        name: value for name, value in sync_pool.connection_kwargs.items()
        if name in accepted and name not in _NOT_COPIED and not name.startswith("orig_")
    }
    pool = redis_asyncio.ConnectionPool(connection_class=connection_class, **kwargs)
    return redis_asyncio.Redis(connection_pool=pool)


#: The sync connection classes with an asyncio twin taking the same settings. Others (a
#: Sentinel-managed connection finds its server through the sentinels) wait by polling.
_ASYNC_CONNECTIONS = {
    "Connection": "Connection",
    "UnixDomainSocketConnection": "UnixDomainSocketConnection",
    "SSLConnection": "SSLConnection",
}
#: Connection settings of a sync pool that an asyncio connection must not take as they are:
#: sync objects, and what a pool makes for its own connections (redis-py 8: maintenance
#: notification handlers, the hash-import registry, the ``orig_`` copies of timeouts).
_NOT_COPIED = frozenset({"parser_class", "retry", "connection_pool", "event_dispatcher",
                         "maint_notifications_pool_handler", "maint_notifications_config",
                         "himport_registry"})


#: Pools whose get_connection waits for a free connection (_unblock takes none from them).
_BLOCKING_POOLS: tuple[type, ...] = (BlockingConnectionPool,) if BlockingConnectionPool is not None else ()

_TAG_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of lock ``key``: the key with ``%``, ``{`` and ``}``
    percent-encoded.

    Redis hashes a name by the text between its first ``{`` and the first ``}`` after it,
    if that text is not empty. Inside ``django_locks:{TAG}:...`` a tag without braces is
    exactly that text, and it is never empty (keys are), so a lock's names (lock, fence, wake, mark) always
    share one slot, for any key (``}x``, ``{}``, ``a{b}c``...). The encoding is one-to-one
    (``%`` is encoded too), so two keys never share names, and a key without ``%``, ``{``
    or ``}`` is its own tag, readable as it always was.
    """
    return key.translate(_TAG_ESCAPES)


def socket_timeout_of(client: Any) -> float | None:
    """The socket timeout of a raw client's connections (``redis.Redis``, Sentinel or
    ``RedisCluster``: all have ``get_connection_kwargs``), or None."""
    get_kwargs = getattr(client, "get_connection_kwargs", None)
    if get_kwargs is None:
        return None
    return get_kwargs().get("socket_timeout")


def raw_client_getter(cache_class: type) -> Callable[[Any], Any] | None:
    """How to get the raw redis-py client from a cache of this class; None if not Redis."""
    if DjangoRedisPackageCache is not None and issubclass(cache_class, DjangoRedisPackageCache):
        # django-redis shares its connection pools between threads already.
        return lambda cache: cache.client.get_client(write=True)
    if issubclass(cache_class, DjangoRedisCache):
        return _shared_client
    return None


class RedisLockClient(CacheLockClient):
    """Redis used natively through the cache's raw redis-py client."""

    acquire_script = _Script(ACQUIRE_SCRIPT)
    mode_acquire_script = _Script(MODE_ACQUIRE_SCRIPT)
    release_script = _Script(RELEASE_SCRIPT)
    extend_script = _Script(EXTEND_SCRIPT)
    force_release_script = _Script(FORCE_RELEASE_SCRIPT)
    unmark_script = _Script(UNMARK_SCRIPT)
    read_script = _Script(READ_SCRIPT)
    pass_on_script = _Script(PASS_ON_SCRIPT)

    def __init__(self, backend: CacheLock) -> None:
        super().__init__(backend)
        getter = raw_client_getter(backend.cache_backend_class)
        if getter is None:
            raise TypeError(f"{backend.cache_backend_class.__name__} is not a Redis cache")
        self._get_client = getter
        self._client: Any = None
        self._cluster = False
        self._pool: tuple[Callable[[], Any], Callable[[Any], None]] | None = None
        #: Tokens of exclusive waiters refused once: they hold the writer mark, so their
        #: next attempts go through MODE_ACQUIRE_SCRIPT (see try_acquire).
        self._marking: set[str] = set()
        #: Whether the server takes CLIENT UNBLOCK (see _unblock).
        self._unblock_allowed = True

    @classmethod
    def handles(cls, cache_class: type) -> bool:
        return raw_client_getter(cache_class) is not None

    def get_client(self) -> Any:
        """The raw redis-py client (thread-safe; one per backend instance is enough)."""
        if self._client is None:
            client = self._get_client(self.backend.cache)
            for_this_process = getattr(client, "for_this_process", None)
            if for_this_process is not None:  # a CacheCluster (django_locks.cluster)
                client = for_this_process()
            self._pool = _direct_pool(client)
            self._cluster = is_cluster(client)
            self._client = client
        return self._client

    def after_fork_in_child(self) -> None:
        """In a forked child: the raw client is fetched again on first use (the cache's
        pools see the new process and open new connections: redis-py's fork check, which
        every connection taken here goes through); the parent's is kept referenced. The
        module's own clients and mutexes are dropped too (:func:`_after_fork_in_child`)."""
        _inherited.append((self._client, self._pool))
        self._client = None
        self._pool = None
        self._cluster = False
        self._marking = set()

    def keys(self, key: str) -> LockKeys:
        """Full Redis keys; ``{TAG}`` (:func:`hash_tag`) puts the four in one cluster slot."""
        base = f"django_locks:{{{hash_tag(key)}}}"
        make_key = self.backend.cache.make_key
        return LockKeys(make_key(base + ":lock"), make_key(base + ":fence"), make_key(base + ":wake"),
                        make_key(base + ":mark"))

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        try:
            return operation(self.get_client())
        except (RedisError, RedisClusterException, OSError) as e:
            raise self._failed(e) from e

    def _failed(self, error: BaseException) -> LockBackendError:
        return LockBackendError(
            f"LOCKS[{self.backend.alias!r}]: Redis behind cache "
            f"{self.backend.cache_alias!r} failed: {error}"
        )

    def _run(self, script: _Script, keys: list[str], args: list[Any]) -> Any:
        """``script``'s reply: on the pool directly where it can (see :func:`_direct_pool`)."""
        try:
            client = self._client if self._client is not None else self.get_client()
            if self._pool is not None:
                return script.on_pool(self._pool, keys, args)
            if self._cluster:
                return script.on_node(client, keys, args)
            return script(client, keys, args)
        except (RedisError, RedisClusterException, OSError) as e:
            raise self._failed(e) from e

    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        woken = _woken.get()
        if woken is not None:
            _woken.set(None)
        fence: Any = 0
        if mode.exclusive and (not waiter or token not in self._marking):
            # The plain path (ACQUIRE_SCRIPT): an exclusive attempt that has no writer mark
            # to clear, since it never set one. An exclusive waiter refused here must set
            # the mark at once: it attempts again through MODE_ACQUIRE_SCRIPT, and so do
            # its later attempts until it wins (a second round trip, on contention only).
            fence, second = self._run(
                self.acquire_script, [keys.lock, keys.fence, keys.wake],
                [key, token, ttl, cid or "", FENCE_GRACE_MS],
            )
            if waiter and not int(fence):
                if len(self._marking) >= 1024:  # waiters that timed out never said so
                    self._marking.clear()
                self._marking.add(token)
        if not int(fence) and (waiter or not mode.exclusive):
            hops = woken[1] if woken is not None and woken[0] == keys.wake else 0
            fence, second = self._run(
                self.mode_acquire_script, [keys.lock, keys.fence, keys.wake, keys.mark],
                [key, token, ttl, cid or "", FENCE_GRACE_MS, int(mode.shared), mode.limit,
                 int(waiter), WRITER_MARK_MS, WAKE_TTL_MS, hops, WAKE_HOPS],
            )
        fence = int(fence)  # int() reads bytes and str replies alike
        if fence and mode.exclusive and waiter:
            self._marking.discard(token)
        if not fence:
            return Attempt(None, max(int(second), 0))
        acquired_us = int(second)
        return Attempt(
            LockInfo(
                key=key,
                token=token,
                fencing_token=fence,
                correlation_id=cid,
                acquired_at_us=acquired_us,
                expires_at_us=acquired_us + ttl * 1000,
                shared=mode.shared,
                limit=mode.limit,
            )
        )

    def release(self, keys: LockKeys, token: str) -> bool:
        return self._run(self.release_script, [keys.lock, keys.wake], [token, WAKE_TTL_MS]) == 1

    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        expires_us = int(self._run(self.extend_script, [keys.lock, keys.fence], [token, ttl, FENCE_GRACE_MS]))
        return expires_us or None

    def unmark(self, keys: LockKeys, token: str) -> None:
        self._run(self.unmark_script, [keys.mark], [token])

    def force_release(self, keys: LockKeys) -> bool:
        return self._run(self.force_release_script, [keys.lock, keys.wake, keys.mark], [WAKE_TTL_MS]) == 1

    @staticmethod
    def _infos(fields: Any, pttl: Any, now_us: int | None = None) -> list[LockInfo]:
        """Every live holder from a lock hash's HGETALL (a flat list) and its PTTL.

        Remaining lives are the server's. With ``now_us`` (the server's clock when it read
        the hash: READ_SCRIPT) a holder is live while it expires after it, exactly as the
        admission scripts count, and the latest one also while the hash lives (an
        exclusive attempt is refused while it exists). Without (a pipelined HGETALL +
        PTTL), the hash's PTTL is its latest holder's (see the layout in the module
        docstring), and each holder's is that less how much sooner it expires; PTTL and
        the hash's expiry have whole milliseconds, so a holder within 2 ms of its expiry
        is kept (shown as 0 ms) rather than dropped while the scripts may still count it.
        A holder already expired, not yet pruned, is left out.
        """
        pttl = int(pttl)
        if not fields or pttl == -2:
            return []
        pairs = dict(zip(map(_text, fields[::2]), map(_text, fields[1::2]), strict=True))
        key = pairs.get("key")
        if key is None:
            return []
        holders: list[tuple[int, LockInfo]] = []
        if "token" in pairs:
            holders.append((int(pairs["expires"]), LockInfo(
                key=key,
                token=pairs["token"],
                fencing_token=int(pairs["fence"]),
                correlation_id=pairs.get("cid") or None,
                acquired_at_us=int(pairs["acquired"]),
                expires_at_us=int(pairs["expires"]),
            )))
        for name, value in pairs.items():
            if not name.startswith("h:"):
                continue
            expires, fence, shared, limit, acquired, cid = value.split("|", 5)
            holders.append((int(expires), LockInfo(
                key=key,
                token=name[2:],
                fencing_token=int(fence),
                correlation_id=cid or None,
                acquired_at_us=int(acquired),
                expires_at_us=int(expires),
                shared=shared == "1",
                limit=int(limit),
            )))
        if not holders:
            return []
        latest = max(expires for expires, _ in holders)
        infos = []
        for expires, info in holders:
            if now_us is not None:
                left_us: int | None = expires - now_us
                # The latest holder also while the hash lives (its PEXPIRE has whole ms):
                # ACQUIRE_SCRIPT refuses an exclusive attempt while the hash exists.
                live = left_us > 0 or expires == latest  # (pttl -2, no hash, returned above)
            else:
                left_us = pttl * 1000 + expires - latest if pttl >= 0 else None
                live = left_us is None or left_us > -2000 or expires == latest
            if live:
                remaining = None if left_us is None else max(left_us // 1000, 0)
                infos.append(replace(info, remaining_ms=remaining))
        return infos

    def holders(self, keys: LockKeys) -> list[LockInfo]:
        fields, pttl, seconds, micros = self._run(self.read_script, [keys.lock], [])
        return self._infos(fields, pttl, int(seconds) * 1_000_000 + int(micros))

    def held(self) -> list[LockInfo]:
        sentinel = "\x00"  # cannot occur in a key or a prefix made by Django
        pattern = _glob_escape(self.backend.cache.make_key(f"django_locks:{{{sentinel}}}:lock"))
        pattern = pattern.replace(sentinel, "*")

        def scan(client: Any) -> list[Any]:
            found: list[Any] = []
            # SCAN walks the keyspace in small steps, never blocking the server (no KEYS).
            names = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(names), 500):
                pipe = client.pipeline(transaction=False)
                for name in names[start:start + 500]:
                    pipe.hgetall(name)
                    pipe.pttl(name)
                found.extend(pipe.execute())
            return found

        # A lock that expires between SCAN and HGETALL reads as empty and is skipped.
        replies = self._call(scan)
        return [
            info for fields, pttl in zip(replies[::2], replies[1::2], strict=True)
            for info in self._infos(_flat(fields), pttl)
        ]

    def _block_seconds(self, seconds: float) -> float:
        """How long one BLPOP may block: at most MAX_BLOCK_SECONDS and ``seconds``, and it
        must end before the client's socket timeout does."""
        block = min(seconds, MAX_BLOCK_SECONDS)
        socket_timeout = socket_timeout_of(self._call(lambda c: c))
        if socket_timeout:
            block = min(block, socket_timeout - BLOCK_TIMEOUT_SLACK, socket_timeout / 2)
        return block

    def retryable(self, error: LockBackendError) -> bool:
        return isinstance(error.__cause__, TRANSIENT_ERRORS)

    @staticmethod
    def _remember_wake(keys: LockKeys, popped: Any) -> None:
        """Note the wake-up BLPOP returned (for the next attempt to pass on if it cannot
        use it: MODE_ACQUIRE_SCRIPT), or none."""
        hops = 0
        if popped:
            try:
                hops = int(_text(popped[1]))
            except ValueError:
                hops = 1
        _woken.set((keys.wake, hops) if hops > 0 else None)

    def wait(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """Block on the wake-up list (BLPOP) until a release pushes to it or ``seconds``
        (at most MAX_BLOCK_SECONDS) pass, the end kept by this client (see
        :meth:`_unblock`), not by the server."""
        block = self._block_seconds(seconds)
        _woken.set(None)
        if block < 0.001:  # too short to block on the server: a short sleep instead
            time.sleep(min(max(block, 0.001), seconds, 0.01))
            return
        deadline = time.monotonic() + block
        try:
            held = self._checkout(keys.wake)
        except (RedisError, RedisClusterException, OSError) as e:
            raise self._failed(e) from e
        if held is None:  # no pool to take a connection from: the client's BLPOP
            popped = self._call(lambda c: c.blpop([keys.wake], timeout=round(block, 3)))
        else:
            conn = held.conn
            try:
                _send_blpop(conn, keys.wake, block)
                client_id = _client_id(conn)
                if conn.can_read(timeout=max(deadline - time.monotonic(), 0)):
                    popped = _blpop_reply(conn)
                elif client_id is not None and self._unblock(held, client_id):
                    popped = _blpop_reply(conn)
                else:
                    popped = self._abandon(held, keys)
            except BaseException as e:
                conn.disconnect()
                held.release(conn)
                if isinstance(e, (RedisError, OSError)):
                    raise self._failed(e) from e
                raise
            held.release(conn)
        self._remember_wake(keys, popped)

    def _checkout(self, key: str) -> _Held | None:
        """A connection to block on for ``key``'s wake-up list, from the client's own
        pool (on a cluster, the pool of the node serving the key). None when the client
        has no such pool (client-side caching)."""
        client = self.get_client()
        if self._cluster:
            pool = client.get_redis_connection(node_of(client, key)).connection_pool
        else:
            pool = getattr(client, "connection_pool", None)
        access = _pool_access(pool)
        if access is None:
            return None
        get, release = access
        return _Held(get(), get, release, pool)

    def _unblock(self, held: _Held, client_id: int) -> bool:
        """End the BLPOP of connection ``client_id`` at the waiter's deadline.

        Redis times a blocking command out only at its next tick (1/hz: 100 ms late at the
        default hz 10, a second at hz 1), so the waiter ends it itself: CLIENT UNBLOCK from
        another connection of the same pool. The blocked connection then reads its reply
        (nil, or the wake-up it popped meanwhile, which is kept: nothing is lost) and goes
        back to the pool clean. False if that is not done (the server refuses CLIENT
        UNBLOCK, an ACL; a BlockingConnectionPool, which could make this wait for a free
        connection): see :meth:`_abandon`. A server that does not answer raises, as any
        command would (the caller drops the blocked connection).
        """
        if not self._unblock_allowed or isinstance(held.pool, _BLOCKING_POOLS):
            return False
        # One at a time per pool: waiters that time out together (N blocked connections)
        # reuse one more connection instead of opening N more.
        with _unblocker(held.pool):
            other = held.get()
            try:
                other.send_command("CLIENT", "UNBLOCK", client_id)
                other.read_response()
                return True
            except ResponseError as e:
                logger.debug("CLIENT UNBLOCK refused (%s): waits past their deadline disconnect", e)
                self._unblock_allowed = False
                return False
            except BaseException:
                other.disconnect()
                raise
            finally:
                held.release(other)

    def _abandon(self, held: _Held, keys: LockKeys) -> None:
        """A BLPOP that could not be ended (:meth:`_unblock`) is abandoned: its connection
        is disconnected (the server drops the blocked client; its reply must never be
        read by the next command), and the wake-up it may have taken is passed on."""
        held.conn.disconnect()
        self._pass_on(keys)

    async def await_release(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """:meth:`wait` holding no thread: BLPOP on a connection of the sync pool, its
        reply awaited in the event loop (the descriptor's readiness). No client is kept
        per event loop (asyncio connections belong to the loop that opened them), so a
        waiter in a fresh loop (``asyncio.run``, ``async_to_sync``) leaves nothing open
        behind it. Taking a connection (which may connect) and ending a BLPOP at the
        deadline (:meth:`_unblock`) run in a worker."""
        block = self._block_seconds(seconds)
        _woken.set(None)
        if block < 0.001:
            await asyncio.sleep(min(max(block, 0.001), seconds, 0.01))
            return
        deadline = time.monotonic() + block
        loop = asyncio.get_running_loop()
        checkout = loop.run_in_executor(None, self._checkout, keys.wake)
        try:
            held = await asyncio.shield(checkout)
        except asyncio.CancelledError:
            checkout.add_done_callback(_give_back)  # taken after all: back to the pool
            raise
        except (RedisError, RedisClusterException, OSError) as e:
            raise self._failed(e) from e
        if held is None:
            await asyncio.sleep(self.backend._poll_delay(seconds, waits))
            return
        conn = held.conn
        try:
            _send_blpop(conn, keys.wake, block)
            if not await _readable(conn, conn.socket_timeout):
                raise RedisTimeoutError("Timeout reading from socket")
            client_id = _client_id(conn)
            if await _readable(conn, max(deadline - time.monotonic(), 0)):
                popped = _blpop_reply(conn)
            elif (client_id is not None
                  and await loop.run_in_executor(None, self._unblock, held, client_id)):
                if not await _readable(conn, conn.socket_timeout):
                    raise RedisTimeoutError("Timeout reading from socket")
                popped = _blpop_reply(conn)
            else:
                conn.disconnect()
                popped = None
                await loop.run_in_executor(None, self._pass_on, keys)
        except asyncio.CancelledError:
            # Cancelled mid-BLPOP: the connection goes (its reply would be read by the next
            # command), and the wake-up it may have taken is passed on.
            conn.disconnect()
            held.release(conn)
            await loop.run_in_executor(None, self._pass_on, keys)
            raise
        except BaseException as e:
            conn.disconnect()
            held.release(conn)
            if isinstance(e, (RedisError, OSError)):
                raise self._failed(e) from e
            raise
        held.release(conn)
        self._remember_wake(keys, popped)

    def _pass_on(self, keys: LockKeys) -> None:
        """After an abandoned BLPOP (cancelled, or not ended by CLIENT UNBLOCK): the
        wake-up it may have taken goes back if another waiter could use it (PASS_ON_SCRIPT).
        Best effort."""
        try:
            self._run(self.pass_on_script, [keys.lock, keys.wake], [WAKE_TTL_MS])
        except LockBackendError as e:
            logger.debug("the wake-up an abandoned wait may have taken was not passed on: %s", e)


class _Held(NamedTuple):
    """A connection a waiter blocks on, and its pool's get and release."""

    conn: Any
    get: Callable[[], Any]
    release: Callable[[Any], None]
    pool: Any


#: What a forked child inherited from its parent (clients, pools): kept referenced and
#: never used, so that nothing closes or says goodbye on the parent's connections.
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``)
    makes its own shared clients on first use, and its own mutexes (a thread of the parent
    may have held one when it forked: a child waiting for it would wait forever)."""
    global _shared_clients, _shared_clients_mutex, _unblockers, _unblockers_mutex
    _inherited.append((_shared_clients, _unblockers))
    _shared_clients = {}
    _shared_clients_mutex = threading.Lock()
    _unblockers = weakref.WeakKeyDictionary()
    _unblockers_mutex = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: A mutex per pool for RedisLockClient._unblock (see there).
_unblockers: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_unblockers_mutex = threading.Lock()


def _unblocker(pool: Any) -> threading.Lock:
    with _unblockers_mutex:
        lock = _unblockers.get(pool)
        if lock is None:
            lock = _unblockers[pool] = threading.Lock()
        return lock


def _send_blpop(conn: Any, key: str, block: float) -> None:
    """CLIENT ID (to end the BLPOP from elsewhere: RedisLockClient._unblock) and BLPOP,
    sent at once; the server's own timeout is the block, rounded to the millisecond."""
    conn.send_packed_command(conn.pack_commands([("CLIENT", "ID"), ("BLPOP", key, round(block, 3))]))


def _client_id(conn: Any) -> int | None:
    """CLIENT ID's reply (:func:`_send_blpop`), or None if the server refused it."""
    try:
        return int(conn.read_response())
    except ResponseError:
        return None


def _blpop_reply(conn: Any) -> Any:
    """BLPOP's reply; None (no wake-up) if a cluster node says the key moved: the next
    attempt follows the redirect, and the next wait goes to the new node."""
    try:
        return conn.read_response()
    except (MovedError, AskError):
        return None


def _give_back(checkout: asyncio.Future[Any]) -> None:
    """A connection checked out for a waiter cancelled meanwhile: back to its pool."""
    if not checkout.cancelled() and checkout.exception() is None and checkout.result() is not None:
        held = checkout.result()
        held.release(held.conn)


def _mark_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _readable(conn: Any, timeout: float | None) -> bool:
    """Whether a reply can be read on the sync connection ``conn`` within ``timeout``
    seconds (None: no limit), awaited in the event loop: its descriptor's readiness
    (``loop.add_reader``; a loop without it, as on Windows, waits in a worker)."""
    if conn.can_read(timeout=0):  # already buffered
        return True
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn._sock.fileno()
    try:
        loop.add_reader(fd, _mark_ready, ready)
    except NotImplementedError:
        return await loop.run_in_executor(None, functools.partial(conn.can_read, timeout=timeout))
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        return conn.can_read(timeout=0)
    finally:
        loop.remove_reader(fd)
    return True
