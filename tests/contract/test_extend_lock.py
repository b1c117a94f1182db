"""``extend_lock(correlation_id, key, ttl, *, owner=None)`` and ``aextend_lock`` on every
backend: by this instance, or by owner token from another instance (another process)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from django_locks import locks
from django_locks.exceptions import LockNotHeldError
from tests import proof
from tests.helpers import wait_until

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit


def other_instance(alias: str):
    """A second backend instance of the alias, holding nothing: as another process would."""
    return locks.create_connection(alias)


def test_extend_by_this_instance(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock("cid", "k", 2_000)
    before = backend.get_lock("k")
    expires = backend.extend_lock("cid", "k", 60_000)
    after = backend.get_lock("k")
    assert isinstance(expires, datetime) and expires.tzinfo is not None
    assert expires == after.expires_at > before.expires_at
    assert 55 < (expires - datetime.now(timezone.utc)).total_seconds() <= 60
    assert (after.token, after.fencing_token) == (before.token, before.fencing_token)
    assert after.correlation_id == "cid"
    backend.release_lock(None, "k")  # still this instance's


def test_extend_by_owner_token_from_another_instance(alias):
    holder = locks[alias]
    with holder.lock("nightly", 2_000, correlation_id="shell-1") as lease:
        stranger = other_instance(alias)
        expires = stranger.extend_lock("cron", "nightly", 120_000, owner=lease.token)
        assert expires == holder.get_lock("nightly").expires_at
        assert 115 < (expires - datetime.now(timezone.utc)).total_seconds() <= 120
        with pytest.raises(LockNotHeldError, match="not held by this instance"):
            stranger.extend_lock(None, "nightly", 1_000)  # no owner: the stranger holds nothing
    assert holder.get_lock("nightly") is None


def test_a_wrong_token_changes_nothing(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock(None, "k", 60_000)
    before = backend.get_lock("k")
    with pytest.raises(LockNotHeldError, match="not held by that owner token"):
        other_instance(alias).extend_lock(None, "k", 600_000, owner="f" * 32)
    assert backend.get_lock("k") == before


def test_not_held_released_or_expired(alias):
    backend = locks[alias]
    with pytest.raises(LockNotHeldError, match="not held by this instance"):
        backend.extend_lock(None, "free", 1_000)
    with pytest.raises(LockNotHeldError):
        backend.extend_lock(None, "free", 1_000, owner="a" * 32)

    lease = backend.lock("gone", 60_000)
    lease.release()
    with pytest.raises(LockNotHeldError):
        backend.extend_lock(None, "gone", 1_000, owner=lease.token)

    assert backend.try_acquire_lock(None, "short", 100)
    wait_until(lambda: backend.get_lock("short") is None)  # expired
    # This instance's holding expired with it: nothing to extend, nothing changed.
    with pytest.raises(LockNotHeldError, match="not held by this instance"):
        backend.extend_lock(None, "short", 60_000)
    assert backend.get_lock("short") is None


def test_taken_over_lock_is_not_extended(alias):
    backend = locks[alias]
    first = backend.lock("k", 100)
    wait_until(lambda: backend.get_lock("k") is None)  # expired
    second = other_instance(alias).lock("k", 60_000)
    with pytest.raises(LockNotHeldError):
        backend.extend_lock(None, "k", 60_000, owner=first.token)
    assert backend.get_lock("k").token == second.token
    second.release()


BAD = [
    ({"key": ""}, ValueError, "key must not be empty"),
    ({"key": 3}, TypeError, "key must be a str"),
    ({"ttl": 0}, ValueError, "ttl must be > 0"),
    ({"ttl": 1.5}, TypeError, "ttl must be an int"),
    ({"ttl": True}, TypeError, "ttl must be an int"),
    ({"correlation_id": "a\nb"}, ValueError, "correlation_id must not contain"),
    ({"owner": "not-a-token"}, ValueError, "owner must be an owner token"),
    ({"owner": 5}, TypeError, "owner must be a str"),
]


@pytest.mark.parametrize(("bad", "error", "message"), BAD)
def test_bad_arguments_touch_nothing(alias, bad, error, message):
    backend = locks[alias]
    lease = backend.lock("k", 60_000)
    before = backend.get_lock("k")
    arguments = {"correlation_id": None, "key": "k", "ttl": 1_000, "owner": lease.token, **bad}
    with pytest.raises(error, match=message):
        backend.extend_lock(**arguments)
    proof.record_bad_inputs("Python API")
    with pytest.raises(error, match=message):
        asyncio.run(backend.aextend_lock(**arguments))
    proof.record_bad_inputs("Python API")
    assert backend.get_lock("k") == before


def test_async_twin(alias):
    backend = locks[alias]

    async def scenario():
        assert await backend.atry_acquire_lock(None, "k", 2_000)
        mine = await backend.aextend_lock("cid", "k", 60_000)
        token = backend.get_lock("k").token
        theirs = await other_instance(alias).aextend_lock(None, "k", 90_000, owner=token)
        with pytest.raises(LockNotHeldError):
            await other_instance(alias).aextend_lock(None, "k", 90_000, owner="e" * 32)
        return mine, theirs

    mine, theirs = asyncio.run(scenario())
    assert theirs > mine and theirs == backend.get_lock("k").expires_at
