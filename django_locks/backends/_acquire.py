"""The acquisition policy, written once, and the two short loops that carry it out.

:class:`Acquisition` decides what one call does next (attempt, wait for a release, back
off after a backend error, return, give up) from what the last step reported; it does no
I/O. :func:`acquire` (sync) and :func:`aacquire` (async) only execute its decisions, as
tenacity's ``Retrying`` and ``AsyncRetrying`` execute ``BaseRetrying.iter()``'s. Async
attempts are the backend's ``_aattempt``: awaited in the event loop where the backend can
(CacheLock on Redis), else run in a worker thread; waits hold no thread. The why of each
rule is in ``docs/internals/acquisition.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from django_locks.exceptions import LockBackendError, LockTimeoutError
from django_locks.values import Attempt, LockInfo, Mode, new_token

if TYPE_CHECKING:
    from django_locks.backends.base import BaseLock

logger = logging.getLogger("django_locks")


# --------------------------------------------------------------------------- decisions


class AttemptNow:
    """Make one attempt (``BaseLock._attempt``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WaitForRelease:
    """Wait at most ``seconds`` for a release (``_wait_for_release`` / ``_await_release``)."""

    seconds: float
    waits: int  # how many waits and back-offs came before (the polling backoff's exponent)


@dataclass(frozen=True, slots=True)
class BackOff:
    """Sleep ``seconds`` after a retryable backend error, then attempt again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Done:
    """The call ends with ``info`` (None: a single try that was refused)."""

    info: LockInfo | None


class GiveUp(NamedTuple):
    """What a call that ends without the lock leaves behind to clean up."""

    settle: bool  # hand the token to the settler: an attempt of it may have won unseen
    unmark: bool  # remove the writer mark it may have left, now


Decision = AttemptNow | WaitForRelease | BackOff | Done
ATTEMPT = AttemptNow()


class AnsweredAfterCancel(asyncio.CancelledError):
    """An async storage operation cancelled in flight that still heard its answer (a
    Redis command whose reply was read after the cancellation): the cancellation goes on,
    with the operation's result (for an attempt, its :class:`Attempt`)."""

    def __init__(self, answer: object) -> None:
        super().__init__()
        self.answer = answer


# --------------------------------------------------------------------------- the policy


class Acquisition:
    """One call's acquisition of ``key``: its token, deadline and what it has seen so far.

    The rule for "uncertain" (the same for sync and async callers): the token may hold
    the key unseen once one of its attempts did not answer: it raised a backend error (a
    socket timeout after the server ran the command), or was interrupted while in flight
    (anything not an ``Exception``: KeyboardInterrupt, a cancellation whose attempt, left
    running in its task or worker thread, never reports), or an attempt that won after a cancellation
    could not be undone. A failed *wait* never makes it uncertain: waits take nothing, and
    the attempt before the wait answered "refused"; nor does an attempt refused by an
    ordinary exception (NotImplementedError, ValueError: an answer, not a lost one). A call
    that gives up with an uncertain token hands it to the settler, which releases it once
    the backend answers; while the call goes on, the same token may still win.
    """

    def __init__(
        self,
        backend: BaseLock,
        key: str,
        ttl: int,
        timeout: int,
        correlation_id: str | None,
        mode: Mode,
        *,
        writer_recheck_ms: int,
        single_try: bool = False,
    ) -> None:
        self.backend = backend
        self.key, self.ttl, self.timeout = key, ttl, timeout
        self.correlation_id, self.mode = correlation_id, mode
        self.writer_recheck_ms = writer_recheck_ms
        #: try_acquire_lock: a refusal ends the call (no timeout error, no log).
        self.single_try = single_try
        self.token = new_token()
        #: The call waits (timeout > 0): a non-shared waiter's refused attempt marks the key.
        self.waiter = timeout > 0
        self.deadline = time.monotonic() + timeout / 1000
        #: Waits and back-offs so far (the backoff exponent; the first wait is logged).
        self.waits = 0
        #: An attempt found the lock held: from then on, passing backend errors are retried.
        self.found_held = False
        #: An attempt is running whose answer has not been reported.
        self.attempt_in_flight = False
        #: The token may hold the key unseen (see the class docstring).
        self.uncertain = False
        #: A refused non-shared waiting attempt left (renewed) the key's writer mark.
        self.left_writer_mark = False

    # -- what the driver reports, and what it is told to do next

    def first(self) -> Decision:
        return self._attempt_next()

    def answered(self, attempt: Attempt) -> Decision:
        """The attempt answered: done, or wait (:class:`LockTimeoutError` at the deadline)."""
        self.attempt_in_flight = False
        if attempt.info is not None or self.single_try:
            return Done(attempt.info)
        self.left_writer_mark = self.waiter and not self.mode.shared
        seconds = self._wait_budget(attempt)
        self.found_held = True
        return WaitForRelease(seconds, self.waits)

    def failed(self, error: LockBackendError) -> Decision:
        """The attempt or the wait raised ``error``: back off and retry, or re-raise it."""
        if self.attempt_in_flight:
            self.attempt_raised(error)
        return BackOff(self._retry_delay(error))

    def attempt_raised(self, error: BaseException) -> None:
        """The attempt in flight ended with ``error`` instead of an answer."""
        self.attempt_in_flight = False
        if isinstance(error, LockBackendError) or not isinstance(error, Exception):
            self.uncertain = True

    def wait_attempts(self) -> bool:
        """Whether the wait about to begin also attempts (``_waits_attempt``): the backend
        sends the next attempt with the wait, to run as soon as the wake-up does. Such a
        wait is an attempt in flight: if it fails, the token is uncertain."""
        if self.backend._waits_attempt(self.mode):
            self.attempt_in_flight = True
            return True
        return False

    def waited(self, attempt: Attempt | None = None) -> Decision:
        """The wait ended; ``attempt`` is the answer of the attempt it carried, if any."""
        self.waits += 1
        if attempt is not None:
            return self.answered(attempt)
        return self._attempt_next()

    def backed_off(self) -> Decision:
        self.waits += 1
        return self._attempt_next()

    def abandoned_attempt_answered(self, attempt: Attempt) -> bool:
        """A cancelled call's attempt, left running (in its task or worker thread),
        answered after all.
        True: it won, and the driver undoes it (:func:`undo`)."""
        self.attempt_in_flight = False
        return attempt.info is not None

    def give_up(self, error: BaseException) -> GiveUp:
        """The call ends with ``error``: settle its token if uncertain (see the class
        docstring); remove its writer mark now if a refused attempt left one, or if a
        non-shared waiter is interrupted (it may have marked mid-attempt), but never after
        a backend error (asking the failing backend would cost another timeout; the mark
        lapses by itself within WRITER_MARK_MS)."""
        if self.attempt_in_flight:  # the sync attempt raised it, or was interrupted by it
            self.attempt_raised(error)
        unmark = not isinstance(error, LockBackendError) and (
            self.left_writer_mark
            or (self.waiter and not self.mode.shared and not isinstance(error, Exception))
        )
        return GiveUp(self.uncertain, unmark)

    # -- the rules

    def _attempt_next(self) -> AttemptNow:
        self.attempt_in_flight = True
        return ATTEMPT

    def _wait_budget(self, attempt: Attempt) -> float:
        """How long to wait before the next attempt: until the deadline at most, or the
        holder's expiry, and for a non-shared waiter ``writer_recheck_ms`` (each of its
        attempts renews the mark holding new shared acquisitions back)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            logger.info(
                "lock %r not acquired within %d ms (alias=%s, correlation_id=%s)",
                self.key, self.timeout, self.backend.alias, self.correlation_id,
            )
            raise LockTimeoutError(f"lock {self.key!r} not acquired within {self.timeout} ms")
        if self.waits == 0:
            logger.debug(
                "waiting up to %d ms for lock %r (alias=%s, correlation_id=%s)",
                self.timeout, self.key, self.backend.alias, self.correlation_id,
            )
        if attempt.holder_remaining_ms is not None:
            remaining = min(remaining, attempt.holder_remaining_ms / 1000)
        if not self.mode.shared:
            remaining = min(remaining, self.writer_recheck_ms / 1000)
        return remaining

    def _retry_delay(self, error: LockBackendError) -> float:
        """Retry only once the call is waiting (an attempt found the lock held), while the
        deadline is ahead, and if the backend says the failure passes by itself (a
        failover, a restart: ``_retryable``); else ``error`` is raised, never turned into a
        timeout. Jittered exponential backoff."""
        backend = self.backend
        remaining = self.deadline - time.monotonic()
        if not self.found_held or remaining <= 0 or not backend._retryable(error):
            raise error
        logger.warning(
            "lock %r: backend failed while waiting, retrying until the deadline: %s "
            "(alias=%s, correlation_id=%s)", self.key, error, backend.alias, self.correlation_id,
        )
        backoff = min(
            backend.RETRY_INTERVAL_MAX, backend.RETRY_INTERVAL_MIN * 2 ** min(self.waits, 16)
        )
        return min(remaining, backoff * random.uniform(0.5, 1.0))


# --------------------------------------------------------------------------- the drivers


def _attempt_arguments(acquisition: Acquisition) -> tuple[str, int, str | None, str, Mode, bool]:
    a = acquisition
    return a.key, a.ttl, a.correlation_id, a.token, a.mode, a.waiter


def _waiting(acquisition: Acquisition) -> contextlib.AbstractContextManager[None]:
    backend = acquisition.backend
    return backend._waiting(acquisition.key) if acquisition.waiter else contextlib.nullcontext()


def acquire(acquisition: Acquisition) -> LockInfo | None:
    """Carry out ``acquisition`` in this thread."""
    backend, key = acquisition.backend, acquisition.key
    try:
        with _waiting(acquisition):
            decision = acquisition.first()
            while True:
                try:
                    if isinstance(decision, AttemptNow):
                        attempt = backend._attempt(*_attempt_arguments(acquisition))
                        decision = acquisition.answered(attempt)
                    elif isinstance(decision, WaitForRelease):
                        if acquisition.wait_attempts():
                            attempt = backend._wait_then_attempt(
                                decision.seconds, decision.waits, *_attempt_arguments(acquisition)
                            )
                            decision = acquisition.waited(attempt)
                        else:
                            backend._wait_for_release(key, decision.seconds, decision.waits)
                            decision = acquisition.waited()
                    elif isinstance(decision, BackOff):
                        time.sleep(decision.seconds)
                        decision = acquisition.backed_off()
                    else:
                        return decision.info
                except LockBackendError as error:
                    decision = acquisition.failed(error)
    except BaseException as error:
        settle, unmark = acquisition.give_up(error)
        if settle:
            backend._unsettled(key, acquisition.token, acquisition.ttl)
        if unmark:
            backend._give_up_mark(key, acquisition.token)
        raise


async def aacquire(acquisition: Acquisition) -> LockInfo | None:
    """Carry out ``acquisition`` for an async caller: attempts by the backend's
    ``_aattempt``, awaited directly where they run in the event loop (``native_async``:
    Redis), else each in a shielded task of its own (a worker thread's); waits holding no
    thread (a Redis BLPOP, a PostgreSQL NOTIFY, else ``asyncio.sleep``)."""
    backend, key = acquisition.backend, acquisition.key
    running: asyncio.Future[Attempt] | None = None
    try:
        with _waiting(acquisition):
            decision = acquisition.first()
            while True:
                try:
                    if isinstance(decision, AttemptNow) and backend.native_async:
                        # Cancelled mid-attempt, it raises AnsweredAfterCancel if it heard
                        # its answer (see below), else the token is uncertain (give_up).
                        attempt = await backend._aattempt(*_attempt_arguments(acquisition))
                        decision = acquisition.answered(attempt)
                    elif isinstance(decision, AttemptNow):
                        running = asyncio.ensure_future(
                            backend._aattempt(*_attempt_arguments(acquisition))
                        )
                        # Shielded: a cancellation leaves the attempt running (see below).
                        decision = acquisition.answered(await asyncio.shield(running))
                    elif isinstance(decision, WaitForRelease):
                        if acquisition.wait_attempts():
                            attempt = await backend._await_then_attempt(
                                decision.seconds, decision.waits, *_attempt_arguments(acquisition)
                            )
                            decision = acquisition.waited(attempt)
                        else:
                            await backend._await_release(key, decision.seconds, decision.waits)
                            decision = acquisition.waited()
                    elif isinstance(decision, BackOff):
                        await asyncio.sleep(decision.seconds)
                        decision = acquisition.backed_off()
                    else:
                        return decision.info
                except LockBackendError as error:
                    decision = acquisition.failed(error)
    except BaseException as error:
        if acquisition.attempt_in_flight and isinstance(error, AnsweredAfterCancel):
            # Cancelled mid-attempt, its answer heard after all: undo a win.
            assert isinstance(error.answer, Attempt)
            if acquisition.abandoned_attempt_answered(error.answer):
                await aundo(acquisition)
        elif acquisition.attempt_in_flight and running is not None:
            # Cancelled while its attempt runs on (its task, or its worker thread, is not
            # cancelled): hear its answer, and undo a win, so that a cancelled waiter
            # leaves nothing behind.
            await _finish_abandoned_attempt(acquisition, running)
        settle, unmark = acquisition.give_up(error)
        if settle:
            backend._unsettled(key, acquisition.token, acquisition.ttl)
        if unmark:
            await backend._agive_up_mark(key, acquisition.token)
        raise


async def _finish_abandoned_attempt(acquisition: Acquisition, running: asyncio.Future[Attempt]) -> None:
    try:
        attempt = await running
    except BaseException as error:
        acquisition.attempt_raised(error)
        return
    if acquisition.abandoned_attempt_answered(attempt):
        await aundo(acquisition)


def undo(acquisition: Acquisition) -> None:
    """Release the lock an attempt of ``acquisition`` won for a caller that is gone. If the
    backend fails, the token is uncertain and the settler releases it once it answers."""
    backend, key, token = acquisition.backend, acquisition.key, acquisition.token
    try:
        backend._release(key, token)
    except LockBackendError as e:
        _undo_failed(acquisition, e)
    backend._forget(key, token)


async def aundo(acquisition: Acquisition) -> None:
    """:func:`undo` for async callers (the backend's ``_arelease``)."""
    backend, key, token = acquisition.backend, acquisition.key, acquisition.token
    try:
        await backend._arelease(key, token)
    except LockBackendError as e:
        _undo_failed(acquisition, e)
    backend._forget(key, token)


def _undo_failed(acquisition: Acquisition, error: LockBackendError) -> None:
    logger.warning(
        "a cancelled waiter could not release lock %r it won meanwhile: %s (alias=%s); "
        "it is released once the backend answers", acquisition.key, error,
        acquisition.backend.alias,
    )
    acquisition.uncertain = True
