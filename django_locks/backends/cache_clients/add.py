"""Any other Django cache, through ``cache.add`` (atomic on memcached and the database
cache), with the weaker guarantees stated in the README: release and extend are a read
then a write, ttl follows the cache's timeout precision, fencing counters may be evicted
(the clock floor keeps tokens rising), waiters poll, and held locks cannot be listed.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.core.checks import CheckMessage, Warning

from django_locks.backends.cache_clients.base import CacheLockClient, LockKeys
from django_locks.exceptions import LockBackendError
from django_locks.values import Attempt, LockInfo, Mode

if TYPE_CHECKING:
    from django_locks.backends.cache import CacheLock


class CacheAddLockClient(CacheLockClient):
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
        super().__init__(backend)
        # memcached truncates timeouts to whole seconds: round up there.
        self.whole_seconds = issubclass(backend.cache_backend_class, BaseMemcachedCache)
        self.process_local = issubclass(backend.cache_backend_class, LocMemCache)

    @classmethod
    def check(cls, backend: CacheLock) -> list[CheckMessage]:
        messages: list[CheckMessage] = []
        where = f"LOCKS[{backend.alias!r}]"
        if issubclass(backend.cache_backend_class, LocMemCache):
            messages.append(Warning(
                f"Cache {backend.cache_alias!r} is a LocMemCache: its locks are local "
                "to one process and not shared between processes or servers.",
                hint="Use a Redis cache (django-redis or Django's RedisCache), or DatabaseLock.",
                obj=where, id="django_locks.W001",
            ))
        messages.append(Warning(
            f"Cache {backend.cache_alias!r} ({backend.cache_backend_class.__name__}) is used "
            "through the generic cache.add fallback: release and extend are not atomic, "
            "ttl follows the cache's timeout precision, fencing counters may be evicted "
            "(the clock floor keeps tokens rising), waiters poll, and held locks cannot be "
            "listed.",
            hint="Use a Redis cache for native locks, or DatabaseLock.",
            obj=where, id="django_locks.W002",
        ))
        return messages

    def keys(self, key: str) -> LockKeys:
        """Keys for the cache API (which applies the key function itself), hashed so that
        any lock key is a valid key on every cache, memcached included."""
        base = "django_locks:" + hashlib.sha256(key.encode()).hexdigest()
        return LockKeys(base + ":lock", base + ":fence", "")

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

    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if not mode.exclusive:
            raise NotImplementedError("shared locks and semaphores: not yet on this client")
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

    def _holder_with_margin(self, cache: Any, keys: LockKeys, token: str) -> tuple[dict | None, bool]:
        holder = cache.get(keys.lock)
        if not holder or holder["token"] != token or holder["expires"] <= self._now_us():
            return None, False
        return holder, (holder["expires"] - self._now_us()) // 1000 > self._margin_ms(holder)

    def _margin_ms(self, state: dict[str, Any]) -> int:
        return min(self.SAFETY_MARGIN_MS, state["ttl"] // 4)

    def release(self, keys: LockKeys, token: str) -> bool:
        def release(cache: Any) -> bool:
            holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is not None and safe:
                cache.delete(keys.lock)
            return holder is not None

        return self._call(release)

    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        def extend(cache: Any) -> int | None:
            holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is None or not safe:
                return None
            holder["expires"] = self._now_us() + ttl * 1000
            holder["ttl"] = ttl
            cache.set(keys.lock, holder, timeout=self._timeout(ttl))
            return holder["expires"]

        return self._call(extend)

    def force_release(self, keys: LockKeys) -> bool:
        def force_release(cache: Any) -> bool:
            holder = cache.get(keys.lock)
            cache.delete(keys.lock)
            return bool(holder) and holder["expires"] > self._now_us()

        return self._call(force_release)

    @staticmethod
    def _info(state: dict[str, Any], now_us: int | None = None) -> LockInfo:
        return LockInfo(
            key=state["key"],
            token=state["token"],
            fencing_token=state["fence"],
            correlation_id=state["cid"],
            acquired_at_us=state["acquired"],
            expires_at_us=state["expires"],
            # This client's times are all the application server's clock.
            remaining_ms=None if now_us is None else (state["expires"] - now_us) // 1000,
        )

    def holders(self, keys: LockKeys) -> list[LockInfo]:
        info = self.get(keys)
        return [] if info is None else [info]

    def get(self, keys: LockKeys) -> LockInfo | None:
        holder = self._call(lambda cache: cache.get(keys.lock))
        now_us = self._now_us()
        if not holder or holder["expires"] <= now_us:
            return None
        return self._info(holder, now_us)

    def held(self) -> list[LockInfo]:
        raise NotImplementedError(
            f"LOCKS[{self.backend.alias!r}]: cache {self.backend.cache_alias!r} cannot list its "
            "keys, so held locks cannot be enumerated (only Redis caches can)"
        )


