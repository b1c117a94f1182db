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
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

from django_locks.backends.cache_clients.base import CacheLockClient, LockKeys
from django_locks.exceptions import LockBackendError
from django_locks.values import Attempt, LockInfo, Mode

try:  # redis is an optional dependency (the "redis" extra); without it no cache is Redis
    import redis.asyncio as redis_asyncio
    from redis import Redis
    from redis.exceptions import (
        BusyLoadingError,
        ClusterDownError,
        NoScriptError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover
    redis_asyncio = Redis = None
    class RedisError(Exception):  # type: ignore[no-redef]
        pass

    class NoScriptError(RedisError):  # type: ignore[no-redef]
        pass

    class RedisClusterException(Exception):  # type: ignore[no-redef]
        pass

    RedisConnectionError = RedisTimeoutError = BusyLoadingError = ClusterDownError = RedisError
    ReadOnlyError = TryAgainError = SlotNotCoveredError = RedisError

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

# Deletes the lock only if ARGV[1] is its holder's token, then wakes one waiter.
RELEASE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Resets the lock's life to ARGV[2] ms only if ARGV[1] still holds it (and keeps the
# fencing counter alive as long). Returns the new expiry in µs, or 0 if not held.
EXTEND_SCRIPT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return '0' end
local ttl = tonumber(ARGV[2])
local clock = redis.call('TIME')
local expires = string.format('%.0f', tonumber(clock[1]) * 1000000 + tonumber(clock[2]) + ttl * 1000)
redis.call('HSET', KEYS[1], 'expires', expires)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl + tonumber(ARGV[3]))
return expires
"""

# Deletes the lock whoever holds it and wakes one waiter. 1 if something was held.
FORCE_RELEASE_SCRIPT = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

#: The fields of a lock's hash, in the order LockInfo is read from them.
LOCK_FIELDS = ("key", "token", "fence", "cid", "acquired", "expires")

# Reads a lock's fields (LOCK_FIELDS order) and its remaining life by the server's clock
# (PTTL) in one command on one key, so a cluster client routes and retries it like any
# single-key command. Returns {fields, pttl}.
READ_SCRIPT = """
return {redis.call('HMGET', KEYS[1], 'key', 'token', 'fence', 'cid', 'acquired', 'expires'),
        redis.call('PTTL', KEYS[1])}
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
    pool = getattr(client, "connection_pool", None)
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


#: asyncio clients, per event loop (dropped with it) and sync pool.
_async_clients: weakref.WeakKeyDictionary[Any, dict[tuple[int, int], Any]] = weakref.WeakKeyDictionary()


def async_client_like(sync_pool: Any) -> Any:
    """A ``redis.asyncio`` client connecting the way ``sync_pool``'s connections do
    (host and port or socket path, database, credentials, timeouts, TLS)."""
    connection_class = getattr(redis_asyncio, _ASYNC_CONNECTIONS[sync_pool.connection_class.__name__])
    accepted = inspect.signature(connection_class.__init__).parameters
    kwargs = {
        name: value for name, value in sync_pool.connection_kwargs.items()
        if name in accepted and name not in _NOT_COPIED
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
#: Connection settings of a sync pool that an asyncio connection must not take as they are.
_NOT_COPIED = frozenset({"parser_class", "retry", "connection_pool", "event_dispatcher"})


_TAG_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of lock ``key``: the key with ``%``, ``{`` and ``}``
    percent-encoded.

    Redis hashes a name by the text between its first ``{`` and the first ``}`` after it,
    if that text is not empty. Inside ``django_locks:{TAG}:...`` a tag without braces is
    exactly that text, and it is never empty (keys are), so a lock's three names always
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
    release_script = _Script(RELEASE_SCRIPT)
    extend_script = _Script(EXTEND_SCRIPT)
    force_release_script = _Script(FORCE_RELEASE_SCRIPT)
    read_script = _Script(READ_SCRIPT)

    def __init__(self, backend: CacheLock) -> None:
        super().__init__(backend)
        getter = raw_client_getter(backend.cache_backend_class)
        if getter is None:
            raise TypeError(f"{backend.cache_backend_class.__name__} is not a Redis cache")
        self._get_client = getter
        self._client: Any = None
        self._pool: tuple[Callable[[], Any], Callable[[Any], None]] | None = None

    @classmethod
    def handles(cls, cache_class: type) -> bool:
        return raw_client_getter(cache_class) is not None

    def get_client(self) -> Any:
        """The raw redis-py client (thread-safe; one per backend instance is enough)."""
        if self._client is None:
            client = self._get_client(self.backend.cache)
            self._pool = _direct_pool(client)
            self._client = client
        return self._client

    def keys(self, key: str) -> LockKeys:
        """Full Redis keys; ``{TAG}`` (:func:`hash_tag`) puts the three in one cluster slot."""
        base = f"django_locks:{{{hash_tag(key)}}}"
        make_key = self.backend.cache.make_key
        return LockKeys(make_key(base + ":lock"), make_key(base + ":fence"), make_key(base + ":wake"))

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
            return script(client, keys, args)
        except (RedisError, RedisClusterException, OSError) as e:
            raise self._failed(e) from e

    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if not mode.exclusive:
            raise NotImplementedError("shared locks and semaphores: not yet on this client")
        fence, second = self._run(
            self.acquire_script, [keys.lock, keys.fence, keys.wake],
            [key, token, ttl, cid or "", FENCE_GRACE_MS],
        )
        fence = int(fence)  # int() reads bytes and str replies alike
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
            )
        )

    def release(self, keys: LockKeys, token: str) -> bool:
        return self._run(self.release_script, [keys.lock, keys.wake], [token, WAKE_TTL_MS]) == 1

    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        expires_us = int(self._run(self.extend_script, [keys.lock, keys.fence], [token, ttl, FENCE_GRACE_MS]))
        return expires_us or None

    def force_release(self, keys: LockKeys) -> bool:
        return self._run(self.force_release_script, [keys.lock, keys.wake], [WAKE_TTL_MS]) == 1

    @staticmethod
    def _info(fields: Any, pttl: Any) -> LockInfo | None:
        """A LockInfo from the hash's fields and its PTTL (the server's remaining life)."""
        if not fields or fields[1] is None:
            return None
        key, token, fence, cid, acquired, expires = (
            _text(f) if f is not None else None for f in fields
        )
        return LockInfo(
            key=key,
            token=token,
            fencing_token=int(fence),
            correlation_id=cid or None,
            acquired_at_us=int(acquired),
            expires_at_us=int(expires),
            remaining_ms=max(int(pttl), 0),
        )

    @staticmethod
    def _read(pipe: Any, name: str) -> None:
        pipe.hmget(name, LOCK_FIELDS)
        pipe.pttl(name)

    def holders(self, keys: LockKeys) -> list[LockInfo]:
        info = self.get(keys)
        return [] if info is None else [info]

    def get(self, keys: LockKeys) -> LockInfo | None:
        return self._info(*self._run(self.read_script, [keys.lock], []))

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
                    self._read(pipe, name)
                found.extend(pipe.execute())
            return found

        # A lock that expires between SCAN and HMGET reads as all None and is skipped.
        replies = self._call(scan)
        infos = (self._info(fields, pttl) for fields, pttl in zip(replies[::2], replies[1::2], strict=True))
        return [info for info in infos if info is not None]

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

    def wait(self, keys: LockKeys, seconds: float, waits: int) -> None:
        block = self._block_seconds(seconds)
        if block < 0.001:  # too short to block on the server: a short sleep instead
            time.sleep(min(max(block, 0.001), seconds, 0.01))
            return
        self._call(lambda c: c.blpop([keys.wake], timeout=round(block, 3)))

    async def await_release(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """Block on the wake-up list through ``redis.asyncio``: woken by the release at
        once, holding no thread (the event loop's own connection pool)."""
        block = self._block_seconds(seconds)
        client = self._async_client()
        if client is None:  # a cluster or Sentinel client: no asyncio twin here, poll
            await asyncio.sleep(self.backend._poll_delay(seconds, waits))
            return
        if block < 0.001:
            await asyncio.sleep(min(max(block, 0.001), seconds, 0.01))
            return
        try:
            await client.blpop([keys.wake], timeout=round(block, 3))
        except (RedisError, OSError) as e:
            raise LockBackendError(
                f"LOCKS[{self.backend.alias!r}]: Redis behind cache "
                f"{self.backend.cache_alias!r} failed: {e}"
            ) from e

    def _async_client(self) -> Any:
        """An asyncio client with the cache client's connection settings, one per event
        loop and process (asyncio connections belong to the loop that opened them)."""
        loop = asyncio.get_running_loop()
        sync_pool = getattr(self._call(lambda c: c), "connection_pool", None)
        if sync_pool is None or sync_pool.connection_class.__name__ not in _ASYNC_CONNECTIONS:
            return None
        config = (id(sync_pool), os.getpid())
        per_loop = _async_clients.setdefault(loop, {})
        client = per_loop.get(config)
        if client is None:
            client = per_loop[config] = async_client_like(sync_pool)
        return client
