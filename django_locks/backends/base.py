"""The lock contract: what every backend does, and the behaviour they share.

This is the one module to read to know what a lock backend promises; ``docs/contract.md``
describes the same contract in prose (the ILock interface, in milliseconds). A backend
subclasses :class:`BaseLock` and implements only the storage operations at the bottom
(``_try_acquire``, ``_release``, ``_extend``, ``_force_release``, ``_holders``, ``_held``,
``_purge`` and, if it can do better than polling, ``_wait_for_release``), plus
:meth:`BaseLock.close` if it keeps per-thread resources. Argument validation (in
:mod:`django_locks.values`), the wait loop, owner tokens, the per-instance bookkeeping of
held locks, logging and signals live here, written once; :class:`Lease` (in
:mod:`django_locks.lease`) is what ``lock()`` returns.

Storage operations must be thread-safe and must not depend on the thread that
acquired a lock: a :class:`Lease` may be extended or released from another thread
(a streaming response closed by the server, a renewal thread), and it does so by
its token alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage

from django_locks import signals
from django_locks.exceptions import (
    InvalidLockBackendError,
    LockBackendError,
    LockNotHeldError,
    LockTimeoutError,
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
    Milliseconds,
    Mode,
    datetime_from_us,
    lock_holder,
    new_token,
    validate_acquire_arguments,
    validate_correlation_id,
    validate_key,
    validate_mode,
    validate_owner,
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
    "Mode",
    "validate_correlation_id",
    "validate_key",
    "validate_owner",
    "validate_timeout",
    "validate_ttl",
]

logger = logging.getLogger("django_locks")


class HeldTokens:
    """Which tokens this backend instance holds each key with, until their leases expire.

    What ``release_lock(correlation_id, key)`` without ``owner`` releases: the one token
    this instance holds the key with (an instance holding several holders of a shared key
    or semaphore must name one). An entry lives until it is released, or found lost, or
    its lease has expired (by this process's monotonic clock, from the ttl it was taken or
    last extended with): expired entries are pruned whenever the map has doubled since the
    last pruning, so keys taken with ``try_acquire_lock`` and never released cannot make it
    grow without bound.
    """

    #: Pruning starts once this many tokens are remembered.
    PRUNE_FLOOR = 1024

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, float]] = {}  # key -> {token: deadline}
        self._count = 0
        self._mutex = threading.Lock()
        self._prune_at = self.PRUNE_FLOOR

    def __len__(self) -> int:
        return self._count

    def remember(self, key: str, token: str, ttl: int, exclusive: bool = True) -> None:
        """``token`` now holds ``key``; alone, when ``exclusive`` (any other token this
        instance remembered for it was released by someone else)."""
        with self._mutex:
            tokens = self._entries.setdefault(key, {})
            if exclusive and tokens:
                self._count -= len(tokens)
                tokens.clear()
            self._count += token not in tokens
            tokens[token] = time.monotonic() + ttl / 1000
            if self._count >= self._prune_at:
                now = time.monotonic()
                pruned = {
                    k: live for k, v in self._entries.items()
                    if (live := {t: d for t, d in v.items() if d > now})
                }
                self._entries = pruned
                self._count = sum(map(len, pruned.values()))
                self._prune_at = max(self.PRUNE_FLOOR, 2 * self._count)

    def renewed(self, key: str, token: str, ttl: int) -> None:
        with self._mutex:
            tokens = self._entries.get(key)
            if tokens is not None and token in tokens:
                tokens[token] = time.monotonic() + ttl / 1000

    def tokens_for(self, key: str) -> list[str]:
        """The tokens this instance holds ``key`` with, whose leases have not expired."""
        now = time.monotonic()
        with self._mutex:
            return [t for t, deadline in self._entries.get(key, {}).items() if deadline > now]

    def forget(self, key: str, token: str | None = None) -> None:
        """Drop ``key`` (only its ``token``, when given)."""
        with self._mutex:
            tokens = self._entries.get(key)
            if tokens is None:
                return
            if token is None:
                self._count -= len(tokens)
                del self._entries[key]
            elif tokens.pop(token, None) is not None:
                self._count -= 1
                if not tokens:
                    del self._entries[key]

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()
            self._count = 0


class UnsettledAcquisitions:
    """Acquisitions whose outcome is unknown, released as soon as the backend answers.

    An attempt that fails with a backend error (a socket timeout, a dropped connection)
    may still have taken the lock: the server can run the command after the client gave
    up. Such a token would hold the key for its whole ttl, for nobody. Every one is
    handed here, and a daemon thread retries a compare-and-delete by that token
    (``_release``, which touches nothing else) with a short backoff until the backend
    answers, or until the ttl has run out anyway.
    """

    RETRY_MIN = 0.02
    RETRY_MAX = 0.5

    def __init__(self) -> None:
        self._pending: list[tuple[BaseLock, str, str, float]] = []
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, backend: BaseLock, key: str, token: str, ttl: int) -> None:
        with self._mutex:
            self._pending.append((backend, key, token, time.monotonic() + ttl / 1000))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="django_locks settler", daemon=True
                )
                self._thread.start()

    def __len__(self) -> int:
        return len(self._pending)

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's pending tokens and thread are the parent's (its
        mutex may have been held by a thread that does not exist here)."""
        self._pending = []
        self._mutex = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        delay = self.RETRY_MIN
        backends: set[BaseLock] = set()
        try:
            while True:
                with self._mutex:
                    if not self._pending:
                        self._thread = None
                        return
                    pending = list(self._pending)
                settled = [entry for entry in pending if self._settle(*entry, backends)]
                with self._mutex:
                    self._pending = [entry for entry in self._pending if entry not in settled]
                    delay = self.RETRY_MIN if settled else min(delay * 2, self.RETRY_MAX)
                time.sleep(delay)
        finally:
            for backend in backends:
                backend.close()

    @staticmethod
    def _settle(backend: BaseLock, key: str, token: str, deadline: float,
                backends: set[BaseLock]) -> bool:
        """One try; True when nothing is left to do for this token."""
        if time.monotonic() >= deadline:
            return True  # expired by itself
        backends.add(backend)
        try:
            won = backend._release(key, token)
        except LockBackendError:
            return False  # still unreachable: retry
        except Exception:
            logger.exception("could not settle lock %r (alias=%s)", key, backend.alias)
            return True
        if won:
            logger.warning(
                "an acquisition of lock %r that failed with a backend error had taken it after "
                "all; released it (alias=%s)", key, backend.alias,
            )
        return True


#: The process's one settler of acquisitions whose outcome is unknown.
unsettled = UnsettledAcquisitions()

#: Every backend instance of this process (for :func:`_after_fork_in_child`).
_instances: weakref.WeakSet[BaseLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, Celery's prefork pool, ``multiprocessing``)
    starts with nothing of its parent's: no settler thread or pending tokens, and each
    backend instance forgets the tokens the parent held and drops what it opened (its
    own ``_after_fork_in_child``), without sending anything on the parent's sockets."""
    unsettled._after_fork_in_child()
    for backend in list(_instances):
        backend._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- base backend


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
        self._holdings = HeldTokens()
        self.configure(options)
        _instances.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop this instance's per-process state (the tokens the parent
        holds are not this process's to release). Subclasses drop what they opened, never
        closing it (that would talk on the parent's connection), and call this."""
        self._holdings = HeldTokens()

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
        token = new_token()
        try:
            return self._attempt(key, ttl, correlation_id, token, EXCLUSIVE, False).info is not None
        except LockBackendError:
            self._unsettled(key, token, ttl)
            raise

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
        released = self._release(key, token)
        self._forget(key, token)
        if not released:
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")
        self._announce_release(key, token, None, correlation_id)

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
        self._holdings.forget(key)
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

    def close(self, **kwargs: Any) -> None:
        """Give back what this instance holds open for the calling thread.

        Called by :func:`django_locks.close_locks` when a request starts and ends (like
        ``BaseCache.close`` from ``close_caches``) and by a renewal thread that ends.
        Locks stay held. The default does nothing.
        """

    def purge(self) -> int:
        """Remove expired lock state where the backend keeps any. Returns how many entries."""
        return self._purge()

    def expired_locks(self) -> list[LockInfo]:
        """Locks that expired without a release and whose state is kept until purged."""
        return []

    # ----------------------------------------------------------------------- extension by token

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
        expires_at_us = self._extend(key, token, ttl)
        if expires_at_us is None:
            self._forget(key, token)
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")
        self._holdings.renewed(key, token, ttl)
        logger.debug(
            "lock %r extended by %d ms (alias=%s, correlation_id=%s)",
            key, ttl, self.alias, correlation_id,
        )
        return datetime_from_us(expires_at_us)

    # ----------------------------------------------------------------------- async API
    # Same arguments and errors. Each attempt runs in a worker thread; waiting between
    # attempts is an asyncio sleep, so a waiter holds no thread.

    async def atry_acquire_lock(self, correlation_id: str | None, key: str, ttl: Milliseconds) -> bool:
        key, ttl, _, correlation_id = validate_acquire_arguments(key, ttl, 0, correlation_id)
        token = new_token()
        try:
            attempt = await self._in_worker(self._attempt)(
                key, ttl, correlation_id, token, EXCLUSIVE, False
            )
        except LockBackendError:
            self._unsettled(key, token, ttl)
            raise
        return attempt.info is not None

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
        await self._in_worker(self.release_lock)(correlation_id, key, owner=owner)

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
        return await self._in_worker(self.extend_lock)(correlation_id, key, ttl, owner=owner)

    def _in_worker(self, function: Any) -> Any:
        """``function`` as a coroutine function: in a worker thread if it does I/O."""
        if self.does_io:
            return sync_to_async(function, thread_sensitive=False)

        async def direct(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return direct

    # ----------------------------------------------------------------------- shared logic

    def _attempt(
        self, key: str, ttl: int, correlation_id: str | None, token: str, mode: Mode, waiter: bool
    ) -> Attempt:
        attempt = self._try_acquire(key, token, ttl, correlation_id, mode, waiter)
        if attempt.info is not None:
            self._holdings.remember(key, token, ttl, mode.exclusive)
            logger.debug(
                "lock %r acquired for %d ms (alias=%s, correlation_id=%s, fencing_token=%s)",
                key, ttl, self.alias, correlation_id, attempt.info.fencing_token,
            )
            if signals.lock_acquired.receivers:
                signals.lock_acquired.send(
                    sender=type(self), alias=self.alias, key=key, token=token,
                    fencing_token=attempt.info.fencing_token, correlation_id=correlation_id,
                )
        return attempt

    def _acquire(
        self, key: str, ttl: int, timeout: int, correlation_id: str | None, mode: Mode = EXCLUSIVE
    ) -> LockInfo:
        """The wait loop: attempt, then wait for a release (or the holder's expiry)."""
        token = new_token()
        waiter = timeout > 0
        deadline = time.monotonic() + timeout / 1000
        waits = 0
        waiting = False  # an attempt found the lock held: backend failures may be retried
        uncertain = False  # an attempt failed with a backend error: it may have won
        marked = False  # a refused non-shared waiting attempt left a writer mark
        try:
            with self._waiting(key) if timeout else contextlib.nullcontext():
                while True:
                    try:
                        attempt = self._attempt(key, ttl, correlation_id, token, mode, waiter)
                        if attempt.info is not None:
                            return attempt.info
                        marked = waiter and not mode.shared
                        seconds = self._wait_budget(
                            deadline, attempt, key, timeout, correlation_id, waits, mode
                        )
                        waiting = True
                        self._wait_for_release(key, seconds, waits)
                    except LockBackendError as error:
                        uncertain = True
                        time.sleep(self._retry_delay(error, waiting, deadline, key, correlation_id, waits))
                    waits += 1
        except BaseException as e:
            if uncertain:
                self._unsettled(key, token, ttl)
            if self._unmark_on_give_up(e, marked, waiter, mode):
                self._give_up_mark(key, token)
            raise

    async def _aacquire(
        self, key: str, ttl: int, timeout: int, correlation_id: str | None, mode: Mode = EXCLUSIVE
    ) -> LockInfo:
        """The wait loop for async callers: attempts in a worker, waits holding no thread
        (:meth:`_await_release`: a Redis BLPOP, a PostgreSQL NOTIFY, else asyncio.sleep)."""
        token = new_token()
        waiter = timeout > 0
        deadline = time.monotonic() + timeout / 1000
        attempt_in_worker = self._in_worker(self._attempt)
        waits = 0
        uncertain = False  # an attempt failed with a backend error: it may have won
        marked = False  # a refused non-shared waiting attempt left a writer mark
        try:
            with self._waiting(key) if timeout else contextlib.nullcontext():
                waiting = False  # an attempt found the lock held: backend failures may be retried
                while True:
                    running = asyncio.ensure_future(
                        attempt_in_worker(key, ttl, correlation_id, token, mode, waiter)
                    )
                    try:
                        attempt = await asyncio.shield(running)
                        if attempt.info is not None:
                            return attempt.info
                        marked = waiter and not mode.shared
                        seconds = self._wait_budget(
                            deadline, attempt, key, timeout, correlation_id, waits, mode
                        )
                        waiting = True
                        await self._await_release(key, seconds, waits)
                    except asyncio.CancelledError:
                        # The attempt goes on in its worker thread: if it wins the lock after
                        # all, release it, so that a cancelled waiter leaves nothing behind.
                        await self._undo_attempt(running, key, token)
                        if waiter and not mode.shared:  # the attempt may have marked
                            await self._in_worker(self._give_up_mark)(key, token)
                        raise
                    except LockBackendError as error:  # the attempt's, or the wait's
                        uncertain = uncertain or running.exception() is not None
                        await asyncio.sleep(
                            self._retry_delay(error, waiting, deadline, key, correlation_id, waits)
                        )
                    waits += 1
        except asyncio.CancelledError:
            if uncertain:
                self._unsettled(key, token, ttl)
            raise
        except BaseException as e:
            if uncertain:
                self._unsettled(key, token, ttl)
            if self._unmark_on_give_up(e, marked, waiter, mode):
                await self._in_worker(self._give_up_mark)(key, token)
            raise

    async def _undo_attempt(self, running: asyncio.Future, key: str, token: str) -> None:
        try:
            attempt = await running
        except BaseException:  # the attempt failed: it holds nothing
            return
        if attempt.info is not None:
            try:
                await self._in_worker(self._release)(key, token)
            except LockBackendError as e:
                logger.error(
                    "a cancelled waiter could not release lock %r it won meanwhile: %s "
                    "(alias=%s); it expires with its ttl", key, e, self.alias,
                )
            self._forget(key, token)

    @staticmethod
    def _unmark_on_give_up(error: BaseException, marked: bool, waiter: bool, mode: Mode) -> bool:
        """Whether a waiter giving up with ``error`` removes its writer mark at once. Not
        after a backend error: the backend just failed (a timed-out server would hold the
        caller for one more socket timeout) and the mark lapses by itself within
        WRITER_MARK_MS. Yes if an attempt was refused (``marked``), and for a non-shared
        waiter interrupted (KeyboardInterrupt, SystemExit: not an ``Exception``), which may
        have been inside an attempt, after the backend set the mark and before the reply."""
        if isinstance(error, LockBackendError):
            return False
        return marked or (waiter and not mode.shared and not isinstance(error, Exception))

    def _give_up_mark(self, key: str, token: str) -> None:
        """A non-shared waiter gives up (timeout, cancellation, error): its writer mark, if
        still its own, goes now rather than holding readers back for WRITER_MARK_MS."""
        try:
            self._unmark(key, token)
        except LockBackendError as e:
            logger.warning("lock %r: the writer mark of a waiter that gave up stays until it "
                           "lapses: %s (alias=%s)", key, e, self.alias)

    def _waiting(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Around the sync wait loop of ``key``: a backend that is woken by the release
        registers the waiter here (DatabaseLock on PostgreSQL). Default: nothing."""
        return contextlib.nullcontext()

    def _unsettled(self, key: str, token: str, ttl: int) -> None:
        """A call gives up after an attempt that failed with a backend error: that attempt
        may have won on the server all the same. Its token is released as soon as the
        backend answers again (see UnsettledAcquisitions). Only when the call ends: while
        it retries, the same token may still win, or find that it had won."""
        unsettled.add(self, key, token, ttl)

    def _wait_budget(
        self,
        deadline: float,
        attempt: Attempt,
        key: str,
        timeout: int,
        correlation_id: str | None,
        waits: int,
        mode: Mode = EXCLUSIVE,
    ) -> float:
        """After a failed attempt: how long to wait before the next (at most until the
        deadline or the holder's expiry), or :class:`LockTimeoutError` at the deadline.

        A non-shared waiter attempts again at least every ``WRITER_RECHECK_MS``: each of
        its attempts renews the mark that keeps new shared acquisitions behind it."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            logger.info(
                "lock %r not acquired within %d ms (alias=%s, correlation_id=%s)",
                key, timeout, self.alias, correlation_id,
            )
            raise LockTimeoutError(f"lock {key!r} not acquired within {timeout} ms")
        if waits == 0:
            logger.debug(
                "waiting up to %d ms for lock %r (alias=%s, correlation_id=%s)",
                timeout, key, self.alias, correlation_id,
            )
        if attempt.holder_remaining_ms is not None:
            remaining = min(remaining, attempt.holder_remaining_ms / 1000)
        if not mode.shared:
            remaining = min(remaining, WRITER_RECHECK_MS / 1000)
        return remaining

    def _retry_delay(
        self,
        error: LockBackendError,
        waiting: bool,
        deadline: float,
        key: str,
        correlation_id: str | None,
        waits: int,
    ) -> float:
        """A backend error while acquiring: re-raised, unless this call is already waiting
        (an attempt found the lock held), the backend says the failure passes by itself
        (:meth:`_retryable`: a failover, a restart) and the deadline is still ahead. Then
        how long to sleep before the next attempt. At the deadline the error is raised,
        never turned into a timeout."""
        remaining = deadline - time.monotonic()
        if not waiting or remaining <= 0 or not self._retryable(error):
            raise error
        logger.warning(
            "lock %r: backend failed while waiting, retrying until the deadline: %s "
            "(alias=%s, correlation_id=%s)", key, error, self.alias, correlation_id,
        )
        backoff = min(self.RETRY_INTERVAL_MAX, self.RETRY_INTERVAL_MIN * 2 ** min(waits, 16))
        return min(remaining, backoff * random.uniform(0.5, 1.0))

    def _retryable(self, error: LockBackendError) -> bool:
        """Whether ``error`` is one a waiter may retry through (see :meth:`_retry_delay`).
        Default: no backend error is."""
        return False

    def _poll_delay(self, seconds: float, waits: int) -> float:
        """Jittered exponential backoff between attempts, at most ``seconds``."""
        interval = min(self.poll_interval_max, self.poll_interval_min * (2 ** min(waits, 16)))
        return min(seconds, interval * random.uniform(0.5, 1.0))

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        """Block at most ``seconds`` or until ``key`` may be free. Default: polling backoff."""
        time.sleep(self._poll_delay(seconds, waits))

    async def _await_release(self, key: str, seconds: float, waits: int) -> None:
        """:meth:`_wait_for_release` for async waiters, holding no thread. Default: an
        ``asyncio.sleep`` of the polling backoff (backends that can be woken override it)."""
        await asyncio.sleep(self._poll_delay(seconds, waits))

    def _own_token(self, key: str) -> str:
        """The one token this instance holds ``key`` with: :class:`LockNotHeldError` if
        none, ``ValueError`` asking for ``owner`` if several (shared or semaphore holders;
        tokens others have released meanwhile are first checked with the backend)."""
        tokens = self._holdings.tokens_for(key)
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
        """Drop ``key`` from this instance's bookkeeping if ``token`` is what it holds."""
        self._holdings.forget(key, token)

    def _announce_release(
        self, key: str, token: str, fencing_token: int | None, correlation_id: str | None
    ) -> None:
        logger.debug(
            "lock %r released (alias=%s, correlation_id=%s)", key, self.alias, correlation_id
        )
        if signals.lock_released.receivers:
            signals.lock_released.send(
                sender=type(self), alias=self.alias, key=key, token=token,
                fencing_token=fencing_token, correlation_id=correlation_id,
            )

    # ----------------------------------------------------------------------- storage operations

    def _try_acquire(
        self, key: str, token: str, ttl: int, correlation_id: str | None, mode: Mode,
        waiter: bool,
    ) -> Attempt:
        """One atomic attempt to add ``token`` as a holder of ``key`` in ``mode``.

        Admission (see :class:`~django_locks.values.Mode`), on the backend's clock, holders
        whose ttl has run out not counted: a non-shared attempt with limit N is admitted
        while fewer than N holders hold the key; a shared one while no non-shared holder
        holds it and no writer mark is alive. ``waiter``: the call waits (timeout > 0). A
        non-shared waiter's failed attempt sets the key's writer mark for
        ``WRITER_MARK_MS`` (renewing it; at least when shared holders hold the key), and
        its successful attempt clears the mark if it is its own. The new holder's fencing
        token is greater than every earlier holder's of the key.

        On failure, ``holder_remaining_ms`` is how long until the attempt could succeed by
        expiry alone (a full semaphore: the holder that expires first; an exclusive
        attempt: the last holder; a shared one: the non-shared holder or the mark).
        """
        raise NotImplementedError

    def _release(self, key: str, token: str) -> bool:
        """Remove holder ``token`` of ``key`` if it holds it and has not expired. True if
        it did; wakes the waiters that may now proceed."""
        raise NotImplementedError

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        """Reset the life of holder ``token`` of ``key`` to ``ttl`` ms; the new expiry (µs)."""
        raise NotImplementedError

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

    def _purge(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r}>"
