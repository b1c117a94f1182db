"""Any other Django cache, through ``cache.add`` (atomic on memcached and the database
cache), with the weaker guarantees stated in the documentation ("Choosing a backend"):
release and extend are a read then a write, ttl follows the cache's timeout precision,
fencing counters may be evicted
(the clock floor keeps tokens rising), waiters poll, and held locks cannot be listed.

Semaphores (``limit=N``) are N slot keys, each taken with ``cache.add`` (see "semaphore
slots" below), so at most N holders of one limit hold a key at once, by the slots alone.
An acquisition with limit N first counts the holders of every slot used so far (a
deploy that lowers N waits for the old holders), a read before the ``add``: across
different limits two acquirers may both count before either adds. An exclusive
acquisition ``add``s slot 0 (the exclusive lock's key), then, on a key that has been used
as a semaphore, reads the slots above it and gives slot 0 back if a semaphore holder holds
one (Redis and DatabaseLock count every holder atomically). Shared (read) locks are refused with
``NotImplementedError``: readers would need a count that ``add`` and ``incr`` cannot
keep atomically together with the writer's key (system check django_locks.W003).
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
    """Any other Django cache, through ``cache.add`` (its limits: the documentation,
    "Choosing a backend").

    A release or extend is a read followed by a write, not one atomic step: to keep the
    window from touching a newer holder, they act only while the lease has more than a
    safety margin left (``SAFETY_MARGIN_MS``, or a quarter of the ttl if that is less): a
    release closer to expiry leaves the entry to expire; such an extend reports the lease
    lost. Waiters poll.
    """

    supports_enumeration = False
    supports_shared = False
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
            f"Cache {backend.cache_alias!r} ({backend.cache_backend_class.__name__}) has no "
            "shared (read) locks: lock(..., shared=True) raises NotImplementedError on this "
            "alias. Exclusive locks and limit=N semaphores work.",
            hint="For shared locks use a Redis cache (django-redis or Django's RedisCache), "
                 "or DatabaseLock.",
            obj=where, id="django_locks.W003",
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

    # ------------------------------------------------------------------- semaphore slots
    # A semaphore of limit N is N slot keys: slot 0 is the exclusive lock's own key, slot i
    # (1 <= i < N) its own key; an acquisition takes the first free slot of its N with
    # cache.add. A holder of slot i > 0 also leaves an owner entry (token -> i), so that a
    # release or extend by token finds its slot; the largest N used (the high-water mark)
    # says how many slots get_holders and force_release look at.

    @staticmethod
    def _slot(keys: LockKeys, index: int) -> str:
        return keys.lock if index == 0 else f"{keys.lock}:{index}"

    @staticmethod
    def _owner_key(keys: LockKeys, token: str) -> str:
        return f"{keys.lock}:owner:{token}"

    @staticmethod
    def _slots_key(keys: LockKeys) -> str:
        return f"{keys.lock}:slots"

    def _live(self, state: Any, now_us: int) -> bool:
        return bool(state) and state["expires"] > now_us

    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        if mode.shared:
            raise NotImplementedError(
                f"LOCKS[{self.backend.alias!r}]: cache {self.backend.cache_alias!r} "
                f"({self.backend.cache_backend_class.__name__}) is used through the cache.add "
                "fallback, which has no shared (read) locks: use a Redis cache or DatabaseLock "
                "for shared=True (exclusive locks and limit=N semaphores work here)"
            )
        if mode.limit > 1:
            return self._call(lambda cache: self._acquire_slot(cache, keys, key, token, ttl, cid, mode))

        def acquire(cache: Any) -> Attempt:
            now_us = self._now_us()
            state = {"key": key, "token": token, "fence": 0, "cid": cid, "ttl": ttl,
                     "acquired": now_us, "expires": now_us + ttl * 1000}
            if not cache.add(keys.lock, state, timeout=self._timeout(ttl)):
                holder = cache.get(keys.lock)
                remaining = (holder["expires"] - self._now_us()) // 1000 if holder else 0
                return Attempt(None, max(remaining, 0))
            blocked = self._semaphore_holders_left(cache, keys)
            if blocked is not None:  # slot 0 was free, but semaphore holders hold the key
                cache.delete(keys.lock)  # this attempt's own entry, added just now
                return Attempt(None, blocked)
            state["fence"] = self._next_fence(cache, keys.fence)
            left_ms = (state["expires"] - self._now_us()) // 1000
            if left_ms > self._margin_ms(state):
                cache.set(keys.lock, state, timeout=self._timeout(left_ms))
            return Attempt(self._info(state))

        return self._call(acquire)

    def _semaphore_holders_left(self, cache: Any, keys: LockKeys) -> int | None:
        """After an exclusive ``add`` of slot 0: None if no semaphore holder holds a slot
        above it (the key was never used as a semaphore costs one read), else the ms until
        the last of them expires. Checked after the ``add``, so a semaphore holder admitted
        before it is always seen; one admitted after it joined an exclusive holder, which
        its limit allows."""
        high_water = cache.get(self._slots_key(keys)) or 1
        if high_water <= 1:
            return None
        now_us = self._now_us()
        found = cache.get_many([self._slot(keys, i) for i in range(1, high_water)])
        expiries = [state["expires"] for state in found.values() if self._live(state, now_us)]
        return max((max(expiries) - now_us) // 1000, 0) if expiries else None

    def _acquire_slot(
        self, cache: Any, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None,
        mode: Mode,
    ) -> Attempt:
        """A semaphore attempt: admitted while fewer than ``mode.limit`` holders hold the
        key (counted over every slot used), into the first free of its first N slots."""
        slots = [self._slot(keys, i) for i in range(mode.limit)]
        slots_key = self._slots_key(keys)
        found = cache.get_many([*slots, slots_key])
        high_water = found.pop(slots_key, None) or 1
        if high_water > mode.limit:  # holders of a larger limit may sit above our slots
            found.update(cache.get_many([self._slot(keys, i) for i in range(mode.limit, high_water)]))
        elif high_water < mode.limit:  # for counting and listing; a race may keep it lower, briefly
            cache.set(slots_key, mode.limit, timeout=None)
        now_us = self._now_us()
        expiries = sorted(state["expires"] for state in found.values() if self._live(state, now_us))
        if len(expiries) >= mode.limit:
            # Admitted once len - limit + 1 of them have gone.
            return Attempt(None, max((expiries[len(expiries) - mode.limit] - now_us) // 1000, 0))
        state = {"key": key, "token": token, "fence": 0, "cid": cid, "ttl": ttl,
                 "acquired": now_us, "expires": now_us + ttl * 1000, "limit": mode.limit}
        for index, slot in enumerate(slots):
            if self._live(found.get(slot), now_us):
                continue
            if not cache.add(slot, state, timeout=self._timeout(ttl)):
                continue  # taken meanwhile
            state["fence"] = self._next_fence(cache, keys.fence)
            left_ms = (state["expires"] - self._now_us()) // 1000
            if left_ms > self._margin_ms(state):
                cache.set(slot, state, timeout=self._timeout(left_ms))
                if index:
                    cache.set(self._owner_key(keys, token), index, timeout=self._timeout(left_ms))
            return Attempt(self._info(state))
        return Attempt(None, 0)  # every free slot was taken meanwhile: try again soon

    def _holder_with_margin(self, cache: Any, keys: LockKeys, token: str) -> tuple[str, dict | None, bool]:
        """The slot ``token`` holds, its state (None if not held) and whether it is safe to
        write (more than the safety margin left)."""
        slot = keys.lock
        holder = cache.get(slot)
        if not holder or holder["token"] != token:
            index = cache.get(self._owner_key(keys, token))
            if not index:
                return slot, None, False
            slot = self._slot(keys, index)
            holder = cache.get(slot)
        now_us = self._now_us()  # one reading for both questions
        if not holder or holder["token"] != token or holder["expires"] <= now_us:
            return slot, None, False
        return slot, holder, (holder["expires"] - now_us) // 1000 > self._margin_ms(holder)

    def _margin_ms(self, state: dict[str, Any]) -> int:
        return min(self.SAFETY_MARGIN_MS, state["ttl"] // 4)

    def release(self, keys: LockKeys, token: str) -> bool:
        def release(cache: Any) -> bool:
            slot, holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is not None and safe:
                cache.delete(slot)
                if slot != keys.lock:
                    cache.delete(self._owner_key(keys, token))
            return holder is not None

        return self._call(release)

    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        def extend(cache: Any) -> int | None:
            slot, holder, safe = self._holder_with_margin(cache, keys, token)
            if holder is None or not safe:
                return None
            holder["expires"] = self._now_us() + ttl * 1000
            holder["ttl"] = ttl
            cache.set(slot, holder, timeout=self._timeout(ttl))
            if slot != keys.lock:
                cache.touch(self._owner_key(keys, token), timeout=self._timeout(ttl))
            return holder["expires"]

        return self._call(extend)

    def _all_slots(self, cache: Any, keys: LockKeys) -> list[str]:
        return [self._slot(keys, i) for i in range(cache.get(self._slots_key(keys)) or 1)]

    def force_release(self, keys: LockKeys) -> bool:
        def force_release(cache: Any) -> bool:
            slots = self._all_slots(cache, keys)
            found = cache.get_many(slots)
            # The holders' owner entries go with them (release deletes its own): left to
            # their timeouts, they would fill a cache that culls (LocMemCache's MAX_ENTRIES)
            # and push out live locks.
            owners = [self._owner_key(keys, state["token"]) for slot, state in found.items()
                      if slot != keys.lock and state]
            cache.delete_many(slots + owners)
            now_us = self._now_us()
            return any(self._live(state, now_us) for state in found.values())

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
            limit=state.get("limit", 1),
        )

    def holders(self, keys: LockKeys) -> list[LockInfo]:
        found = self._call(lambda cache: cache.get_many(self._all_slots(cache, keys)))
        now_us = self._now_us()
        return [self._info(state, now_us) for state in found.values() if self._live(state, now_us)]

    def held(self) -> list[LockInfo]:
        raise NotImplementedError(
            f"LOCKS[{self.backend.alias!r}]: cache {self.backend.cache_alias!r} cannot list its "
            "keys, so held locks cannot be enumerated (only Redis caches can)"
        )


