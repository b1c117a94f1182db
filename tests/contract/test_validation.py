"""Bad input: a clear error naming the argument, and no change to any lock state."""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import InvalidLockBackendError
from tests import proof

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit

BAD_KEYS = [
    ("", ValueError, "key must not be empty"),
    ("a" * 256, ValueError, "at most 255"),
    ("nul\x00", ValueError, "control characters"),
    ("line\nbreak", ValueError, "control characters"),
    ("tab\t", ValueError, "control characters"),
    ("del\x7f", ValueError, "control characters"),
    ("\ud800", ValueError, "key must be encodable as UTF-8"),
    ("ok\udcffok", ValueError, "key must be encodable as UTF-8"),
    (None, TypeError, "key must be a str"),
    (b"bytes", TypeError, "key must be a str"),
    (42, TypeError, "key must be a str"),
]
BAD_TTLS = [
    (0, ValueError, "ttl must be > 0"),
    (-1, ValueError, "ttl must be > 0"),
    (1.5, TypeError, "ttl must be an int"),
    (True, TypeError, "ttl must be an int"),
    ("100", TypeError, "ttl must be an int"),
    (None, TypeError, "ttl must be an int"),
    (10**18, ValueError, "ttl must be at most"),
]
BAD_TIMEOUTS = [
    (-1, ValueError, "timeout must be >= 0"),
    (0.5, TypeError, "timeout must be an int"),
    (False, TypeError, "timeout must be an int"),
    (10**18, ValueError, "timeout must be at most"),
    (None, TypeError, "timeout must be an int"),  # not "wait forever", not "one attempt"
]
BAD_CORRELATION_IDS = [
    (42, TypeError, "correlation_id must be a str"),
    ("x" * 256, ValueError, "correlation_id must be at most"),
    ("a\nb", ValueError, "correlation_id must not contain"),
    ("\udc80", ValueError, "correlation_id must be encodable as UTF-8"),
]

BAD_MODES = [
    ({"limit": 0}, ValueError, "limit must be between 1 and"),
    ({"limit": -3}, ValueError, "limit must be between 1 and"),
    ({"limit": 10_001}, ValueError, "limit must be between 1 and"),
    ({"limit": True}, TypeError, "limit must be an int, not bool"),
    ({"limit": "3"}, TypeError, "limit must be an int, not str"),
    ({"limit": 2.0}, TypeError, "limit must be an int, not float"),
    ({"limit": None}, TypeError, "limit must be an int"),
    ({"shared": 1}, TypeError, "shared must be True or False"),
    ({"shared": "yes"}, TypeError, "shared must be True or False"),
    ({"shared": None}, TypeError, "shared must be True or False"),
    ({"shared": True, "limit": 2}, ValueError, "shared=True takes no limit"),
]

def calls_with_key(backend, key):
    return [
        lambda: backend.try_acquire_lock(None, key, 1000),
        lambda: backend.acquire_lock(None, key, 1000, 0),
        lambda: backend.release_lock(None, key),
        lambda: backend.lock(key, 1000),
        lambda: backend.force_release(key),
        lambda: backend.get_lock(key),
    ]


def state(backend):
    if backend.supports_enumeration:
        return backend.held_locks()
    return backend.get_lock("held")


@pytest.fixture
def held(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock("holder", "held", 60_000)
    return backend


@pytest.mark.parametrize(("key", "error", "message"), BAD_KEYS)
def test_bad_keys(held, key, error, message):
    before = state(held)
    for call in calls_with_key(held, key):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert state(held) == before


@pytest.mark.parametrize(("ttl", "error", "message"), BAD_TTLS)
def test_bad_ttls(held, ttl, error, message):
    lease = held.lock("leased", 60_000)
    before = state(held), held.get_lock("leased")
    for call in (
        lambda: held.try_acquire_lock(None, "other", ttl),
        lambda: held.acquire_lock(None, "other", ttl, 0),
        lambda: held.lock("other", ttl),
        *([lambda: lease.extend(ttl)] if ttl is not None else []),  # None: the original ttl
    ):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert (state(held), held.get_lock("leased")) == before
    assert held.get_lock("other") is None


@pytest.mark.parametrize(("timeout", "error", "message"), BAD_TIMEOUTS)
def test_bad_timeouts(held, timeout, error, message):
    before = state(held)
    for call in (
        lambda: held.acquire_lock(None, "other", 1000, timeout),
        lambda: held.lock("other", 1000, timeout=timeout),
    ):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert state(held) == before
    assert held.get_lock("other") is None


@pytest.mark.parametrize(("mode", "error", "message"), BAD_MODES)
def test_bad_modes(held, mode, error, message):
    """shared= and limit= are checked before anything is touched, sync and async."""
    before = state(held), held.get_holders("held")
    for call in (
        lambda: held.lock("other", 1000, **mode),
        lambda: held.lock("held", 1000, timeout=100, **mode),
        lambda: asyncio.run(_alock(held, "other", mode)),
    ):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert (state(held), held.get_holders("held")) == before
    assert held.get_holders("other") == []


async def _alock(backend, key, mode):
    async with backend.alock(key, 1000, **mode):
        pass


@pytest.mark.parametrize(("correlation_id", "error", "message"), BAD_CORRELATION_IDS)
def test_bad_correlation_ids(held, correlation_id, error, message):
    before = state(held)
    for call in (
        lambda: held.try_acquire_lock(correlation_id, "other", 1000),
        lambda: held.acquire_lock(correlation_id, "other", 1000, 0),
        lambda: held.release_lock(correlation_id, "held"),
        lambda: held.lock("other", 1000, correlation_id=correlation_id),
    ):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert state(held) == before


BAD_OWNERS = [("", ValueError), (123, TypeError), ("x" * 65, ValueError), ("f" * 33, ValueError),
              ("t", ValueError), ("A" * 32, ValueError)]


@pytest.mark.parametrize(("owner", "error"), BAD_OWNERS)
def test_bad_owner(held, owner, error):
    before = state(held)
    with pytest.raises(error, match="owner"):
        held.release_lock(None, "held", owner=owner)
    proof.record_bad_inputs("Python API")
    assert state(held) == before


def test_boundary_key_lengths(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock(None, "k" * 255, 60_000)
    assert backend.get_lock("k" * 255).key == "k" * 255


# ----------------------------------------------------------------------------- configuration


def test_unknown_alias():
    with pytest.raises(InvalidLockBackendError, match="'nope' doesn't exist"):
        locks["nope"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"BACKEND": "django_locks.backends.nope.Lock"}, "could not import BACKEND"),
        ({"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, "not a django_locks backend"),
        ({}, "needs a BACKEND"),
        ({"BACKEND": "django_locks.backends.memory.MemoryLock", "LOCATION": "x"}, "unknown setting"),
        ({"BACKEND": "django_locks.backends.memory.MemoryLock", "OPTIONS": {"x": 1}}, "unknown option"),
        ({"BACKEND": "django_locks.backends.memory.MemoryLock", "OPTIONS": []}, "must be a dict"),
        ({"BACKEND": "django_locks.backends.database.DatabaseLock", "OPTIONS": {"using": "nodb"}},
         "'nodb', not in DATABASES"),
        ({"BACKEND": "django_locks.backends.database.DatabaseLock", "OPTIONS": {"using": 1}},
         "must be a database alias"),
        ({"BACKEND": "django_locks.backends.database.DatabaseLock", "OPTIONS": {"durable": "yes"}},
         "'durable' must be True or False"),
        ({"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "nocache"}},
         "'nocache', not in CACHES"),
        ({"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "dummy"}},
         "DummyCache"),
        ("django_locks.backends.memory.MemoryLock", "must be a dict"),
    ],
)
def test_bad_configuration_names_alias_and_problem(config, message):
    proof.record_bad_inputs("LOCKS setting")
    with override_settings(LOCKS={"broken": config}):
        with pytest.raises(InvalidLockBackendError, match=message) as caught:
            locks["broken"]
        assert "broken" in str(caught.value)


def test_no_locks_setting_means_database_lock_on_default():
    from django.conf import settings

    from django_locks.backends.database import DatabaseLock

    with override_settings():
        del settings.LOCKS
        backend = locks["default"]
        assert isinstance(backend, DatabaseLock) and backend.using == "default"
        assert list(locks) == ["default"]
        assert backend.try_acquire_lock(None, "k", 1000)
