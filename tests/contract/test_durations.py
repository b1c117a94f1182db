"""ttl and timeout as ``datetime.timedelta`` everywhere, and the warning for a ttl under one
second given as an int (``ttl=30`` is 30 ms, not 30 s)."""

from __future__ import annotations

import asyncio
import warnings
from datetime import datetime, timedelta, timezone

import pytest

from django_locks import locks
from django_locks.decorators import lock_view, locked
from django_locks.exceptions import ShortTTLWarning
from django_locks.values import MAX_MILLISECONDS, validate_timeout, validate_ttl
from tests import proof

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit


def remaining_ms(alias: str, key: str) -> float:
    info = locks[alias].get_lock(key)
    return (info.expires_at - datetime.now(timezone.utc)).total_seconds() * 1000


# ----------------------------------------------------------------------------- conversion


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (timedelta(seconds=30), 30_000),
        (timedelta(minutes=2, milliseconds=5), 120_005),
        (timedelta(milliseconds=1), 1),
        (timedelta(microseconds=1500), 2),  # rounded up: at least as long as asked
        (timedelta(microseconds=1001), 2),
        (timedelta(days=365), 365 * 24 * 3600 * 1000),
        (30, 30),
    ],
)
def test_ttl_in_milliseconds(value, ms):
    assert validate_ttl(value) == ms


def test_timeout_zero_timedelta_is_one_attempt():
    assert validate_timeout(timedelta(0)) == 0
    assert validate_timeout(timedelta(seconds=5)) == 5000


BAD_DURATIONS = [
    (timedelta(microseconds=999), ValueError, "ttl must be at least 1 millisecond"),
    (timedelta(microseconds=1), ValueError, "ttl must be at least 1 millisecond"),
    (timedelta(seconds=-1), ValueError, "ttl must not be a negative timedelta"),
    (timedelta(0), ValueError, "ttl must be > 0"),
    (timedelta(days=3651), ValueError, "ttl must be at most"),
    (1.5, TypeError, "ttl must be an int number of milliseconds or a datetime.timedelta, not float"),
    (True, TypeError, "ttl must be an int number of milliseconds or a datetime.timedelta, not bool"),
    ("30s", TypeError, "ttl must be an int"),
]


@pytest.mark.parametrize(("value", "error", "message"), BAD_DURATIONS)
def test_bad_durations_name_the_argument(alias, value, error, message):
    backend = locks[alias]
    lease = backend.lock("leased", 60_000)
    before = backend.get_lock("leased")
    for call in (
        lambda: backend.try_acquire_lock(None, "k", value),
        lambda: backend.acquire_lock(None, "k", value, 0),
        lambda: backend.lock("k", value),
        lambda: lease.extend(value),
        lambda: backend.extend_lock(None, "leased", value, owner=lease.token),
        lambda: locked("k", ttl=value),
        lambda: lock_view("k", ttl=value),
    ):
        with pytest.raises(error, match=message):
            call()
        proof.record_bad_inputs("Python API")
    assert backend.get_lock("leased") == before
    assert backend.get_lock("k") is None


def test_timeout_errors_name_timeout(alias):
    backend = locks[alias]
    with pytest.raises(ValueError, match="timeout must not be a negative timedelta"):
        backend.lock("k", 1000, timeout=timedelta(seconds=-1))
    with pytest.raises(ValueError, match="timeout must be at least 1 millisecond"):
        backend.lock("k", 1000, timeout=timedelta(microseconds=10))
    with pytest.raises(TypeError, match="timeout must be an int number of milliseconds or a datetime"):
        locked("k", ttl=1000, timeout=0.5)
    assert backend.get_lock("k") is None


# ----------------------------------------------------------------------------- every entry point


def test_timedelta_on_every_entry_point(alias):
    backend = locks[alias]
    assert backend.try_acquire_lock("cid", "try", timedelta(seconds=30))
    assert 25_000 < remaining_ms(alias, "try") <= 30_000
    backend.acquire_lock("cid", "acquire", timedelta(minutes=1), timedelta(milliseconds=10))
    assert 55_000 < remaining_ms(alias, "acquire") <= 60_000

    with backend.lock("lease", timedelta(seconds=20), timeout=timedelta(0)) as lease:
        assert lease.ttl == 20_000
        lease.extend(timedelta(seconds=50))
        assert 45_000 < remaining_ms(alias, "lease") <= 50_000
        expires = backend.extend_lock(None, "lease", timedelta(seconds=40), owner=lease.token)
        assert expires == backend.get_lock("lease").expires_at
        assert 35_000 < remaining_ms(alias, "lease") <= 40_000

    expires = backend.extend_lock(None, "try", timedelta(minutes=5))
    assert 290_000 < remaining_ms(alias, "try") <= 300_000


def test_timedelta_async(alias):
    backend = locks[alias]

    async def scenario():
        assert await backend.atry_acquire_lock(None, "a", timedelta(seconds=30))
        await backend.aacquire_lock(None, "b", timedelta(seconds=30), timedelta(milliseconds=5))
        async with backend.alock("c", timedelta(seconds=30), timeout=timedelta(0)) as lease:
            await lease.aextend(timedelta(seconds=45))
            assert await backend.aextend_lock(None, "c", timedelta(seconds=44), owner=lease.token)
            return remaining_ms(alias, "c")

    assert 40_000 < asyncio.run(scenario()) <= 44_000


def test_decorators_take_timedeltas():
    @locked("job:{n}", ttl=timedelta(seconds=30), timeout=timedelta(0), backend="memory")
    def job(n):
        return locks["memory"].get_lock(f"job:{n}")

    info = job(1)
    assert info.expires_at_us - info.acquired_at_us == 30_000_000
    assert locks["memory"].get_lock("job:1") is None
    view = lock_view("v", ttl=timedelta(minutes=1), timeout=timedelta(milliseconds=100))(lambda r: r)
    assert callable(view)


def test_the_largest_timedelta():
    assert validate_ttl(timedelta(milliseconds=MAX_MILLISECONDS)) == MAX_MILLISECONDS


# ----------------------------------------------------------------------------- the warning


def test_locked_with_a_ttl_under_a_second_warns_at_declaration():
    with pytest.warns(ShortTTLWarning) as caught:
        @locked("refund:{order_id}", ttl=30, backend="memory")
        def refund(order_id):
            return order_id

    message = str(caught[0].message)
    assert "'refund:{order_id}'" in message and "'test_locked_with_a_ttl_under_a_second" in message
    assert "ttl 30 is 30 milliseconds" in message and "ttl=30_000" in message
    assert "timedelta(seconds=30)" in message
    assert caught[0].filename == __file__  # points at the declaration
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert refund(7) == 7  # calling does not warn again


def test_lock_view_with_a_ttl_under_a_second_warns_at_declaration():
    with pytest.warns(ShortTTLWarning, match=r"@lock_view\('refund:\{order_id\}'\) on view '.*refund'.*"
                                              r"ttl 30 is 30 milliseconds"):
        @lock_view("refund:{order_id}", ttl=30)
        def refund(request, order_id):
            return None


@pytest.mark.parametrize("ttl", [timedelta(milliseconds=30), timedelta(seconds=30), 1000, 30_000])
def test_no_warning_for_a_timedelta_or_a_second_and_more(ttl):
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @locked("k", ttl=ttl)
        def job():
            pass

        @lock_view("k", ttl=ttl)
        def view(request):
            pass


def test_the_warning_is_a_user_warning():
    assert issubclass(ShortTTLWarning, UserWarning)
