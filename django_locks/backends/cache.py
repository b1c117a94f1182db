"""CacheLock: locks in a Django cache. OPTIONS: ``cache`` (cache alias, default "default").

A thin facade, the way django-redis's ``RedisCache`` is over its ``CLIENT_CLASS``: the
policy (validation, waiting, bookkeeping) is :class:`~django_locks.backends.base.BaseLock`'s,
and every storage operation goes to one client of the interface
:class:`~django_locks.backends.cache_clients.base.CacheLockClient`, chosen from the cache's
BACKEND:

* :class:`~django_locks.backends.cache_clients.redis.RedisLockClient` for django-redis
  (``django_redis.cache.RedisCache``) and Django's own
  ``django.core.cache.backends.redis.RedisCache``: Redis used natively (Lua scripts,
  blocking waits on a wake-up list);
* :class:`~django_locks.backends.cache_clients.add.CacheAddLockClient` for any other
  cache, through ``cache.add``, with the weaker guarantees stated in the documentation ("Choosing a backend").

``DummyCache`` (stores nothing) and ``FileBasedCache`` (no atomic ``add``) are refused.
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.filebased import FileBasedCache
from django.core.checks import CheckMessage
from django.utils.module_loading import import_string

from django_locks.backends.base import BaseLock
from django_locks.backends.cache_clients.add import CacheAddLockClient
from django_locks.backends.cache_clients.base import CacheLockClient, LockKeys
from django_locks.backends.cache_clients.redis import RedisLockClient
from django_locks.exceptions import LockBackendError
from django_locks.values import Attempt, LockInfo, LockPage, Mode


def client_class_for(cache_class: type) -> type[CacheLockClient]:
    """The storage client for caches of this class."""
    return RedisLockClient if RedisLockClient.handles(cache_class) else CacheAddLockClient


class CacheLock(BaseLock):
    """Locks in a Django cache: native on Redis, ``cache.add`` elsewhere."""

    option_names = frozenset({"cache"})
    poll_interval_min = 0.005
    poll_interval_max = 0.100
    #: How many keys' cache keys are remembered per instance (keys repeat: "report:{pk}").
    KEY_CACHE_SIZE = 1024

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
        if issubclass(backend_cls, FileBasedCache):
            raise self._invalid(
                f"cache {cache_alias!r} is a FileBasedCache, which gives no mutual exclusion: its add() "
                "is a check then a write, so two processes can both take a lock (use Redis, "
                "memcached, the database cache, or DatabaseLock)",
                "django_locks.E009",
            )
        self.cache_alias = cache_alias
        self.cache_backend_class = backend_cls
        self._cache: Any = None
        self._key_cache: dict[str, LockKeys] = {}
        self.client: CacheLockClient = client_class_for(backend_cls)(self)
        self.supports_enumeration = self.client.supports_enumeration
        self.supports_shared = self.client.supports_shared
        self.process_local = self.client.process_local
        self.native_async = self.client.native_async

    @property
    def cache(self) -> Any:
        """This alias's cache. Resolved once per backend instance (a Lease may use it from
        another thread: the Redis clients and key functions behind it are thread-safe)."""
        if self._cache is None:
            self._cache = caches[self.cache_alias]
        return self._cache

    def _after_fork_in_child(self) -> None:
        """In a forked child: the cache is looked up again and the client drops its own
        clients (see the client's ``after_fork_in_child``)."""
        self._cache = None
        self.client.after_fork_in_child()
        super()._after_fork_in_child()

    def check(self) -> list[CheckMessage]:
        return type(self.client).check(self)

    def _keys(self, key: str) -> LockKeys:
        keys = self._key_cache.get(key)
        if keys is None:
            if len(self._key_cache) >= self.KEY_CACHE_SIZE:
                self._key_cache.clear()
            keys = self._key_cache[key] = self.client.keys(key)
        return keys

    # ----------------------------------------------------------------------- storage operations

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        return self.client.try_acquire(self._keys(key), key, token, ttl, correlation_id, mode, waiter)

    def _release(self, key: str, token: str) -> bool:
        return self.client.release(self._keys(key), token)

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        return self.client.extend(self._keys(key), token, ttl)

    async def _atry_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        return await self.client.atry_acquire(self._keys(key), key, token, ttl, correlation_id,
                                              mode, waiter)

    async def _arelease(self, key: str, token: str) -> bool:
        return await self.client.arelease(self._keys(key), token)

    async def _aextend(self, key: str, token: str, ttl: int) -> int | None:
        return await self.client.aextend(self._keys(key), token, ttl)

    async def _aunmark(self, key: str, token: str) -> None:
        await self.client.aunmark(self._keys(key), token)

    def _force_release(self, key: str) -> bool:
        return self.client.force_release(self._keys(key))

    def _get(self, key: str) -> LockInfo | None:
        return self.client.get(self._keys(key))

    def _holders(self, key: str) -> list[LockInfo]:
        return self.client.holders(self._keys(key))

    def _held(self) -> list[LockInfo]:
        return self.client.held()

    def _unmark(self, key: str, token: str) -> None:
        self.client.unmark(self._keys(key), token)

    def _waits_attempt(self, mode: Mode) -> bool:
        return self.client.waits_attempt(mode)

    def _wait_then_attempt(
        self, seconds: float, waits: int, key: str, ttl: int, correlation_id: str | None,
        token: str, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        attempt = self.client.wait_then_attempt(
            self._keys(key), seconds, waits, key, token, ttl, correlation_id, mode, waiter
        )
        if attempt is None:
            return None
        return self._answered(key, ttl, correlation_id, token, mode, attempt)

    async def _await_then_attempt(
        self, seconds: float, waits: int, key: str, ttl: int, correlation_id: str | None,
        token: str, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        attempt = await self.client.await_then_attempt(
            self._keys(key), seconds, waits, key, token, ttl, correlation_id, mode, waiter
        )
        if attempt is None:
            return None
        return await self._aanswered(key, ttl, correlation_id, token, mode, attempt)

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        self.client.wait(self._keys(key), seconds, waits)

    async def _await_release(self, key: str, seconds: float, waits: int) -> None:
        await self.client.await_release(self._keys(key), seconds, waits)

    def _retryable(self, error: LockBackendError) -> bool:
        return self.client.retryable(error)

    def _held_page(self, prefix: str, cursor: str | None, limit: int) -> LockPage:
        """Paged by the client where it can (Redis: SCAN steps), else the default."""
        held_page = getattr(self.client, "held_page", None)
        page = held_page(prefix, cursor, limit) if held_page is not None else None
        return page if page is not None else super()._held_page(prefix, cursor, limit)
