"""The lock contract: what every backend does, and the behaviour they share.

This is the one file to read to know what a lock backend promises (the ILock
contract of ``shared/spec/ILock.md``, in milliseconds). A backend subclasses
:class:`BaseLock` and implements only the storage operations at the bottom
(``_try_acquire``, ``_release``, ``_extend``, ``_force_release``, ``_get``,
``_held``, ``_purge`` and, if it can do better than polling, ``_wait_for_release``).
Argument validation, the wait loop, owner tokens, the per-instance bookkeeping of
held locks, logging, signals and :class:`Lease` live here, written once.

Storage operations must be thread-safe and must not depend on the thread that
acquired a lock: a :class:`Lease` may be extended or released from another thread
(a streaming response closed by the server, a renewal thread), and it does so by
its token alone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.core.checks import CheckMessage

from django_locks import signals
from django_locks.exceptions import (
    InvalidLockBackendError,
    LockBackendError,
    LockNotHeldError,
    LockTimeoutError,
)

logger = logging.getLogger("django_locks")

#: Longest key, in characters, accepted by every backend.
MAX_KEY_LENGTH = 255
#: Longest correlation id, in characters.
MAX_CORRELATION_ID_LENGTH = 255
#: Largest ttl and timeout accepted, in milliseconds (ten years).
MAX_MILLISECONDS = 10 * 365 * 24 * 3600 * 1000

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- validation


def _check_text(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    match = _CONTROL_CHARACTERS.search(value)
    if match:
        raise ValueError(
            f"{name} must not contain control characters "
            f"(found U+{ord(match.group()):04X} at position {match.start()})"
        )
    return value


def validate_key(key: object, name: str = "key") -> str:
    """A key is a non-empty str of at most 255 characters without control characters."""
    return _check_text(key, name, MAX_KEY_LENGTH)


def validate_milliseconds(value: object, name: str, *, minimum: int) -> int:
    """An int (not a bool) between ``minimum`` and ten years, in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of milliseconds, not {type(value).__name__}")
    if value < minimum:
        bound = "> 0" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound} milliseconds, got {value}")
    if value > MAX_MILLISECONDS:
        raise ValueError(f"{name} must be at most {MAX_MILLISECONDS} milliseconds (ten years), got {value}")
    return value


def validate_ttl(ttl: object, name: str = "ttl") -> int:
    return validate_milliseconds(ttl, name, minimum=1)


def validate_timeout(timeout: object, name: str = "timeout") -> int:
    return validate_milliseconds(timeout, name, minimum=0)


def validate_correlation_id(correlation_id: object) -> str | None:
    """``None``, or a str of at most 255 characters without control characters."""
    if correlation_id is None or correlation_id == "":
        return None
    return _check_text(correlation_id, "correlation_id", MAX_CORRELATION_ID_LENGTH)


def validate_owner(owner: object) -> str | None:
    if owner is None:
        return None
    return _check_text(owner, "owner", 64)


def validate_acquire_arguments(
    key: object, ttl: object, timeout: object, correlation_id: object
) -> tuple[str, int, int, str | None]:
    """The arguments of an acquisition, checked (timeout None: a single attempt)."""
    return (
        validate_key(key),
        validate_ttl(ttl),
        0 if timeout is None else validate_timeout(timeout),
        validate_correlation_id(correlation_id),
    )


def new_token() -> str:
    """A fresh random owner token (128 bits, hex)."""
    return secrets.token_hex(16)


def datetime_from_us(epoch_us: int) -> datetime:
    """An aware UTC datetime from microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=int(epoch_us))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class LockInfo:
    """What a backend knows of one held lock.

    Times are kept as microseconds since the Unix epoch (by the backend's clock) and read
    as aware UTC datetimes through ``acquired_at`` and ``expires_at``.
    """

    key: str
    token: str
    fencing_token: int
    correlation_id: str | None
    acquired_at_us: int
    expires_at_us: int

    @property
    def acquired_at(self) -> datetime:
        return datetime_from_us(self.acquired_at_us)

    @property
    def expires_at(self) -> datetime:
        return datetime_from_us(self.expires_at_us)


class Attempt(NamedTuple):
    """The outcome of one acquisition attempt by a backend."""

    #: The new lock on success, ``None`` when someone else holds the key.
    info: LockInfo | None
    #: When known, how long the current holder's lock has left, in ms.
    holder_remaining_ms: int | None = None


class Lease:
    """A lock held by this process. Also a context manager releasing it on exit.

    Leaving the ``with`` block releases the lease. If the lease was lost meanwhile
    (expired, taken over or force-released), the loss is logged at ERROR level on the
    ``django_locks`` logger and the ``lock_lost`` signal is sent; then, if the block
    ended normally, :class:`LockNotHeldError` is raised from the ``with`` statement.
    If the block raised, its exception propagates unchanged and the loss is attached
    to it as a note (``add_note``), never hiding it. A backend error on exit is
    handled the same way (raised as :class:`LockBackendError`, or noted).
    """

    def __init__(self, backend: BaseLock, info: LockInfo, ttl: int) -> None:
        self._backend = backend
        self._info = info
        self.ttl = ttl
        self._released = False
        self._renewer: Any = None

    @property
    def key(self) -> str:
        return self._info.key

    @property
    def token(self) -> str:
        """The owner token: what ``release_lock(..., owner=TOKEN)`` takes."""
        return self._info.token

    @property
    def fencing_token(self) -> int:
        """Greater than every earlier acquisition's of this key: pass it to the resource."""
        return self._info.fencing_token

    @property
    def correlation_id(self) -> str | None:
        return self._info.correlation_id

    @property
    def acquired_at(self) -> datetime:
        return self._info.acquired_at

    @property
    def expires_at(self) -> datetime:
        """When the lease runs out unless extended (aware, UTC, by the backend's clock)."""
        return self._info.expires_at

    @property
    def alias(self) -> str:
        return self._backend.alias

    @property
    def released(self) -> bool:
        return self._released

    @property
    def info(self) -> LockInfo:
        return self._info

    def extend(self, ttl: int | None = None) -> None:
        """Reset the remaining life to ``ttl`` ms (default: the ttl it was acquired with).

        Raises :class:`LockNotHeldError` if the lease was lost; the lock is then untouched.
        """
        ttl = self.ttl if ttl is None else validate_ttl(ttl)
        if self._released:
            raise LockNotHeldError(f"lease on {self.key!r} was already released")
        expires_at_us = self._backend._extend(self.key, self.token, ttl)
        if expires_at_us is None:
            self._lost("extend")
        self._info = replace(self._info, expires_at_us=expires_at_us)
        logger.debug(
            "lock %r extended by %d ms (alias=%s, correlation_id=%s)",
            self.key, ttl, self.alias, self.correlation_id,
        )

    def start_renewing(self, interval: float | None = None) -> None:
        """Keep extending this lease in a daemon thread until it is released or lost.

        See :class:`django_locks.renewal.LeaseRenewer` (the one auto-renewal mechanism).
        """
        from django_locks.renewal import LeaseRenewer

        if self._renewer is None:
            self._renewer = LeaseRenewer(self, interval)
            self._renewer.start()

    def stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None

    def release(self) -> None:
        """Release the lease. Raises :class:`LockNotHeldError` if it was lost."""
        self.stop_renewing()
        if self._released:
            raise LockNotHeldError(f"lease on {self.key!r} was already released")
        released = self._backend._release(self.key, self.token)
        self._released = True
        self._backend._forget(self.key, self.token)
        if not released:
            self._lost("release")
        self._backend._announce_release(
            self.key, self.token, self.fencing_token, self.correlation_id
        )

    async def aextend(self, ttl: int | None = None) -> None:
        """:meth:`extend` for async code."""
        await self._backend._in_worker(self.extend)(ttl)

    async def arelease(self) -> None:
        """:meth:`release` for async code."""
        await self._backend._in_worker(self.release)()

    def _lost(self, operation: str) -> None:
        self._released = True
        self._backend._forget(self.key, self.token)
        logger.error(
            "lock %r was lost before %s: it expired, was taken over or was force-released "
            "(alias=%s, correlation_id=%s, fencing_token=%s)",
            self.key, operation, self.alias, self.correlation_id, self.fencing_token,
        )
        signals.lock_lost.send(sender=type(self._backend), **self._signal_kwargs())
        raise LockNotHeldError(f"lock {self.key!r} is no longer held by this lease")

    def _signal_kwargs(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "key": self.key,
            "token": self.token,
            "fencing_token": self.fencing_token,
            "correlation_id": self.correlation_id,
        }

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._released:
            return
        try:
            self.release()
        except (LockNotHeldError, LockBackendError) as problem:
            if exc is None:
                raise
            if hasattr(exc, "add_note"):
                exc.add_note(f"django_locks: while leaving the lock block: {problem!r}")
            if isinstance(problem, LockBackendError):
                logger.error(
                    "lock %r could not be released: %s (alias=%s, correlation_id=%s)",
                    self.key, problem, self.alias, self.correlation_id,
                )

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._backend._in_worker(self.__exit__)(exc_type, exc, tb)

    def __repr__(self) -> str:
        state = "released" if self._released else f"expires {self.expires_at.isoformat()}"
        return f"<Lease {self.alias}:{self.key!r} fencing_token={self.fencing_token} {state}>"


class _AcquiringLease:
    """What :meth:`BaseLock.alock` returns: ``async with`` acquires, then releases."""

    def __init__(self, acquire: Any) -> None:
        self._acquire = acquire
        self._lease: Lease | None = None

    def __await__(self) -> Any:
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        await self._lease.__aexit__(exc_type, exc, tb)


# --------------------------------------------------------------------------- base backend


class BaseLock:
    """Shared behaviour of every lock backend. Subclasses implement the storage operations."""

    #: Names accepted in this backend's OPTIONS.
    option_names: frozenset[str] = frozenset()
    #: Whether :meth:`held_locks` can list what is held.
    supports_enumeration: bool = True
    #: Polling bounds of the default wait, in seconds (backends that are woken override it).
    poll_interval_min: float = 0.001
    poll_interval_max: float = 0.010
    #: Whether storage operations do I/O (then async callers run them in worker threads).
    does_io: bool = True
    #: Whether expired holders stay in storage until :meth:`purge` (see :meth:`expired_locks`).
    keeps_expired_state: bool = False

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
        self._held_tokens: dict[str, str] = {}
        self._held_mutex = threading.Lock()
        self.configure(options)

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

    def try_acquire_lock(self, correlation_id: str | None, key: str, ttl: int) -> bool:
        """One attempt, never waits. True: this instance now holds ``key`` for ``ttl`` ms."""
        key, ttl, _, correlation_id = validate_acquire_arguments(key, ttl, None, correlation_id)
        return self._attempt(key, ttl, correlation_id, new_token()).info is not None

    def acquire_lock(
        self, correlation_id: str | None, key: str, ttl: int, timeout: int
    ) -> None:
        """Try until this instance holds ``key`` or ``timeout`` ms have passed.

        Raises :class:`LockTimeoutError` then. ``timeout=0`` means one attempt.
        """
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        self._acquire(*arguments)

    def release_lock(
        self, correlation_id: str | None, key: str, *, owner: str | None = None
    ) -> None:
        """Release ``key``, held by this instance or, with ``owner=TOKEN``, by that token.

        Raises :class:`LockNotHeldError` (leaving the lock exactly as it was) when the
        lock is not held by this instance / by ``owner``.
        """
        correlation_id = validate_correlation_id(correlation_id)
        key, owner = validate_key(key), validate_owner(owner)
        token = owner
        if token is None:
            with self._held_mutex:
                token = self._held_tokens.get(key)
            if token is None:
                raise LockNotHeldError(
                    f"lock {key!r} is not held by this instance of LOCKS[{self.alias!r}]"
                )
        released = self._release(key, token)
        self._forget(key, token)
        if not released:
            whose = "by that owner token" if owner else "by this instance any more"
            raise LockNotHeldError(f"lock {key!r} is not held {whose} (expired or taken over)")
        self._announce_release(key, token, None, correlation_id)

    def lock(
        self,
        key: str,
        ttl: int,
        timeout: int = 0,
        correlation_id: str | None = None,
    ) -> Lease:
        """Acquire ``key`` (waiting up to ``timeout`` ms) and return its :class:`Lease`."""
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)
        return Lease(self, self._acquire(*arguments), arguments[1])

    def force_release(self, key: str) -> bool:
        """Release whoever holds ``key``. True if something was held."""
        key = validate_key(key)
        with self._held_mutex:
            self._held_tokens.pop(key, None)
        released = self._force_release(key)
        if released:
            logger.warning("lock %r force-released (alias=%s)", key, self.alias)
        return released

    def get_lock(self, key: str) -> LockInfo | None:
        """The lock held now on ``key``, or None."""
        return self._get(validate_key(key))

    def held_locks(self) -> list[LockInfo]:
        """Every lock held now, soonest expiry first."""
        return sorted(self._held(), key=lambda info: (info.expires_at, info.key))

    def purge(self) -> int:
        """Remove expired lock state where the backend keeps any. Returns how many entries."""
        return self._purge()

    def expired_locks(self) -> list[LockInfo]:
        """Locks that expired without a release and whose state is kept until purged."""
        return []

    # ----------------------------------------------------------------------- async API
    # Same arguments and errors. Each attempt runs in a worker thread; waiting between
    # attempts is an asyncio sleep, so a waiter holds no thread.

    async def atry_acquire_lock(self, correlation_id: str | None, key: str, ttl: int) -> bool:
        key, ttl, _, correlation_id = validate_acquire_arguments(key, ttl, None, correlation_id)
        attempt = await self._in_worker(self._attempt)(key, ttl, correlation_id, new_token())
        return attempt.info is not None

    async def aacquire_lock(
        self, correlation_id: str | None, key: str, ttl: int, timeout: int
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
        ttl: int,
        timeout: int = 0,
        correlation_id: str | None = None,
    ) -> _AcquiringLease:
        """``async with backend.alock(key, ttl) as lease:`` (or ``lease = await ...``)."""
        arguments = validate_acquire_arguments(key, ttl, timeout, correlation_id)

        async def acquire() -> Lease:
            return Lease(self, await self._aacquire(*arguments), arguments[1])

        return _AcquiringLease(acquire)

    def _in_worker(self, function: Any) -> Any:
        """``function`` as a coroutine function: in a worker thread if it does I/O."""
        if self.does_io:
            return sync_to_async(function, thread_sensitive=False)

        async def direct(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

        return direct

    # ----------------------------------------------------------------------- shared logic

    def _attempt(self, key: str, ttl: int, correlation_id: str | None, token: str) -> Attempt:
        attempt = self._try_acquire(key, token, ttl, correlation_id)
        if attempt.info is not None:
            with self._held_mutex:
                self._held_tokens[key] = token
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
        self, key: str, ttl: int, timeout: int, correlation_id: str | None
    ) -> LockInfo:
        """The wait loop: attempt, then wait for a release (or the holder's expiry)."""
        token = new_token()
        deadline = time.monotonic() + timeout / 1000
        waits = 0
        while True:
            attempt = self._attempt(key, ttl, correlation_id, token)
            if attempt.info is not None:
                return attempt.info
            seconds = self._wait_budget(deadline, attempt, key, timeout, correlation_id, waits)
            self._wait_for_release(key, seconds, waits)
            waits += 1

    async def _aacquire(
        self, key: str, ttl: int, timeout: int, correlation_id: str | None
    ) -> LockInfo:
        """The wait loop for async callers: attempts in a worker, waits by asyncio.sleep."""
        token = new_token()
        deadline = time.monotonic() + timeout / 1000
        attempt_in_worker = self._in_worker(self._attempt)
        waits = 0
        while True:
            running = asyncio.ensure_future(attempt_in_worker(key, ttl, correlation_id, token))
            try:
                attempt = await asyncio.shield(running)
            except asyncio.CancelledError:
                # The attempt goes on in its worker thread: if it wins the lock after all,
                # release it, so that a cancelled waiter leaves nothing behind.
                await self._undo_attempt(running, key, token)
                raise
            if attempt.info is not None:
                return attempt.info
            seconds = self._wait_budget(deadline, attempt, key, timeout, correlation_id, waits)
            await asyncio.sleep(self._poll_delay(seconds, waits))
            waits += 1

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

    def _wait_budget(
        self,
        deadline: float,
        attempt: Attempt,
        key: str,
        timeout: int,
        correlation_id: str | None,
        waits: int,
    ) -> float:
        """After a failed attempt: how long to wait before the next (at most until the
        deadline or the holder's expiry), or :class:`LockTimeoutError` at the deadline."""
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
        return remaining

    def _poll_delay(self, seconds: float, waits: int) -> float:
        """Jittered exponential backoff between attempts, at most ``seconds``."""
        interval = min(self.poll_interval_max, self.poll_interval_min * (2 ** min(waits, 16)))
        return min(seconds, interval * random.uniform(0.5, 1.0))

    def _wait_for_release(self, key: str, seconds: float, waits: int) -> None:
        """Block at most ``seconds`` or until ``key`` may be free. Default: polling backoff."""
        time.sleep(self._poll_delay(seconds, waits))

    def _forget(self, key: str, token: str) -> None:
        """Drop ``key`` from this instance's bookkeeping if ``token`` is what it holds."""
        with self._held_mutex:
            if self._held_tokens.get(key) == token:
                del self._held_tokens[key]

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
        self, key: str, token: str, ttl: int, correlation_id: str | None
    ) -> Attempt:
        """One atomic attempt to take ``key`` for ``token`` if it is free or expired."""
        raise NotImplementedError

    def _release(self, key: str, token: str) -> bool:
        """Free ``key`` if ``token`` holds it and it has not expired. True if it did."""
        raise NotImplementedError

    def _extend(self, key: str, token: str, ttl: int) -> int | None:
        """Reset the life of ``key`` to ``ttl`` ms if ``token`` holds it; the new expiry (µs)."""
        raise NotImplementedError

    def _force_release(self, key: str) -> bool:
        raise NotImplementedError

    def _get(self, key: str) -> LockInfo | None:
        raise NotImplementedError

    def _held(self) -> list[LockInfo]:
        raise NotImplementedError

    def _purge(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} alias={self.alias!r}>"
