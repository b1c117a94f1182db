"""A held lock: :class:`Lease`, the object ``lock()`` and ``alock()`` return.

A lease acts on its backend by token (``BaseLock.extend_token``, ``release_token``), so it
can be extended or released from any thread: a streaming response closed by the server, a
renewal thread.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from django_locks import signals
from django_locks.exceptions import LockBackendError, LockNotHeldError
from django_locks.renewal import LeaseRenewer
from django_locks.values import LockInfo, Milliseconds, validate_ttl

if TYPE_CHECKING:
    from django_locks.backends.base import BaseLock

logger = logging.getLogger("django_locks")


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
        self._renewer: LeaseRenewer | None = None
        self._holder_pid = os.getpid()  # the process holding it (a forked child does not)

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
    def shared(self) -> bool:
        """Whether this is a shared (read) lock."""
        return self._info.shared

    @property
    def limit(self) -> int:
        """The semaphore limit this lease was admitted with (1: exclusive or shared)."""
        return self._info.limit

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
    def backend(self) -> BaseLock:
        """The backend instance that acquired this lease."""
        return self._backend

    @property
    def released(self) -> bool:
        """True once released, or once found lost (by an extend, a release or the renewer)."""
        return self._released

    @property
    def renewing(self) -> bool:
        """Whether a renewer keeps extending this lease (see :meth:`start_renewing`)."""
        return self._renewer is not None and self._renewer.running

    @property
    def info(self) -> LockInfo:
        return self._info

    def extend(self, ttl: Milliseconds | None = None) -> None:
        """Reset the remaining life to ``ttl`` ms or a ``timedelta`` (default: the ttl it was
        acquired with).

        Raises :class:`LockNotHeldError` if the lease was lost; the lock is then untouched.
        """
        ttl = self._extending(ttl)
        expires_at_us = self._backend.extend_token(self.key, self.token, ttl, self.correlation_id)
        if expires_at_us is None:
            self._lost("extend")
        self._info = replace(self._info, expires_at_us=expires_at_us)

    def _extending(self, ttl: Milliseconds | None) -> int:
        """Before an extend: the ttl to extend by, once this lease may be extended."""
        ttl = self.ttl if ttl is None else validate_ttl(ttl)
        if self._released:
            raise LockNotHeldError(f"lease on {self.key!r} was already released")
        self._check_process()
        return ttl

    def start_renewing(self, interval: float | None = None) -> None:
        """Keep extending this lease in a daemon thread until it is released or lost.

        See :class:`django_locks.renewal.LeaseRenewer` (the one auto-renewal mechanism).
        """
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
        self._releasing()
        released = self._backend.release_token(
            self.key, self.token, self.correlation_id, self.fencing_token
        )
        self._released = True
        if not released:
            self._lost("release")

    def _releasing(self) -> None:
        """Before a release: raise if this lease may not be released."""
        if self._released:
            raise LockNotHeldError(f"lease on {self.key!r} was already released")
        self._check_process()

    async def aextend(self, ttl: Milliseconds | None = None) -> None:
        """:meth:`extend` for async code (the backend's async extend: on Redis no thread)."""
        ttl = self._extending(ttl)
        expires_at_us = await self._backend.aextend_token(
            self.key, self.token, ttl, self.correlation_id
        )
        if expires_at_us is None:
            await self._alost("extend")
        self._info = replace(self._info, expires_at_us=expires_at_us)

    async def arelease(self) -> None:
        """:meth:`release` for async code (the backend's async release: on Redis no thread)."""
        if self._renewer is not None:  # stopping the renewer joins its thread
            await self._backend._in_worker(self.release)()
            return
        self._releasing()
        released = await self._backend.arelease_token(
            self.key, self.token, self.correlation_id, self.fencing_token
        )
        self._released = True
        if not released:
            await self._alost("release")

    def _check_process(self) -> None:
        """A forked child inherits its parent's leases as objects, not the locks: those stay
        with the parent, which releases them."""
        if self._holder_pid != os.getpid():
            raise LockNotHeldError(
                f"lease on {self.key!r} is held by process {self._holder_pid}, not by this forked "
                f"child ({os.getpid()}): only the process that acquired it can extend or "
                "release it"
            )

    def _lost(self, operation: str) -> NoReturn:
        """The backend found this lease's token no longer holding the key (and forgot it)."""
        self._note_lost(operation)
        signals.lock_lost.send(sender=type(self._backend), **self._signal_kwargs())
        raise LockNotHeldError(f"lock {self.key!r} is no longer held by this lease")

    async def _alost(self, operation: str) -> NoReturn:
        """:meth:`_lost` for async code (``lock_lost`` sent as ``BaseLock._asend`` sends)."""
        self._note_lost(operation)
        kwargs = self._signal_kwargs()
        del kwargs["alias"]  # _asend adds it
        await self._backend._asend(signals.lock_lost, **kwargs)
        raise LockNotHeldError(f"lock {self.key!r} is no longer held by this lease")

    def _note_lost(self, operation: str) -> None:
        self._released = True
        logger.error(
            "lock %r was lost before %s: it expired, was taken over or was force-released "
            "(alias=%s, correlation_id=%s, fencing_token=%s)",
            self.key, operation, self.alias, self.correlation_id, self.fencing_token,
        )

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
        if not self._leaving():
            return
        try:
            self.release()
        except (LockNotHeldError, LockBackendError) as problem:
            if self._left_with(exc, problem):
                raise

    def _leaving(self) -> bool:
        """Leaving the block: whether to release (not if released, nor in a forked child)."""
        if self._released:
            return False
        if self._holder_pid != os.getpid():
            # A forked child leaving a block its parent entered: the lock is the parent's.
            logger.warning(
                "lock %r: a forked child (pid %d) left the block of a lease held by process "
                "%d; the lock stays with that process (alias=%s)",
                self.key, os.getpid(), self._holder_pid, self.alias,
            )
            self._released = True
            return False
        return True

    def _left_with(self, exc: BaseException | None, problem: Exception) -> bool:
        """The release on leaving the block raised ``problem``: True to raise it (the
        block ended normally), else it is noted on the block's ``exc`` (and logged)."""
        if exc is None:
            return True
        if hasattr(exc, "add_note"):
            exc.add_note(f"django_locks: while leaving the lock block: {problem!r}")
        if isinstance(problem, LockBackendError):
            logger.error(
                "lock %r could not be released: %s (alias=%s, correlation_id=%s)",
                self.key, problem, self.alias, self.correlation_id,
            )
        return False

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._leaving():
            return
        try:
            await self.arelease()
        except (LockNotHeldError, LockBackendError) as problem:
            if self._left_with(exc, problem):
                raise

    def __repr__(self) -> str:
        state = "released" if self._released else f"expires {self.expires_at.isoformat()}"
        mode = "" if self._info.mode.exclusive else f" {self._info.mode.label()}"
        return f"<Lease {self.alias}:{self.key!r}{mode} fencing_token={self.fencing_token} {state}>"


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
