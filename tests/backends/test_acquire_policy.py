"""The acquisition policy (django_locks.backends._acquire): one set of rules, carried out
by a sync and an async loop that must agree.

The faults below are injected at the backend's storage-method level (``_try_acquire``,
``_wait_for_release`` / ``_await_release``) of a real backend: "the server ran the command
but its reply never came" cannot be produced on demand for every backend (test_redis has
the real one, a SIGSTOPped Redis). The storage underneath is real: the injected attempt
really takes the lock, and what is left of it is read back from the backend.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_locks import locks
from django_locks.backends._acquire import (
    Acquisition,
    AttemptNow,
    BackOff,
    Done,
    WaitForRelease,
)
from django_locks.backends.base import BaseLock
from django_locks.exceptions import LockBackendError, LockTimeoutError
from django_locks.values import EXCLUSIVE, SHARED, Attempt, LockInfo, Mode, time_until_admitted
from tests.helpers import settled_tokens, wait_until

pytestmark = pytest.mark.unit

DRIVERS = ("sync", "async")


class Interrupted(BaseException):
    """An interruption that is not an Exception (KeyboardInterrupt, gevent's Timeout)."""


@dataclass(frozen=True)
class Outcome:
    raised: type[BaseException]
    settled: int  # tokens handed to the settler
    key_free: bool  # once the settler is done: nothing left holding the key for nobody


def _async_attempts_run_sync_ones(backend, monkeypatch) -> None:
    """Faults are injected into the sync ``_try_acquire``: async attempts then run it in a
    worker thread (BaseLock's default ``_atry_acquire``, in a shielded task), on Redis too,
    whose own async attempts run in the event loop (their faults:
    tests/backends/cache/test_redis_async.py)."""
    monkeypatch.setattr(backend, "_atry_acquire", functools.partial(BaseLock._atry_acquire, backend))
    if isinstance(getattr(type(backend), "native_async", None), property):  # DatabaseLock
        monkeypatch.setattr(type(backend), "native_async", False)
    else:
        monkeypatch.setattr(backend, "native_async", False)


def _acquire(backend, driver: str, timeout: int) -> None:
    if driver == "sync":
        backend.acquire_lock(None, "job", 60_000, timeout)
    else:
        asyncio.run(backend.aacquire_lock(None, "job", 60_000, timeout))


def _settles(backend) -> bool:
    """Whether the settler frees the key within the deadline. The key's own state, not the
    settler's queue length: entries of earlier tests may wait there until their own
    deadlines (a CI rehearsal saw the count stay above 0 after this key was released)."""
    try:
        wait_until(lambda: backend.get_lock("job") is None, timeout=10, error=TimeoutError,
                   what="the settler freeing the key")
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- one fault, both loops


def _applied_but_unanswered(alias, driver, monkeypatch) -> Outcome:
    """The attempt takes the lock on the server, and then its reply is lost."""
    backend = locks[alias]
    take = backend._try_acquire

    def applied_then_lost(*args):
        take(*args)
        raise LockBackendError("injected: the reply of an applied attempt was lost")

    handed = settled_tokens(monkeypatch)
    monkeypatch.setattr(backend, "_try_acquire", applied_then_lost)
    _async_attempts_run_sync_ones(backend, monkeypatch)
    with pytest.raises(LockBackendError) as raised:
        _acquire(backend, driver, timeout=2_000)
    monkeypatch.undo()
    return Outcome(raised.type, len(handed), _settles(backend))


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_applied_attempt_whose_reply_is_lost_is_settled(alias, driver, monkeypatch):
    outcome = _applied_but_unanswered(alias, driver, monkeypatch)
    assert outcome == Outcome(LockBackendError, settled=1, key_free=True)


def _wait_fails(alias, driver, monkeypatch) -> Outcome:
    """The attempt answers "held"; the wait for the release then fails."""
    backend = locks[alias]
    holder = locks.create_connection(alias)
    holder.acquire_lock(None, "job", 60_000, 0)
    handed = settled_tokens(monkeypatch)

    def wait_fails(key, seconds, waits):
        raise LockBackendError("injected: the wait for a release failed")

    async def await_fails(key, seconds, waits):
        wait_fails(key, seconds, waits)

    def wait_then_attempt_fails(seconds, waits, key, *attempt):
        wait_fails(key, seconds, waits)

    async def await_then_attempt_fails(seconds, waits, key, *attempt):
        wait_fails(key, seconds, waits)

    monkeypatch.setattr(backend, "_wait_for_release", wait_fails)
    monkeypatch.setattr(backend, "_wait_then_attempt", wait_then_attempt_fails)
    monkeypatch.setattr(backend, "_await_then_attempt", await_then_attempt_fails)
    monkeypatch.setattr(backend, "_await_release", await_fails)
    with pytest.raises(LockBackendError) as raised:
        _acquire(backend, driver, timeout=2_000)
    monkeypatch.undo()
    still_held = backend.get_lock("job")
    holder.release_lock(None, "job")
    return Outcome(raised.type, len(handed), still_held is None)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_failed_wait_is_not_an_uncertain_acquisition(alias, driver, monkeypatch):
    """The sync loop used to hand this token to the settler, the async loop did not: a
    wait takes nothing, and the attempt before it answered "held". Except a wait that
    carries the next attempt (Redis: ``_waits_attempt``): the attempt may have run, so its
    failure makes the token uncertain, and the settler releases what it may hold."""
    carries_attempt = locks[alias]._waits_attempt(EXCLUSIVE)
    outcome = _wait_fails(alias, driver, monkeypatch)
    assert outcome == Outcome(LockBackendError, settled=int(carries_attempt), key_free=False)


def _refused_by_an_exception(alias, driver, monkeypatch) -> Outcome:
    """The attempt raises an ordinary exception (as the cache.add fallback refuses
    shared=True): an answer, nothing to settle."""
    backend = locks[alias]

    def refuses(*args):
        raise NotImplementedError("injected: this backend refuses the attempt")

    handed = settled_tokens(monkeypatch)
    monkeypatch.setattr(backend, "_try_acquire", refuses)
    _async_attempts_run_sync_ones(backend, monkeypatch)
    with pytest.raises(NotImplementedError) as raised:
        _acquire(backend, driver, timeout=2_000)
    monkeypatch.undo()
    return Outcome(raised.type, len(handed), _settles(backend))


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_attempt_refused_by_an_exception_is_not_settled(alias, driver, monkeypatch):
    outcome = _refused_by_an_exception(alias, driver, monkeypatch)
    assert outcome == Outcome(NotImplementedError, settled=0, key_free=True)


def test_both_loops_agree_on_every_fault(alias, monkeypatch):
    for fault in (_applied_but_unanswered, _wait_fails, _refused_by_an_exception):
        sync = fault(alias, "sync", monkeypatch)
        assert fault(alias, "async", monkeypatch) == sync, fault.__name__


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_attempt_interrupted_after_it_was_applied_leaves_nothing(alias, driver, monkeypatch):
    """Sync: the attempt is interrupted (not an Exception) after the backend applied it;
    its outcome is unknown to the caller, so the settler releases the token. Async: the
    caller is cancelled while the attempt runs in its worker thread, which goes on and wins;
    the cancelled call waits for that answer and releases the lock at once."""
    backend = locks[alias]
    if not backend.does_io:  # attempts of an async caller run inline: make them run in a worker
        monkeypatch.setattr(backend, "does_io", True)
    take = backend._try_acquire
    applied, proceed = threading.Event(), threading.Event()

    def applied_then(*args):
        attempt = take(*args)
        applied.set()
        if driver == "sync":
            raise Interrupted
        proceed.wait(10)  # the caller is cancelled meanwhile
        return attempt

    handed = settled_tokens(monkeypatch)
    monkeypatch.setattr(backend, "_try_acquire", applied_then)
    _async_attempts_run_sync_ones(backend, monkeypatch)
    if driver == "sync":
        with pytest.raises(Interrupted):
            backend.acquire_lock(None, "job", 60_000, 2_000)
    else:
        async def cancelled() -> None:
            task = asyncio.ensure_future(backend.aacquire_lock(None, "job", 60_000, 2_000))
            await asyncio.to_thread(applied.wait, 10)
            task.cancel()
            proceed.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())
    monkeypatch.undo()
    assert len(handed) == (1 if driver == "sync" else 0)  # async: undone by the call itself
    assert _settles(backend)
    assert len(backend._held_tokens) == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_cancelled_attempt_that_then_fails_is_settled(alias, driver, monkeypatch):
    """Async: cancelled while its attempt runs on; the attempt is applied, then its reply
    is lost. Nobody hears that answer, so the token goes to the settler, as a sync call's
    attempt that fails so does."""
    backend = locks[alias]
    if not backend.does_io:
        monkeypatch.setattr(backend, "does_io", True)
    take = backend._try_acquire
    applied, proceed = threading.Event(), threading.Event()

    def applied_then_lost(*args):
        take(*args)
        applied.set()
        if driver == "async":
            proceed.wait(10)
        raise LockBackendError("injected: the reply of an applied attempt was lost")

    handed = settled_tokens(monkeypatch)
    monkeypatch.setattr(backend, "_try_acquire", applied_then_lost)
    _async_attempts_run_sync_ones(backend, monkeypatch)
    if driver == "sync":
        with pytest.raises(LockBackendError):
            backend.acquire_lock(None, "job", 60_000, 2_000)
    else:
        async def cancelled() -> None:
            task = asyncio.ensure_future(backend.aacquire_lock(None, "job", 60_000, 2_000))
            await asyncio.to_thread(applied.wait, 10)
            task.cancel()
            proceed.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())
    monkeypatch.undo()
    assert len(handed) == 1
    assert _settles(backend)


# --------------------------------------------------------------------------- the decisions alone


class _NoBackend:
    """What the policy reads of a backend; it does no I/O."""

    alias = "policy"
    RETRY_INTERVAL_MIN = 0.05
    RETRY_INTERVAL_MAX = 0.5

    def __init__(self, retryable: bool = False) -> None:
        self.retryable = retryable

    def _retryable(self, error: LockBackendError) -> bool:
        return self.retryable


def _policy(timeout: int = 1_000, mode: Mode = EXCLUSIVE, retryable: bool = False,
            single_try: bool = False) -> Acquisition:
    return Acquisition(_NoBackend(retryable), "job", 60_000, timeout, None, mode,  # type: ignore[arg-type]
                       writer_recheck_ms=250, single_try=single_try)


REFUSED = Attempt(None, 30_000)
WON = Attempt(LockInfo("job", "a" * 32, 1, None, 0, 60_000_000))


def test_a_refusal_waits_for_the_holder_at_most_until_the_writer_recheck():
    policy = _policy()
    assert isinstance(policy.first(), AttemptNow)
    decision = policy.answered(REFUSED)
    assert isinstance(decision, WaitForRelease) and 0 < decision.seconds <= 0.25
    assert isinstance(policy.waited(), AttemptNow)
    assert policy.answered(WON) == Done(WON.info)


def test_a_single_try_refused_is_done_without_a_timeout():
    policy = _policy(timeout=0, single_try=True)
    policy.first()
    assert policy.answered(REFUSED) == Done(None)


def test_a_refusal_at_the_deadline_is_a_timeout():
    policy = _policy(timeout=0)
    policy.first()
    with pytest.raises(LockTimeoutError):
        policy.answered(REFUSED)


def test_a_backend_error_is_retried_only_once_waiting_and_if_it_passes():
    error = LockBackendError("down")
    first = _policy(retryable=True)
    first.first()
    with pytest.raises(LockBackendError):
        first.failed(error)  # the first attempt: never retried
    assert first.give_up(error).settle

    waiting = _policy(retryable=True)
    waiting.first()
    waiting.answered(REFUSED)
    waiting.waited()
    assert isinstance(waiting.failed(error), BackOff)  # found held, retryable: back off
    assert waiting.uncertain

    lasting = _policy(retryable=False)
    lasting.first()
    lasting.answered(REFUSED)
    with pytest.raises(LockBackendError):
        lasting.failed(error)  # the wait failed: not retryable, and not uncertain
    assert lasting.give_up(error) == (False, False)


@pytest.mark.parametrize(
    ("mode", "refused_first", "error", "settle", "unmark"),
    [
        (EXCLUSIVE, True, LockTimeoutError("t"), False, True),  # a refusal left the mark
        (EXCLUSIVE, True, LockBackendError("b"), False, False),  # the wait failed
        (EXCLUSIVE, False, LockBackendError("b"), True, False),  # the attempt failed
        (EXCLUSIVE, False, Interrupted(), True, True),  # may have won, and marked, mid-attempt
        (EXCLUSIVE, False, asyncio.CancelledError(), True, True),
        (EXCLUSIVE, False, NotImplementedError("n"), False, False),  # an answer, not a lost one
        (SHARED, True, Interrupted(), False, False),  # shared waiters never mark
        (SHARED, False, Interrupted(), True, False),
    ],
)
def test_giving_up(mode, refused_first, error, settle, unmark):
    policy = _policy(mode=mode)
    policy.first()
    if refused_first:
        policy.answered(REFUSED)  # and gives up while it waits
    assert policy.give_up(error) == (settle, unmark)


# --------------------------------------------------------------------------- the admission rule


def _old_free_in_ms(mode: Mode, holders: list[tuple[int | None, bool]]) -> int | None:
    """guard.free_in_ms as it was written before time_until_admitted."""
    if mode.shared:
        blocking = [left for left, shared in holders if not shared]
        if not blocking:
            return None
        return None if None in blocking else max(blocking)  # type: ignore[type-var]
    if len(holders) < mode.limit:
        return None
    ordered = sorted(holders, key=lambda h: (h[0] is None, h[0] or 0))
    return ordered[len(holders) - mode.limit][0]


modes = st.one_of(st.just(SHARED), st.integers(1, 5).map(lambda n: Mode(False, n)))
holder_lists = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 10_000)), st.booleans()),
                        max_size=8)


@given(modes, holder_lists)
def test_time_until_admitted_is_the_guards_rule(mode, holders):
    left = time_until_admitted(mode, [(math.inf if ms is None else ms, s) for ms, s in holders])
    assert (None if left is None or left == math.inf else left) == _old_free_in_ms(mode, holders)


def test_time_until_admitted():
    assert time_until_admitted(EXCLUSIVE, []) is None
    assert time_until_admitted(EXCLUSIVE, [(5, False)]) == 5
    assert time_until_admitted(Mode(False, 2), [(5, False)]) is None
    assert time_until_admitted(Mode(False, 2), [(5, False), (3, True), (9, False)]) == 5
    assert time_until_admitted(SHARED, [(5, True)]) is None
    assert time_until_admitted(SHARED, [(5, True)], writer_mark=7) == 7
    assert time_until_admitted(SHARED, [(5, True), (8, False)], writer_mark=7) == 8
    assert time_until_admitted(EXCLUSIVE, [(5, True)], writer_mark=7) == 5  # marks hold readers only
