"""What a CacheLock storage client does: the interface both clients implement.

:class:`~django_locks.backends.cache.CacheLock` keeps the policy (validation, waiting,
bookkeeping: all in :class:`~django_locks.backends.base.BaseLock`) and hands every
storage operation to one client, chosen from the cache's class, the way django-redis's
``RedisCache`` hands its work to ``CLIENT_CLASS``.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import TYPE_CHECKING, NamedTuple

from django.core.checks import CheckMessage

from django_locks.exceptions import LockBackendError
from django_locks.values import Attempt, LockInfo, Mode, lock_holder

if TYPE_CHECKING:
    from django_locks.backends.cache import CacheLock


class LockKeys(NamedTuple):
    """The cache keys of one lock: its holders, its fencing counter, its wake-up list, its
    writer mark (a client without wake-ups or marks leaves those empty)."""

    lock: str
    fence: str
    wake: str
    mark: str = ""


class CacheLockClient(abc.ABC):
    """Storage operations of a CacheLock on one kind of cache (see BaseLock's storage
    operations for what each promises)."""

    #: Whether :meth:`held` can list what is held.
    supports_enumeration: bool = True
    #: Whether shared (read) locks work on this client.
    supports_shared: bool = True
    #: Whether the cache lives in this process only (LocMemCache).
    process_local: bool = False
    #: Whether the async operations await their I/O in the event loop (BaseLock.native_async).
    native_async: bool = False

    def __init__(self, backend: CacheLock) -> None:
        self.backend = backend

    @classmethod
    def check(cls, backend: CacheLock) -> list[CheckMessage]:
        """System check messages about using this client for ``backend``'s cache."""
        return []

    @abc.abstractmethod
    def keys(self, key: str) -> LockKeys:
        """The cache keys of lock ``key``."""

    @abc.abstractmethod
    def try_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        """One atomic attempt to add ``token`` as a holder in ``mode`` (see
        ``BaseLock._try_acquire``)."""

    @abc.abstractmethod
    def release(self, keys: LockKeys, token: str) -> bool:
        """Free the lock if ``token`` holds it. True if it did."""

    @abc.abstractmethod
    def extend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        """Reset the lock's life to ``ttl`` ms if ``token`` holds it: the new expiry in µs."""

    @abc.abstractmethod
    def force_release(self, keys: LockKeys) -> bool:
        """Free the lock whoever holds it. True if something was held."""

    @abc.abstractmethod
    def holders(self, keys: LockKeys) -> list[LockInfo]:
        """Every live holder of the lock."""

    def get(self, keys: LockKeys) -> LockInfo | None:
        """The exclusive holder, or of several the one that expires last; or None."""
        return lock_holder(self.holders(keys))

    @abc.abstractmethod
    def held(self) -> list[LockInfo]:
        """Every held lock of this cache (only if :attr:`supports_enumeration`)."""

    def unmark(self, keys: LockKeys, token: str) -> None:  # noqa: B027 - optional
        """Remove the writer mark of the waiter ``token`` that gave up, if it is its own.
        Default: nothing (a client without marks)."""

    # Async storage operations (BaseLock's _atry_acquire, _arelease, _aextend, _aunmark).
    # Default: the sync operation in a worker thread; a client that can await its I/O in
    # the event loop overrides them (RedisLockClient).

    async def atry_acquire(
        self, keys: LockKeys, key: str, token: str, ttl: int, cid: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        return await self.backend._in_worker(self.try_acquire)(keys, key, token, ttl, cid, mode,
                                                               waiter)

    async def arelease(self, keys: LockKeys, token: str) -> bool:
        return await self.backend._in_worker(self.release)(keys, token)

    async def aextend(self, keys: LockKeys, token: str, ttl: int) -> int | None:
        return await self.backend._in_worker(self.extend)(keys, token, ttl)

    async def aunmark(self, keys: LockKeys, token: str) -> None:
        await self.backend._in_worker(self.unmark)(keys, token)

    def after_fork_in_child(self) -> None:  # noqa: B027 - optional
        """In a forked child: drop what this client opened in the parent, never closing it
        (that could talk on the parent's connections). Default: nothing."""

    def retryable(self, error: LockBackendError) -> bool:
        """Whether a waiter may retry through ``error`` (a failover that ends by itself)."""
        return False

    def wait(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """Block at most ``seconds`` or until the lock may be free. Default: poll backoff."""
        time.sleep(self.backend._poll_delay(seconds, waits))

    def waits_attempt(self, mode: Mode) -> bool:
        """Whether a waiter in ``mode`` sends its next attempt with its wait
        (:meth:`wait_then_attempt`). Default: no."""
        return False

    def wait_then_attempt(
        self, keys: LockKeys, seconds: float, waits: int, key: str, token: str, ttl: int,
        cid: str | None, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """:meth:`wait`, then the next attempt in the same round trip: its answer, or None
        if it only waited (the caller then attempts as usual). Default: it only waits."""
        self.wait(keys, seconds, waits)
        return None

    async def await_then_attempt(
        self, keys: LockKeys, seconds: float, waits: int, key: str, token: str, ttl: int,
        cid: str | None, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """:meth:`wait_then_attempt` for async waiters, holding no thread."""
        await self.await_release(keys, seconds, waits)
        return None

    async def await_release(self, keys: LockKeys, seconds: float, waits: int) -> None:
        """:meth:`wait` for async waiters, holding no thread. Default: poll backoff."""
        await asyncio.sleep(self.backend._poll_delay(seconds, waits))
