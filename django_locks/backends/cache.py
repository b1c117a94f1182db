"""CacheLock: locks in a Django cache. OPTIONS: ``cache`` (cache alias, default "default").

Two client layers sit behind the same backend, chosen from the cache's BACKEND:

* :class:`RedisLockClient`, for django-redis (``django_redis.cache.RedisCache``) and
  Django's own ``django.core.cache.backends.redis.RedisCache``: Redis used natively
  through the cache's raw redis-py client. Acquire, release and extend are one round
  trip each (one Lua script). A waiting acquirer blocks on a wake-up list that release
  pushes to (BLPOP), bounded by the holder's remaining life, so it is woken by a release
  at once and by an expiry on time. All keys of one lock share a Redis Cluster hash slot.
* :class:`CacheAddLockClient`, for any other cache: built on ``cache.add`` (atomic on
  memcached and the database cache), with the weaker guarantees stated in the README.
  ``DummyCache`` is refused.

Keys go through the cache's key function (KEY_PREFIX, VERSION).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.checks import CheckMessage, Warning
from django.utils.module_loading import import_string

from django_locks.backends.base import Attempt, BaseLock, LockInfo
from django_locks.exceptions import LockBackendError

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

# ----------------------------------------------------------------------------- Lua scripts

# Takes the lock only if no one holds it (an expired lock's hash is gone), with a
# millisecond expiry, and advances the key's fencing counter to max(last + 1, server
# clock in µs) in the same step, so tokens rise across releases, expiries and restarts.
# Clears stale wake-ups. Returns {fencing token, acquired µs} or {"0", holder's pttl}.
ACQUIRE_SCRIPT = """
local remaining = redis.call('PTTL', KEYS[1])
if remaining ~= -2 then return {'0', tostring(remaining)} end
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
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
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


class _Script:
    """A Lua script run by EVALSHA, loaded with EVAL when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except _redis_errors().NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)


def _redis_errors() -> Any:
    """redis.exceptions (redis is an optional dependency: imported on first use)."""
    global _REDIS_EXCEPTIONS
    if _REDIS_EXCEPTIONS is None:
        import redis.exceptions

        _REDIS_EXCEPTIONS = redis.exceptions
    return _REDIS_EXCEPTIONS


_REDIS_EXCEPTIONS: Any = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _LockKeys:
    """The cache keys of one lock."""

    def __init__(self, lock: str, fence: str, wake: str) -> None:
        self.lock, self.fence, self.wake = lock, fence, wake

    @classmethod
    def for_redis(cls, make_key: Callable[[str], str], key: str) -> _LockKeys:
        """Full Redis keys; ``{key}`` is a hash tag, so the three share a cluster slot."""
        base = f"django_locks:{{{key}}}"
        return cls(make_key(base + ":lock"), make_key(base + ":fence"), make_key(base + ":wake"))

    @classmethod
    def for_cache_api(cls, key: str) -> _LockKeys:
        """Keys for the cache API (which applies the key function itself), hashed so that
        any lock key is a valid key on every cache, memcached included."""
        base = "django_locks:" + hashlib.sha256(key.encode()).hexdigest()
        return cls(base + ":lock", base + ":fence", "")


# ----------------------------------------------------------------------------- client layers


class RedisLockClient:
    """Redis used natively through the cache's raw redis-py client."""

    supports_enumeration = True

    acquire_script = _Script(ACQUIRE_SCRIPT)
    release_script = _Script(RELEASE_SCRIPT)
    extend_script = _Script(EXTEND_SCRIPT)
    force_release_script = _Script(FORCE_RELEASE_SCRIPT)

    def __init__(self, backend: CacheLock, get_client: Callable[[Any], Any]) -> None:
        self.backend = backend
        self._get_client = get_client
        self._client: Any = None

    def get_client(self) -> Any:
        """The raw redis-py client (thread-safe; one per backend instance is enough)."""
        if self._client is None:
            self._client = self._get_client(self.backend.cache)
        return self._client

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        try:
            return operation(self.get_client())
        except (_redis_errors().RedisError, OSError) as e:
            raise LockBackendError(
                f"LOCKS[{self.backend.alias!r}]: Redis behind cache "
                f"{self.backend.cache_alias!r} failed: {e}"
            ) from e

    def try_acquire(self, keys: _LockKeys, key: str, token: str, ttl: int, cid: str | None) -> Attempt:
        fence, second = self._call(
            lambda c: self.acquire_script(
                c, [keys.lock, keys.fence, keys.wake], [key, token, ttl, cid or "", FENCE_GRACE_MS]
            )
        )
        if _text(fence) == "0":
            return Attempt(None, max(int(_text(second)), 0))
        acquired_us = int(_text(second))
        return Attempt(
            LockInfo(
                key=key,
                token=token,
                fencing_token=int(_text(fence)),
                correlation_id=cid,
                acquired_at_us=acquired_us,
                expires_at_us=acquired_us + ttl * 1000,
            )
        )

    def release(self, keys: _LockKeys, token: str) -> bool:
        return self._call(
            lambda c: self.release_script(c, [keys.lock, keys.wake], [token, WAKE_TTL_MS])
        ) == 1

    def extend(self, keys: _LockKeys, token: str, ttl: int) -> int | None:
        expires_us = int(_text(self._call(
            lambda c: self.extend_script(c, [keys.lock, keys.fence], [token, ttl, FENCE_GRACE_MS])
        )))
        return expires_us or None

    def force_release(self, keys: _LockKeys) -> bool:
        return self._call(
            lambda c: self.force_release_script(c, [keys.lock, keys.wake], [WAKE_TTL_MS])
        ) == 1

    @staticmethod
    def _info(fields: Any) -> LockInfo | None:
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
        )

    def get(self, keys: _LockKeys) -> LockInfo | None:
        return self._info(self._call(lambda c: c.hmget(keys.lock, LOCK_FIELDS)))

    def held(self) -> list[LockInfo]:
        sentinel = "\x00"  # cannot occur in a key or a prefix made by Django
        pattern = _glob_escape(self.backend.make_key(f"django_locks:{{{sentinel}}}:lock"))
        pattern = pattern.replace(sentinel, "*")

        def scan(client: Any) -> list[Any]:
            found: list[Any] = []
            # SCAN walks the keyspace in small steps, never blocking the server (no KEYS).
            names = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(names), 500):
                pipe = client.pipeline(transaction=False)
                for name in names[start:start + 500]:
                    pipe.hmget(name, LOCK_FIELDS)
                found.extend(pipe.execute())
            return found

        # A lock that expires between SCAN and HMGET reads as all None and is skipped.
        return [info for info in map(self._info, self._call(scan)) if info is not None]

    def wait(self, keys: _LockKeys, seconds: float) -> None:
        client = self.get_client()
        block = min(seconds, MAX_BLOCK_SECONDS)
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            # A blocking read must end before the client's socket timeout does.
            block = min(block, socket_timeout - BLOCK_TIMEOUT_SLACK, socket_timeout / 2)
        if block < 0.001:  # too short to block on the server: a short sleep instead
            time.sleep(min(max(block, 0.001), seconds, 0.01))
            return
        self._call(lambda c: c.blpop([keys.wake], timeout=round(block, 3)))


class CacheAddLockClient:
    """Any other Django cache, through ``cache.add`` (see the README for its limits).

    A release or extend is a read followed by a write, not one atomic step: to keep the
    window from touching a newer holder, they act only while the lease has more than a
    safety margin left (``SAFETY_MARGIN_MS``, or a quarter of the ttl if that is less): a
    release closer to expiry leaves the entry to expire; such an extend reports the lease
    lost. Waiters poll.
    """

    supports_enumeration = False
    SAFETY_MARGIN_MS = 500

    def __init__(self, backend: CacheLock) -> None:
        self.backend = backend
        from django.core.cache.backends.memcached import BaseMemcachedCache

        # memcached truncates timeouts to whole seconds: round up there.
        self.whole_seconds = isinstance(backend.cache, BaseMemcachedCache)

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        try:
            return operation(self.backend.cache)
        except (ValueError, TypeError):
            raise
        except Exception as e:
            raise LockBackendError(
                f"LOCKS[{self.backend.alias!r}]: cache {self.backend.cache_alias!r} failed: {e}"
            ) from e

    def _timeout(self, ttl_ms: int) -> float:
        return math.ceil(ttl_ms / 1000) if self.whole_seconds else ttl_ms / 1000

    @staticmethod
    def _now_us() -> int:
        return time.time_ns() // 1000

    def _next_fence(self, cache: Any, fence_key: str) -> int:
        try:
            return cache.incr(fence_key)
        except ValueError:  # no counter (new key, or evicted): start from the clock
            cache.add(fence_key, self._now_us(), timeout=None)
            return cache.incr(fence_key)

    def try_acquire(self, keys: _LockKeys, key: str, token: str, ttl: int, cid: str | None) -> Attempt:
        def acquire(cache: Any) -> Attempt:
            now_us = self._now_us()
            state = {"key": key, "token": token, "fence": 0, "cid": cid, "ttl": ttl,
                     "acquired": now_us, "expires": now_us + ttl * 1000}
            if not cache.add(keys.lock, state, timeout=self._timeout(ttl)):
                holder = cache.get(keys.lock)
                remaining = (holder["expires"] - self._now_us()) // 1000 if holder else 0
                return Attempt(None, max(remaining, 0))
            state["fence"] = self._next_fence(cache, keys.fence)
            left_ms = (state["expires"] - self._now_us()) // 1000
            if left_ms > self._margin_ms(state):
                cache.set(keys.lock, state, timeout=self._timeout(left_ms))
            return Attempt(self._info(state))

        return self._call(acquire)

    def _holder_with_margin(self, cache: Any, keys: _LockKeys, token: str) -> tuple[dict | None, bool]:
        holder = cache.get(keys.lock)
        if not holder or holder["token"] != token or holder["expires"] <= self._now_us():
            return None, False
        return holder, (holder["expires"] - self._now_us()) // 1000 > self._margin_ms(holder)

    def _margin_ms(self, state: dict[str, Any]) -> int:
        return min(self.SAFETY_MARGIN_MS, state["ttl"] // 4)

    def release(self, keys: _LockKeys, token: str) -> bool:
        def release(cache: Any) -> bool:
            holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is not None and safe:
                cache.delete(keys.lock)
            return holder is not None

        return self._call(release)

    def extend(self, keys: _LockKeys, token: str, ttl: int) -> int | None:
        def extend(cache: Any) -> int | None:
            holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is None or not safe:
                return None
            holder["expires"] = self._now_us() + ttl * 1000
            holder["ttl"] = ttl
            cache.set(keys.lock, holder, timeout=self._timeout(ttl))
            return holder["expires"]

        return self._call(extend)

    def force_release(self, keys: _LockKeys) -> bool:
        def force_release(cache: Any) -> bool:
            holder = cache.get(keys.lock)
            cache.delete(keys.lock)
            return bool(holder) and holder["expires"] > self._now_us()

        return self._call(force_release)

    @staticmethod
    def _info(state: dict[str, Any]) -> LockInfo:
        return LockInfo(
            key=state["key"],
            token=state["token"],
            fencing_token=state["fence"],
            correlation_id=state["cid"],
            acquired_at_us=state["acquired"],
            expires_at_us=state["expires"],
        )

    def get(self, keys: _LockKeys) -> LockInfo | None:
        holder = self._call(lambda cache: cache.get(keys.lock))
        if not holder or holder["expires"] <= self._now_us():
            return None
        return self._info(holder)

    def held(self) -> list[LockInfo]:
        raise NotImplementedError(
            f"LOCKS[{self.backend.alias!r}]: cache {self.backend.cache_alias!r} cannot list its "
            "keys, so held locks cannot be enumerated (only Redis caches can)"
        )


# ----------------------------------------------------------------------------- the backend


def _redis_client_getter(backend_cls: type) -> Callable[[Any], Any] | None:
    """How to get a raw redis-py client from a cache of this class, if it is Redis."""
    try:
        from django_redis.cache import RedisCache as DjangoRedisCache
    except ImportError:
        DjangoRedisCache = None
    if DjangoRedisCache is not None and issubclass(backend_cls, DjangoRedisCache):
        return lambda cache: cache.client.get_client(write=True)
    try:
        from django.core.cache.backends.redis import RedisCache
    except ImportError:  # pragma: no cover - Django without redis support
        return None
    if issubclass(backend_cls, RedisCache):
        return lambda cache: cache._cache.get_client(write=True)
    return None


class CacheLock(BaseLock):
    """Locks in a Django cache: native on Redis, ``cache.add`` elsewhere."""

    option_names = frozenset({"cache"})
    poll_interval_min = 0.005
    poll_interval_max = 0.100

    def configure(self, options: dict[str, Any]) -> None:
        cache_alias = options.get("cache", "default")
        if not isinstance(cache_alias, str):
            raise self._invalid(
                f"OPTIONS 'cache' must be a cache alias (str), not {cache_alias!r}",
                "django_locks.E002",
            )
        if cache_alias not in caches.settings:
            raise self._invalid(
                f"OPTIONS 'cache' names cache {cache_alias!r}, not in CACHES", "django_locks.E004"
            )
        backend_path = caches.settings[cache_alias].get("BACKEND", "")
        try:
            backend_cls = import_string(backend_path)
        except ImportError as e:
            raise self._invalid(
                f"cache {cache_alias!r} has an unusable BACKEND: {e}", "django_locks.E004"
            ) from e
        if issubclass(backend_cls, DummyCache):
            raise self._invalid(
                f"cache {cache_alias!r} is a DummyCache, which stores nothing: it cannot hold locks",
                "django_locks.E005",
            )
        self.cache_alias = cache_alias
        self.cache_backend_class = backend_cls
        self._cache: Any = None
        self._key_cache: dict[str, _LockKeys] = {}
        get_client = _redis_client_getter(backend_cls)
        self.native = get_client is not None
        self.client: RedisLockClient | CacheAddLockClient = (
            RedisLockClient(self, get_client) if get_client else CacheAddLockClient(self)
        )
        self.supports_enumeration = self.client.supports_enumeration

    @property
    def cache(self) -> Any:
        """This alias's cache. Resolved once per backend instance (a Lease may use it from
        another thread: the Redis clients and key functions behind it are thread-safe)."""
        if self._cache is None:
            self._cache = caches[self.cache_alias]
        return self._cache

    def check(self) -> list[CheckMessage]:
        messages: list[CheckMessage] = []
        where = f"LOCKS[{self.alias!r}]"
        if issubclass(self.cache_backend_class, LocMemCache):
            messages.append(Warning(
                f"Cache {self.cache_alias!r} is a LocMemCache: its locks are local "
                "to one process and not shared between processes or servers.",
                hint="Use a Redis cache (django-redis or Django's RedisCache), or DatabaseLock.",
                obj=where, id="django_locks.W001",
            ))
        if not self.native:
            messages.append(Warning(
                f"Cache {self.cache_alias!r} ({self.cache_backend_class.__name__}) is used "
                "through the generic cache.add fallback: release and extend are not atomic, "
                "ttl follows the cache's timeout precision, fencing counters may be evicted "
                "(the clock floor keeps tokens rising), waiters poll, and held locks cannot be "
                "listed.",
                hint="Use a Redis cache for native locks, or DatabaseLock.",
                obj=where, id="django_locks.W002",
            ))
        return messages

    def make_key(self, key: str) -> str:
        return self.cache.make_key(key)

    #: How many keys' cache keys are remembered per instance (keys repeat: "report:{pk}").
    KEY_CACHE_SIZE = 1024

    def _keys(self, key: str) -> _LockKeys:
        keys = self._key_cache.get(key)
        if keys is None:
            if len(self._key_cache) >= self.KEY_CACHE_SIZE:
                self._key_cache.clear()
            if self.native:
                keys = _LockKeys.for_redis(self.cache.make_key, key)
            else:
                keys = _LockKeys.for_cache_api(key)
            self._key_cache[key] = keys
        return keys

    # ----------------------------------------------------------------------- storage operations

    def _try_acquire(self, key: str, token: str, ttl: int, correlation_id: str | None) -> Attempt:
        return self.client.try_acquire(self._keys(key), key, token, ttl, correlation_id)

    def _release(self, key: str, token: str) -> bool:
        return self.client.release(self._keys(key), token)

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        return self.client.extend(self._keys(key), token, ttl)

    def _force_release(self, key: str) -> bool:
        return self.client.force_release(self._keys(key))

    def _get(self, key: str) -> LockInfo | None:
        return self.client.get(self._keys(key))

    def _held(self) -> list[LockInfo]:
        return self.client.held()

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        if self.native:
            self.client.wait(self._keys(key), seconds)
        else:
            super()._wait_for_release(key, seconds, waits)
