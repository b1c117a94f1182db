"""The ILock contract, run against every backend on real servers."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from django_locks import locks, signals
from django_locks.backends.base import Lease
from django_locks.exceptions import LockNotHeldError, LockTimeoutError
from tests.helpers import in_thread, wait_until

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit


def other_instance(alias: str):
    """The alias's backend as another thread sees it (its own instance)."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("b", locks[alias]))
    thread.start()
    thread.join()
    return box["b"]


def test_each_thread_has_its_own_instance(alias):
    assert locks[alias] is locks[alias]
    assert other_instance(alias) is not locks[alias]


def test_try_acquire_then_busy(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock("c-1", "job", 60_000) is True
    # Not reentrant: the holder itself gets False, and so does anyone else.
    assert backend.try_acquire_lock("c-1", "job", 60_000) is False
    assert other_instance(alias).try_acquire_lock("c-2", "job", 60_000) is False
    info = backend.get_lock("job")
    assert info is not None and info.key == "job" and info.correlation_id == "c-1"
    assert info.expires_at > datetime.now(timezone.utc)


def test_release_lets_another_acquire(alias):
    backend, other = locks[alias], other_instance(alias)
    assert backend.try_acquire_lock(None, "job", 60_000)
    backend.release_lock(None, "job")
    assert backend.get_lock("job") is None
    assert other.try_acquire_lock(None, "job", 60_000)


def test_release_of_a_lock_not_held_raises_and_changes_nothing(alias):
    backend, other = locks[alias], other_instance(alias)
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "never-taken")
    assert other.try_acquire_lock("holder", "job", 60_000)
    before = other.get_lock("job")
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "job")  # held, but by another instance
    assert backend.get_lock("job") == before


def test_double_release_raises(alias):
    backend = locks[alias]
    backend.acquire_lock(None, "job", 60_000, 0)
    backend.release_lock(None, "job")
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "job")


def test_release_by_owner_token_from_another_instance(alias):
    backend, other = locks[alias], other_instance(alias)
    assert backend.try_acquire_lock(None, "job", 60_000)
    token = backend.get_lock("job").token
    with pytest.raises(LockNotHeldError):
        other.release_lock(None, "job", owner="0" * 32)  # wrong owner: refused
    assert backend.get_lock("job").token == token  # untouched
    other.release_lock(None, "job", owner=token)
    assert backend.get_lock("job") is None
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "job")  # the original holder knows it is gone


def test_acquire_times_out(alias):
    backend, other = locks[alias], other_instance(alias)
    assert other.try_acquire_lock(None, "job", 60_000)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError):
        backend.acquire_lock(None, "job", 60_000, 150)
    assert time.monotonic() - started >= 0.15
    with pytest.raises(LockTimeoutError):
        backend.acquire_lock(None, "job", 60_000, 0)  # one attempt


def test_waiting_acquire_gets_the_lock_when_it_is_released(alias):
    backend = locks[alias]
    backend.acquire_lock(None, "job", 60_000, 0)
    waiting = threading.Event()
    result: dict = {}

    def waiter():
        b = locks[alias]
        waiting.set()
        b.acquire_lock("waiter", "job", 60_000, 20_000)
        result["info"] = b.get_lock("job")

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait(10)
    assert backend.get_lock("job").correlation_id is None
    backend.release_lock(None, "job")
    thread.join(20)
    assert result["info"].correlation_id == "waiter"


def test_expiry_and_takeover(alias):
    backend, other = locks[alias], other_instance(alias)
    assert backend.try_acquire_lock(None, "job", 300)
    first = backend.get_lock("job")
    wait_until(lambda: backend.get_lock("job") is None)
    assert other.try_acquire_lock("new", "job", 60_000)
    second = other.get_lock("job")
    assert second.fencing_token > first.fencing_token
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "job")  # expired, then taken over
    assert other.get_lock("job") == second  # the new holder is untouched


def test_acquire_waits_for_expiry(alias):
    backend, other = locks[alias], other_instance(alias)
    assert other.try_acquire_lock(None, "job", 300)
    backend.acquire_lock("next", "job", 60_000, 20_000)
    assert backend.get_lock("job").correlation_id == "next"


def test_fencing_tokens_rise_across_release_expiry_and_force_release(alias):
    backend = locks[alias]
    tokens = []
    with backend.lock("job", 60_000) as lease:
        tokens.append(lease.fencing_token)
    with backend.lock("job", 60_000) as lease:
        tokens.append(lease.fencing_token)
    lease = backend.lock("job", 200)
    tokens.append(lease.fencing_token)
    wait_until(lambda: backend.get_lock("job") is None)
    lease = backend.lock("job", 60_000)
    tokens.append(lease.fencing_token)
    assert backend.force_release("job") is True
    backend.purge()
    tokens.append(backend.lock("job", 60_000).fencing_token)
    assert tokens == sorted(set(tokens)), tokens


def test_force_release(alias):
    backend, other = locks[alias], other_instance(alias)
    assert backend.force_release("job") is False
    assert other.try_acquire_lock(None, "job", 60_000)
    assert backend.force_release("job") is True
    assert backend.get_lock("job") is None
    with pytest.raises(LockNotHeldError):
        other.release_lock(None, "job")


def test_held_locks_lists_what_is_held(alias):
    backend = locks[alias]
    if not backend.supports_enumeration:
        with pytest.raises(NotImplementedError, match="cannot"):
            backend.held_locks()
        return
    assert backend.held_locks() == []
    backend.acquire_lock("c-a", "a", 60_000, 0)
    backend.acquire_lock("c-b", "b", 30_000, 0)
    backend.acquire_lock(None, "c", 200, 0)
    backend.release_lock(None, "a")
    wait_until(lambda: backend.get_lock("c") is None)
    backend.acquire_lock("c-a2", "a", 90_000, 0)
    held = backend.held_locks()
    assert [(i.key, i.correlation_id) for i in held] == [("b", "c-b"), ("a", "c-a2")]
    assert all(len(i.token) == 32 for i in held)
    assert held[0] == backend.get_lock("b")


def test_keys_compare_exactly(alias):
    backend = locks[alias]
    keys = ["Key", "key", "key ", " key", "kéy", "ke\u0301y", "KEY", "k:e/y", "ключ", "😀", "a" * 255]
    for key in keys:
        assert backend.try_acquire_lock(None, key, 60_000), key
    for key in keys:
        assert backend.get_lock(key).key == key
    if backend.supports_enumeration:
        assert sorted(i.key for i in backend.held_locks()) == sorted(keys)


def test_owner_tokens_are_fresh_and_random(alias):
    backend = locks[alias]
    seen = set()
    for _ in range(5):
        with backend.lock("job", 60_000) as lease:
            seen.add(lease.token)
    assert len(seen) == 5


# ----------------------------------------------------------------------------- Lease


def test_lease_attributes_and_context_manager(alias):
    backend = locks[alias]
    with backend.lock("job", 60_000, correlation_id="req-1") as lease:
        assert isinstance(lease, Lease)
        assert lease.key == "job" and lease.correlation_id == "req-1"
        assert isinstance(lease.token, str) and isinstance(lease.fencing_token, int)
        assert lease.expires_at.tzinfo is not None
        assert backend.get_lock("job").token == lease.token
    assert lease.released
    assert backend.get_lock("job") is None


def test_lease_extend(alias):
    backend = locks[alias]
    lease = backend.lock("job", 1000)
    first_expiry = lease.expires_at
    lease.extend(60_000)
    assert lease.expires_at > first_expiry
    assert backend.get_lock("job").expires_at == pytest.approx(lease.expires_at, abs=_second())
    # The lease now outlives its first ttl:
    wait_until(lambda: datetime.now(timezone.utc) > first_expiry)
    assert backend.get_lock("job").token == lease.token
    lease.extend()  # back to the original ttl
    lease.release()


def _second():
    from datetime import timedelta

    return timedelta(seconds=1)


def test_lease_released_and_extended_from_another_thread(alias):
    backend = locks[alias]
    lease = backend.lock("job", 60_000)
    in_thread(lease.extend, 30_000)
    in_thread(lease.release)
    assert backend.get_lock("job") is None
    with pytest.raises(LockNotHeldError):
        backend.release_lock(None, "job")


def test_lost_lease_is_reported_on_exit(alias):
    backend = locks[alias]
    lost = []
    signals.lock_lost.connect(lambda **kw: lost.append(kw), weak=False, dispatch_uid="t-lost")
    try:
        with pytest.raises(LockNotHeldError):
            with backend.lock("job", 60_000, correlation_id="cid") as lease:
                other_instance(alias).force_release("job")
        assert lost and lost[0]["key"] == "job" and lost[0]["correlation_id"] == "cid"
        with pytest.raises(LockNotHeldError):
            lease.extend()
    finally:
        signals.lock_lost.disconnect(dispatch_uid="t-lost")


def test_exception_in_block_is_never_hidden(alias):
    backend = locks[alias]
    with pytest.raises(ZeroDivisionError) as caught:
        with backend.lock("job", 60_000):
            other_instance(alias).force_release("job")
            1 / 0  # noqa: B018
    notes = getattr(caught.value, "__notes__", [])
    assert any("LockNotHeldError" in note for note in notes) or not hasattr(caught.value, "add_note")
    with pytest.raises(KeyError):
        with backend.lock("job2", 60_000):
            raise KeyError("x")
    assert backend.get_lock("job2") is None  # released on the way out


def test_lease_with_timeout_waits(alias):
    backend, other = locks[alias], other_instance(alias)
    assert other.try_acquire_lock(None, "job", 60_000)
    with pytest.raises(LockTimeoutError):
        backend.lock("job", 1000, timeout=50)
    other.release_lock(None, "job")
    with backend.lock("job", 1000, timeout=50) as lease:
        assert lease.fencing_token > 0


def test_signals_on_acquire_and_release(alias):
    backend = locks[alias]
    seen = []
    signals.lock_acquired.connect(lambda sender, **kw: seen.append(("acq", sender, kw)),
                                  weak=False, dispatch_uid="t-acq")
    signals.lock_released.connect(lambda sender, **kw: seen.append(("rel", sender, kw)),
                                  weak=False, dispatch_uid="t-rel")
    try:
        with backend.lock("job", 60_000, correlation_id="cid") as lease:
            pass
    finally:
        signals.lock_acquired.disconnect(dispatch_uid="t-acq")
        signals.lock_released.disconnect(dispatch_uid="t-rel")
    assert [s[0] for s in seen] == ["acq", "rel"]
    for _, sender, kw in seen:
        kw.pop("signal")
        assert sender is type(backend)
        assert kw == {"alias": alias, "key": "job", "token": lease.token,
                      "fencing_token": lease.fencing_token, "correlation_id": "cid"}
