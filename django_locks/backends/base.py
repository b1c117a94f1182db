"""The lock contract (:class:`BaseLock`) and the storage interface backends implement.

``docs/contract.md`` describes the contract in prose; ``docs/internals/acquisition.md``
explains how an acquisition is carried out. A backend subclasses :class:`BaseLock` and
implements the storage operations at the bottom (``_try_acquire``, ``_release``,
``_extend``, ``_force_release``, ``_holders``, ``_held``, ``_purge``; ``_unmark``, ``_get``,
``_wait_for_release`` and ``_await_release`` where it can do better than the default),
plus :meth:`BaseLock.close` if it keeps per-thread resources. They must be thread-safe and
act by token alone: a :class:`Lease` may be extended or released from another thread.
Async callers use ``_atry_acquire``, ``_arelease``, ``_aextend`` and ``_aunmark``: by
default the sync operation in a worker thread; a backend that awaits its I/O in the event
loop overrides them and sets :attr:`BaseLock.native_async` (CacheLock on Redis,
DatabaseLock on PostgreSQL through psycopg 3).

Argument validation lives in :mod:`django_locks.values`, the acquisition policy in
:mod:`django_locks.backends._acquire`, the held tokens and the settler in
:mod:`django_locks.backends._bookkeeping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage

from django_locks import signals
from django_locks.backends._acquire import Acquisition, aacquire, acquire
from django_locks.backends._bookkeeping import HeldTokens as HeldTokens
from django_locks.backends._bookkeeping import UnsettledAcquisitions as UnsettledAcquisitions
from django_locks.backends._bookkeeping import live_backends, unsettled
from django_locks.exceptions import (
    InvalidLockBackendError,
    LockBackendError,
    LockNotHeldError,
)
from django_locks.lease import Lease, _AcquiringLease
from django_locks.values import (
    EXCLUSIVE,
    MAX_CORRELATION_ID_LENGTH,
    MAX_KEY_LENGTH,
    MAX_MILLISECONDS,
    WRITER_RECHECK_MS,
    Attempt,
    LockInfo,
    LockPage,
    Milliseconds,
    Mode,
    datetime_from_us,
    key_cursor,
    lock_holder,
    page_of,
    validate_acquire_arguments,
    validate_correlation_id,
    validate_key,
    validate_mode,
    validate_owner,
    validate_page_arguments,
    validate_timeout,
    validate_ttl,
)

__all__ = [
    "MAX_CORRELATION_ID_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_MILLISECONDS",
    "Attempt",
    "BaseLock",
    "Lease",
    "LockInfo",
    "LockPage",
    "Mode",
    "validate_correlation_id",
    "validate_key",
    "validate_owner",
    "validate_timeout",
    "validate_ttl",
]

logger = logging.getLogger("django_locks")


class BaseLock:
    """Shared behaviour of every lock backend. Subclasses implement the storage operations."""

    #: Names accepted in this backend's OPTIONS.
    option_names: frozenset[str] = frozenset()
    #: Whether :meth:`held_locks` can list what is held.
    supports_enumeration: bool = True
    #: Whether ``shared=True`` acquisitions work (the ``cache.add`` fallback refuses them).
    supports_shared: bool = True
    #: Polling bounds of the default wait, in seconds (backends that are woken override it).
    poll_interval_min: float = 0.001
    poll_interval_max: float = 0.010
    #: Whether storage operations do I/O (then async callers run them in worker threads).
    does_io: bool = True
    #: Whether the async storage operations (_atry_acquire...) await their I/O in the event
    #: loop instead of a worker thread (CacheLock on Redis, DatabaseLock on PostgreSQL
    #: through psycopg 3). An async attempt is then awaited directly (cancelled
    #: mid-attempt, it still settles its answer and raises AnsweredAfterCancel); else it
    #: runs in a shielded task of its own, whose answer a cancelled call waits for
    #: (docs/internals/acquisition.md, "Cancellation").
    native_async: bool = False
    #: Whether expired holders stay in storage until :meth:`purge` (see :meth:`expired_locks`).
    keeps_expired_state: bool = False
    #: Whether locks live in this process only (MemoryLock, CacheLock on LocMemCache): no
    #: other process sees them and they end with it, so ``manage.py locks`` refuses to take them.
    process_local: bool = False
    #: Backoff bounds (s) of a waiter retrying through a passing backend failure.
    RETRY_INTERVAL_MIN: float = 0.05
    RETRY_INTERVAL_MAX: float = 0.5

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        self.alias = alias
        options = params.get("OPTIONS", {})
        if not isinstance(options, dict):
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}]['OPTIONS'] must be a dict, not {type(options).__name__}",
                "django_locks.E002",
            )
        unknown = sorted(set(options) - self.option_names)
        if unknown:
            accepted = ", ".join(sorted(self.option_names)) or "none"
            raise InvalidLockBackendError(
                f"LOCKS[{alias!r}]: unknown option(s) {', '.join(map(repr, unknown))} for "
                f"{type(self).__name__} (accepted: {accepted})",
                "django_locks.E002",
            )
        self._held_tokens = HeldTokens()
        self.configure(options)
        live_backends.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop this instance's per-process state (the tokens the parent
        holds are not this process's to release). Subclasses drop what they opened, never
        closing it (that would talk on the parent's connection), and call this."""
        self._held_tokens = HeldTokens()

    def configure(self, options: dict[str, Any]) -> None:
        """Read this backend's OPTIONS (already checked for unknown names)."""

    def _invalid(self, message: str, check_id: str) -> InvalidLockBackendError:
        return InvalidLockBackendError(
            f"LOCKS[{self.alias!r}] ({type(self).__name__}): {message}", check_id
        )

    def check(self) -> list[CheckMessage]:
        """System check messages about this alias's configuration (beyond hard errors)."""
        return []

    # ----------------------------------------------------------------------- the contract

    def try_acquire_lock(self, correlation_id: str | None, key: str, ttl: Milliseconds) -> bool:
        """One attempt, never waits. True: this instance now holds ``key`` for ``ttl`` ms."""
        key, ttl, _, correlation_id = validate_acquire_arguments(key, ttl, 0, correlation_id)
        return acquire(self._acquisition(key, ttl, 0, correlation_id, single_try=True)) is not None

    def acquire_lock(
        self, correlation_id: str | None, key: str, ttl: Milliseconds, timeout: Milliseconds
    ) -> None:
        """Try until this instance holds ``key`` or ``timeout`` ms have passed.

        Raises :class:`LockTimeoutError` then. ``timeout=0`` means one attempt.
        """
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        self._acquire(*arguments)

    def release_lock(
        self, correlation_id: str | None, key: str, *, owner: str | None = None
    ) -> None:
        """Release ``key``, held by this instance or, with ``owner=TOKEN``, by that token
        (any one holder of a shared key or semaphore).

        Raises :class:`LockNotHeldError` (leaving the lock exactly as it was) when the
        lock is not held by this instance / by ``owner``, and ``ValueError`` asking for
        ``owner`` when this instance holds several holders of ``key``.
        """
        correlation_id = validate_correlation_id(correlation_id)
        key, owner = validate_key(key), validate_owner(owner)
        token = owner if owner is not None else self._own_token(key)
        if not self.release_token(key, token, correlation_id):
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")

    def lock(
        self,
        key: str,
        ttl: Milliseconds,
        timeout: Milliseconds = 0,
        correlation_id: str | None = None,
        *,
        shared: bool = False,
        limit: int = 1,
    ) -> Lease:
        """Acquire ``key`` (waiting up to ``timeout`` ms) and return its :class:`Lease`.

        ``shared=True``: a read lock, held together with any other shared holders and
        never with a non-shared one. ``limit=N``: a counting semaphore, admitted while
        fewer than N holders hold the key. See :class:`~django_locks.values.Mode`.
        """
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        mode = validate_mode(shared, limit)
        return Lease(self, self._acquire(*arguments, mode), arguments[1])

    def force_release(self, key: str) -> bool:
        """Release every holder of ``key``. True if something was held."""
        key = validate_key(key)
        self._held_tokens.forget(key)
        released = self._force_release(key)
        if released:
            logger.warning("lock %r force-released (alias=%s)", key, self.alias)
        return released

    def get_lock(self, key: str) -> LockInfo | None:
        """The lock held now on ``key`` (its exclusive holder, or of several holders the
        one that expires last), or None."""
        return self._get(validate_key(key))

    def get_holders(self, key: str) -> list[LockInfo]:
        """Every holder of ``key`` now (one for an exclusive lock), soonest expiry first."""
        holders = self._holders(validate_key(key))
        return sorted(holders, key=lambda info: (info.expires_at_us, info.token))

    def held_locks(self) -> list[LockInfo]:
        """Every holder of every lock held now, soonest expiry first."""
        return sorted(self._held(), key=lambda info: (info.expires_at, info.key))

    def list_locks(self, *, prefix: str = "", cursor: str | None = None, limit: int = 100) -> LockPage:
        """One page of the locks held now: every live holder of up to ``limit`` keys that
        start with ``prefix``, from ``cursor`` (the ``next_cursor`` of the page before; None:
        the first page). See :class:`~django_locks.values.LockPage`.

        Paged at the backend where it can (DatabaseLock: by key, with a count; CacheLock on
        Redis: one SCAN step after another, keys in no particular order, no count), so a
        page costs about the same with 100 or 100,000 locks held. Like any listing by
        pages, a key acquired or released while paging may be listed or not.

        A bad argument raises ``ValueError`` (``TypeError`` for the wrong type) naming it,
        before the backend is asked anything.
        """
        prefix, cursor, limit = validate_page_arguments(prefix, cursor, limit)
        return self._held_page(prefix, cursor, limit)

    def close(self, **kwargs: Any) -> None:
        """Give back what this instance holds open for the calling thread.

        Called by :func:`django_locks.close_locks` when a request starts and ends (like
        ``BaseCache.close`` from ``close_caches``) and by a renewal thread that ends.
        Locks stay held. The default does nothing.
        """

    def purge(self) -> int:
        """Remove expired lock state where the backend keeps any. Returns how many entries."""
        return self._purge()

    def expired_locks(self, *, prefix: str = "", limit: int | None = None) -> list[LockInfo]:
        """Locks that expired without a release and whose state is kept until purged
        (``keeps_expired_state``), by expiry: those of keys starting with ``prefix``,
        the first ``limit`` of them, or all (None)."""
        validate_page_arguments(prefix, None, 1 if limit is None else limit)
        return []

    def extend_lock(
        self, correlation_id: str | None, key: str, ttl: Milliseconds, *, owner: str | None = None
    ) -> datetime:
        """Reset the life of ``key`` to ``ttl`` ms from now, for the lock this instance holds
        or, with ``owner=TOKEN``, the one that token holds (a lock taken by another process:
        ``manage.py locks acquire`` printed its token). Returns the new expiry, an aware UTC
        datetime by the backend's clock. The fencing token is kept.

        Raises :class:`LockNotHeldError` (leaving the lock exactly as it was) when the lock
        is not held by this instance / by ``owner``: never acquired, released, expired,
        taken over or force-released.
        """
        key, ttl = validate_key(key), validate_ttl(ttl)
        correlation_id, owner = validate_correlation_id(correlation_id), validate_owner(owner)
        token = owner if owner is not None else self._own_token(key)
        expires_at_us = self.extend_token(key, token, ttl, correlation_id)
        if expires_at_us is None:
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")
        return datetime_from_us(expires_at_us)

    # ----------------------------------------------------------------------- by token
    # What extend_lock, release_lock and Lease share: a storage operation on one holder,
    # this instance's bookkeeping, and the log line and signal, once. Arguments are
    # already validated.

    def extend_token(
        self, key: str, token: str, ttl: int, correlation_id: str | None = None
    ) -> int | None:
        """Reset the life of holder ``token`` of ``key`` to ``ttl`` ms. The new expiry (µs
        since the epoch, the backend's clock), or None when ``token`` no longer holds
        ``key`` (this instance then forgets it)."""
        return self._extended(key, token, ttl, correlation_id, self._extend(key, token, ttl))

    def _extended(
        self, key: str, token: str, ttl: int, correlation_id: str | None, expires_at_us: int | None
    ) -> int | None:
        """What follows an extend of holder ``token`` (:meth:`extend_token`)."""
        if expires_at_us is None:
            self._forget(key, token)
            return None
        self._held_tokens.renewed(key, token, ttl)
        logger.debug(
            "lock %r extended by %d ms (alias=%s, correlation_id=%s)",
            key, ttl, self.alias, correlation_id,
        )
        return expires_at_us

    def release_token(
        self,
        key: str,
        token: str,
        correlation_id: str | None = None,
        fencing_token: int | None = None,
    ) -> bool:
        """Remove holder ``token`` of ``key``. True if it held it (the release is then
        logged and ``lock_released`` sent); this instance forgets the token either way."""
        released = self._release(key, token)
        if self._released(key, token, correlation_id, released):
            signals.lock_released.send(
                sender=type(self), alias=self.alias, key=key, token=token,
                fencing_token=fencing_token, correlation_id=correlation_id,
            )
        return released

    def _released(self, key: str, token: str, correlation_id: str | None, released: bool) -> bool:
        """What follows a release of holder ``token`` (:meth:`release_token`): forget it,
        log a release. True if ``lock_released`` is to be sent."""
        self._forget(key, token)
        if not released:
            return False
        logger.debug(
            "lock %r released (alias=%s, correlation_id=%s)", key, self.alias, correlation_id
        )
        return bool(signals.lock_released.receivers)

    async def aextend_token(
        self, key: str, token: str, ttl: int, correlation_id: str | None = None
    ) -> int | None:
        """:meth:`extend_token` for async callers (:meth:`_aextend`)."""
        expires_at_us = await self._aextend(key, token, ttl)
        return self._extended(key, token, ttl, correlation_id, expires_at_us)

    async def arelease_token(
        self,
        key: str,
        token: str,
        correlation_id: str | None = None,
        fencing_token: int | None = None,
    ) -> bool:
        """:meth:`release_token` for async callers (:meth:`_arelease`)."""
        released = await self._arelease(key, token)
        if self._released(key, token, correlation_id, released):
            await self._asend(
                signals.lock_released, key=key, token=token, fencing_token=fencing_token,
                correlation_id=correlation_id,
            )
        return released

    async def _asend(self, signal: Any, **kwargs: Any) -> None:
        """Send ``signal`` from async code, as the sync path sends it: its receivers (sync
        code, which may do I/O) run in a worker thread if this backend does I/O. Only
        when it has receivers: without, no thread is used."""
        if signal.receivers:
            await self._in_worker(signal.send)(sender=type(self), alias=self.alias, **kwargs)

    # ----------------------------------------------------------------------- async API
    # Same arguments and errors. Each attempt, release and extend is the backend's async
    # storage operation (_atry_acquire, _arelease, _aextend): awaited in the event loop
    # where the backend can (CacheLock on Redis, DatabaseLock on PostgreSQL through
    # psycopg 3), else the sync one in a worker thread.
    # Waiting between attempts holds no thread (a BLPOP, a NOTIFY, an asyncio sleep).

    async def atry_acquire_lock(self, correlation_id: str | None, key: str, ttl: Milliseconds) -> bool:
        key, ttl, _, correlation_id = validate_acquire_arguments(key, ttl, 0, correlation_id)
        acquisition = self._acquisition(key, ttl, 0, correlation_id, single_try=True)
        return await aacquire(acquisition) is not None

    async def aacquire_lock(
        self, correlation_id: str | None, key: str, ttl: Milliseconds, timeout: Milliseconds
    ) -> None:
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        await self._aacquire(*arguments)

    async def arelease_lock(
        self, correlation_id: str | None, key: str, *, owner: str | None = None
    ) -> None:
        correlation_id = validate_correlation_id(correlation_id)
        key, owner = validate_key(key), validate_owner(owner)
        if owner is None and len(self._held_tokens.tokens_for(key)) > 1:
            # Which of several holders is this instance's asks the backend (_own_token).
            await self._in_worker(self.release_lock)(correlation_id, key)
            return
        token = owner if owner is not None else self._own_token(key)
        if not await self.arelease_token(key, token, correlation_id):
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")

    def alock(
        self,
        key: str,
        ttl: Milliseconds,
        timeout: Milliseconds = 0,
        correlation_id: str | None = None,
        *,
        shared: bool = False,
        limit: int = 1,
    ) -> _AcquiringLease:
        """``async with backend.alock(key, ttl) as lease:`` (or ``lease = await ...``).
        ``shared`` and ``limit`` as for :meth:`lock`."""
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        mode = validate_mode(shared, limit)

        async def acquire() -> Lease:
            return Lease(self, await self._aacquire(*arguments, mode), arguments[1])

        return _AcquiringLease(acquire)

    async def aextend_lock(
        self, correlation_id: str | None, key: str, ttl: Milliseconds, *, owner: str | None = None
    ) -> datetime:
        key, ttl = validate_key(key), validate_ttl(ttl)
        correlation_id, owner = validate_correlation_id(correlation_id), validate_owner(owner)
        if owner is None and len(self._held_tokens.tokens_for(key)) > 1:
            # Which of several holders is this instance's asks the backend (_own_token).
            return await self._in_worker(self.extend_lock)(correlation_id, key, ttl)
        token = owner if owner is not None else self._own_token(key)
        expires_at_us = await self.aextend_token(key, token, ttl, correlation_id)
        if expires_at_us is None:
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")
        return datetime_from_us(expires_at_us)

    def _in_worker(self, function: Any) -> Any:
        """``function`` as a coroutine function: in a worker thread if it does I/O."""
        if self.does_io:
            return sync_to_async(function, thread_sensitive=False)

        async def direct(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return direct

    # ----------------------------------------------------------------------- acquisition
    # The policy and its two loops are in _acquire; these are the backend's side of it.

    def _acquisition(
        self,
        key: str,
        ttl: int,
        timeout: int,
        correlation_id: str | None,
        mode: Mode = EXCLUSIVE,
        *,
        single_try: bool = False,
    ) -> Acquisition:
        # WRITER_RECHECK_MS is read here, at each call (tests lower it on this module).
        return Acquisition(
            self, key, ttl, timeout, correlation_id, mode,
            writer_recheck_ms=WRITER_RECHECK_MS, single_try=single_try,
        )

    def _acquire(
        self, key: str, ttl: int, timeout: int, correlation_id: str | None, mode: Mode = EXCLUSIVE
    ) -> LockInfo:
        """Attempt, wait for a release (or the holder's expiry), until the deadline."""
        info = acquire(self._acquisition(key, ttl, timeout, correlation_id, mode))
        assert info is not None  # a refusal at the deadline raised LockTimeoutError
        return info

    async def _aacquire(
        self, key: str, ttl: int, timeout: int, correlation_id: str | None, mode: Mode = EXCLUSIVE
    ) -> LockInfo:
        """:meth:`_acquire` for async callers (attempts by :meth:`_aattempt`, waits holding
        no thread)."""
        info = await aacquire(self._acquisition(key, ttl, timeout, correlation_id, mode))
        assert info is not None
        return info

    def _attempt(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode, waiter: bool
    ) -> Attempt:
        """One attempt; a win is remembered, logged and announced."""
        return self._answered(
            key, ttl, correlation_id, token, mode,
            self._try_acquire(key, token, ttl, correlation_id, mode, waiter),
        )

    def _wait_then_attempt(
        self, seconds: float, waits: int, key: str, ttl: int, correlation_id: str | None,
        token: str, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """A wait that carries the next attempt (:meth:`_waits_attempt`): its answer, bookkept
        as :meth:`_attempt` does, or None if it only waited. Default: it only waits."""
        self._wait_for_release(key, seconds, waits)
        return None

    async def _await_then_attempt(
        self, seconds: float, waits: int, key: str, ttl: int, correlation_id: str | None,
        token: str, mode: Mode, waiter: bool,
    ) -> Attempt | None:
        """:meth:`_wait_then_attempt` for async waiters, holding no thread."""
        await self._await_release(key, seconds, waits)
        return None

    def _answered(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode,
        attempt: Attempt,
    ) -> Attempt:
        """An attempt's answer; a win is remembered, logged and announced."""
        if attempt.info is not None and self._won(key, ttl, correlation_id, token, mode, attempt.info):
            signals.lock_acquired.send(
                sender=type(self), alias=self.alias, key=key, token=token,
                fencing_token=attempt.info.fencing_token, correlation_id=correlation_id,
            )
        return attempt

    async def _aattempt(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode, waiter: bool
    ) -> Attempt:
        """:meth:`_attempt` for async callers (:meth:`_atry_acquire`)."""
        return await self._aanswered(
            key, ttl, correlation_id, token, mode,
            await self._atry_acquire(key, token, ttl, correlation_id, mode, waiter),
        )

    async def _aanswered(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode,
        attempt: Attempt,
    ) -> Attempt:
        """:meth:`_answered` for async callers (``lock_acquired`` sent by :meth:`_asend`)."""
        if attempt.info is not None and self._won(key, ttl, correlation_id, token, mode, attempt.info):
            await self._asend(
                signals.lock_acquired, key=key, token=token,
                fencing_token=attempt.info.fencing_token, correlation_id=correlation_id,
            )
        return attempt

    def _won(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode, info: LockInfo
    ) -> bool:
        """An attempt won: remember and log it. True if ``lock_acquired`` is to be sent."""
        self._held_tokens.remember(key, token, ttl, mode.exclusive)
        logger.debug(
            "lock %r acquired for %d ms (alias=%s, correlation_id=%s, fencing_token=%s)",
            key, ttl, self.alias, correlation_id, info.fencing_token,
        )
        return bool(signals.lock_acquired.receivers)

    def _give_up_mark(self, key: str, token: str) -> None:
        """A non-shared waiter gives up: its writer mark, if still its own, goes now rather
        than holding readers back until it lapses."""
        try:
            self._unmark(key, token)
        except LockBackendError as e:
            logger.warning("lock %r: the writer mark of a waiter that gave up stays until it "
                           "lapses: %s (alias=%s)", key, e, self.alias)

    async def _agive_up_mark(self, key: str, token: str) -> None:
        """:meth:`_give_up_mark` for async callers (:meth:`_aunmark`)."""
        try:
            await self._aunmark(key, token)
        except LockBackendError as e:
            logger.warning("lock %r: the writer mark of a waiter that gave up stays until it "
                           "lapses: %s (alias=%s)", key, e, self.alias)

    def _unsettled(self, key: str, token: str, ttl: int) -> None:
        """A call gives up while an attempt of ``token`` may have won unseen: the settler
        releases it as soon as the backend answers."""
        unsettled.add(self, key, token, ttl)

    def _waiting(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Around a wait loop of ``key``: a backend that is woken by the release registers
        the waiter here (DatabaseLock on PostgreSQL). Default: nothing."""
        return contextlib.nullcontext()

    def _retryable(self, error: LockBackendError) -> bool:
        """Whether a waiter may retry through ``error`` (a failover, a restart) until its
        deadline. Default: no backend error is."""
        return False

    def _poll_delay(self, seconds: float, waits: int) -> float:
        """Jittered exponential backoff between attempts, at most ``seconds``."""
        interval = min(self.poll_interval_max, self.poll_interval_min * (2 ** min(waits, 16)))
        return min(seconds, interval * random.uniform(0.5, 1.0))

    # ----------------------------------------------------------------------- held tokens

    def _own_token(self, key: str) -> str:
        """The one token this instance holds ``key`` with: :class:`LockNotHeldError` if
        none, ``ValueError`` asking for ``owner`` if several (shared or semaphore holders;
        tokens others have released meanwhile are first checked with the backend)."""
        tokens = self._held_tokens.tokens_for(key)
        if len(tokens) > 1:
            live = {info.token for info in self._holders(key)}
            for token in tokens:
                if token not in live:
                    self._forget(key, token)
            tokens = [token for token in tokens if token in live]
        if not tokens:
            raise LockNotHeldError(
                f"lock {key!r} is not held by this instance of LOCKS[{self.alias!r}]"
            )
        if len(tokens) > 1:
            raise ValueError(
                f"this instance holds {len(tokens)} holders of lock {key!r}: pass owner=TOKEN "
                "(the lease's token) to say which one"
            )
        return tokens[0]

    def _forget(self, key: str, token: str) -> None:
        """Drop ``token`` of ``key`` from this instance's held tokens."""
        self._held_tokens.forget(key, token)

    # ----------------------------------------------------------------------- storage operations

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        """One atomic attempt to add ``token`` as a holder of ``key`` in ``mode``, on the
        backend's clock, expired holders not counted.

        Admitted by the rule of :class:`~django_locks.values.Mode` (see
        :func:`~django_locks.values.time_until_admitted`); the new holder's fencing token is
        greater than every earlier one's of the key. ``waiter`` (the call waits): a refused
        non-shared attempt sets (renews) the key's writer mark for ``WRITER_MARK_MS``, a
        successful one clears the mark if it is its own. Refused, ``holder_remaining_ms`` is
        how long until it could be admitted by expiry alone.
        """
        raise NotImplementedError

    def _release(self, key: str, token: str) -> bool:
        """Remove holder ``token`` of ``key`` if it holds it and has not expired. True if
        it did; wakes the waiters that may now proceed."""
        raise NotImplementedError

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        """Reset the life of holder ``token`` of ``key`` to ``ttl`` ms; the new expiry (µs)."""
        raise NotImplementedError

    # Their async versions, for async callers. Default: the sync operation in a worker
    # thread (directly if the backend does no I/O); a backend that can await its I/O in
    # the event loop overrides them (CacheLock on Redis, DatabaseLock on PostgreSQL).

    async def _atry_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        """:meth:`_try_acquire` for async callers."""
        return await self._in_worker(self._try_acquire)(key, token, ttl, correlation_id, mode,
                                                        waiter)

    async def _arelease(self, key: str, token: str) -> bool:
        """:meth:`_release` for async callers."""
        return await self._in_worker(self._release)(key, token)

    async def _aextend(self, key: str, token: str, ttl: int) -> int | None:
        """:meth:`_extend` for async callers."""
        return await self._in_worker(self._extend)(key, token, ttl)

    async def _aunmark(self, key: str, token: str) -> None:
        """:meth:`_unmark` for async callers."""
        await self._in_worker(self._unmark)(key, token)

    def _force_release(self, key: str) -> bool:
        """Remove every holder of ``key`` (and its writer mark). True if one was held."""
        raise NotImplementedError

    def _unmark(self, key: str, token: str) -> None:
        """Remove the writer mark of ``key`` if ``token`` set it (a waiter that gave up).
        Default: nothing (a backend without marks)."""

    def _holders(self, key: str) -> list[LockInfo]:
        """Every live holder of ``key``."""
        raise NotImplementedError

    def _get(self, key: str) -> LockInfo | None:
        """The exclusive holder of ``key``, or of several the one that expires last."""
        return lock_holder(self._holders(key))

    def _held(self) -> list[LockInfo]:
        """Every live holder of every key."""
        raise NotImplementedError

    def _held_page(self, prefix: str, cursor: str | None, limit: int) -> LockPage:
        """One page of :meth:`list_locks` (arguments validated). Default: from every live
        holder (:meth:`_held`), keys in order after the cursor's key, counted."""
        after = key_cursor(cursor)
        return page_of(self._held(), prefix, after, limit)

    def _purge(self) -> int:
        return 0

    def _waits_attempt(self, mode: Mode) -> bool:
        """Whether a waiter in ``mode`` sends its next attempt with its wait
        (:meth:`_wait_then_attempt`). Default: no."""
        return False

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        """Block at most ``seconds`` or until ``key`` may be free. Default: polling backoff."""
        time.sleep(self._poll_delay(seconds, waits))

    async def _await_release(self, key: str, seconds: float, waits: int) -> None:
        """:meth:`_wait_for_release` for async waiters, holding no thread. Default: an
        ``asyncio.sleep`` of the polling backoff (backends that can be woken override it)."""
        await asyncio.sleep(self._poll_delay(seconds, waits))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r}>"
