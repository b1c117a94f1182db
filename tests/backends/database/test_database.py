"""DatabaseLock specifics: transactions, the database clock, reconnects, purge."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connections, transaction

from django_locks import locks
from django_locks.backends.database import (
    PURGE_AFTER_US,
    close_thread_lock_connections,
    lock_connection,
)
from django_locks.exceptions import LockBackendError
from django_locks.models import Lock
from tests.helpers import DATABASE_ALIASES, in_thread, run_python, wait_until


@pytest.fixture
def using(db_alias) -> str:
    return DATABASE_ALIASES[db_alias]


def seen_from_another_connection(alias: str, key: str):
    return in_thread(lambda: locks[alias].get_lock(key))


def test_lock_inside_atomic_is_visible_at_once_and_survives_rollback(db_alias, using):
    backend = locks[db_alias]
    caller_writes = connections[using].vendor != "sqlite"  # see the SQLite test below
    with pytest.raises(RuntimeError):
        with transaction.atomic(using=using):
            if caller_writes:
                Group.objects.using(using).create(name="caller's own write")
            assert backend.try_acquire_lock("c", "job", 60_000)
            assert seen_from_another_connection(db_alias, "job") is not None
            raise RuntimeError("roll the caller's transaction back")
    assert not Group.objects.using(using).exists()
    assert seen_from_another_connection(db_alias, "job") is not None  # not rolled back

    with transaction.atomic(using=using):
        backend.release_lock("c", "job")
        assert seen_from_another_connection(db_alias, "job") is None  # released at once
        transaction.set_rollback(True, using=using)
    assert backend.get_lock("job") is None  # the release was not rolled back


def test_nested_atomics_and_commit(db_alias, using):
    backend = locks[db_alias]
    with transaction.atomic(using=using):
        with pytest.raises(RuntimeError):
            with transaction.atomic(using=using):  # a savepoint
                lease = backend.lock("job", 60_000)
                raise RuntimeError
        assert seen_from_another_connection(db_alias, "job").token == lease.token
    assert backend.get_lock("job").token == lease.token
    with transaction.atomic(using=using):
        with transaction.atomic(using=using):
            lease.release()
    assert backend.get_lock("job") is None


def test_sqlite_write_transaction_of_the_caller_gives_a_bounded_backend_error():
    """SQLite has one writer: while the caller holds a write transaction open on the same
    file, a lock write waits for the database's timeout, then fails (not a hang)."""
    backend = locks["default"]
    started = time.monotonic()
    with transaction.atomic(using="default"):
        Group.objects.create(name="holds the write lock")
        with pytest.raises(LockBackendError, match="locked"):
            backend.try_acquire_lock(None, "job", 60_000)
        transaction.set_rollback(True, using="default")
    assert time.monotonic() - started < 30
    assert backend.try_acquire_lock(None, "job", 60_000)  # fine once it committed


def test_times_come_from_the_database_clock(db_alias, using):
    backend = locks[db_alias]
    lease = backend.lock("job", 1234)
    row = Lock.objects.using(using).get(key="job")
    assert row.expires_at_us - row.acquired_at_us == 1234 * 1000
    assert lease.expires_at == row.expires_at and lease.acquired_at == row.acquired_at
    clock = {
        "postgresql": "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint",
        "mysql": "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6))",
        "sqlite": "SELECT CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
    }[connections[using].vendor]
    with connections[using].cursor() as cursor:
        cursor.execute(clock)
        now_us = cursor.fetchone()[0]
    assert 0 <= now_us - row.acquired_at_us < 60 * 1_000_000


def test_purge_deletes_old_rows_and_never_lowers_fencing(db_alias, using):
    backend = locks[db_alias]
    with backend.lock("old", 60_000) as lease:
        old_token = lease.fencing_token
    backend.acquire_lock(None, "live", 60_000, 0)
    assert backend.purge() == 0  # released just now: kept for a while
    shift = PURGE_AFTER_US + 10_000_000
    Lock.objects.using(using).filter(key="old").update(
        acquired_at_us=models_f("acquired_at_us") - shift,
        expires_at_us=models_f("expires_at_us") - shift,
    )
    assert backend.purge() == 1
    assert list(Lock.objects.using(using).values_list("key", flat=True)) == ["live"]
    with backend.lock("old", 60_000) as lease:
        assert lease.fencing_token > old_token


def models_f(name):
    from django.db.models import F

    return F(name)


def kill_lock_connection(db_alias: str, using: str) -> None:
    wrapper = lock_connection(using).wrapper
    assert wrapper.connection is not None
    with connections[using].cursor() as cursor:
        if wrapper.vendor == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(%s)", [wrapper.connection.info.backend_pid])
        else:
            cursor.execute(f"KILL {int(wrapper.connection.thread_id())}")


@pytest.mark.parametrize("db_alias", [a for a in DATABASE_ALIASES if a != "default"])
def test_killed_connection_gives_backend_error_then_reconnects(db_alias):
    using = DATABASE_ALIASES[db_alias]
    backend = locks[db_alias]
    lease = backend.lock("job", 60_000)
    kill_lock_connection(db_alias, using)
    with pytest.raises(LockBackendError):
        backend.get_lock("job")
    # The next call reconnects; the lock (a row) outlived the connection.
    assert backend.get_lock("job").token == lease.token
    lease.release()


@pytest.mark.parametrize(
    ("db_alias", "port_variable"), [("postgres", "POSTGRES_PORT"), ("mysql", "MYSQL_PORT")]
)
def test_unreachable_database_is_a_backend_error(db_alias, port_variable):
    if db_alias not in DATABASE_ALIASES:
        pytest.fail(f"{db_alias} is not configured (DJANGO_LOCKS_TEST_DATABASES)")
    from tests.helpers import free_port

    result = run_python(
        "import django; django.setup()\n"
        "from django_locks import locks\n"
        "from django_locks.exceptions import LockBackendError\n"
        "try:\n"
        f"    locks[{db_alias!r}].try_acquire_lock(None, 'job', 1000)\n"
        "except LockBackendError as e:\n"
        "    print('LockBackendError', e)\n",
        env={port_variable: str(free_port())},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("LockBackendError"), result.stdout


@pytest.mark.parametrize("durable", [None, True, False])
def test_durable_option_sets_the_commit_mode(db_alias, using, durable):
    """durable (the default) waits for the disk; durable: False does not, and only for each
    lock statement's own transaction: the connection is left with no session state."""
    from django.test import override_settings

    vendor = connections[using].vendor
    options = {"using": using} if durable is None else {"using": using, "durable": durable}
    with override_settings(LOCKS={"x": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                        "OPTIONS": options}}):
        close_thread_lock_connections()
        backend = locks["x"]
        assert backend.durable is (durable is not False)
        lease = backend.lock("job", 60_000)  # every write statement of the alias, once
        lease.extend()
        lease.release()
        assert backend.try_acquire_lock(None, "gone", 60_000)
        assert backend.force_release("gone")
        backend.purge()
        raw = lock_connection(using).wrapper.connection
        if vendor == "postgresql":
            # Never a session setting, in either mode (a pooler would hand it on).
            assert _query(raw, "SHOW synchronous_commit").fetchone()[0] == "on"
            ops = backend.operations
            writes = [ops.acquire.sql, ops.force_release.sql, ops.extend.sql, ops.purge.sql,
                      ops.clear_expired.sql, ops.settle.sql, ops.extend_holder.sql]
            local_off = "set_config('synchronous_commit', 'off', true)"
            assert all((local_off in statement) is (durable is False) for statement in writes)
            # A holder's release never waits for the disk: lost in a crash, the lock stays
            # held until its ttl; the next durable commit (the next acquisition) flushes it.
            assert all(local_off in statement for statement in (ops.release.sql, ops.release_holder.sql))
            # What a durable alias's release sees: off, for its transaction only.
            held = backend.lock("held", 60_000)
            _query(raw, "BEGIN")
            try:
                release = ops.release.bind(key="held", token=held.token)
                assert _query(raw, ops.release.sql, release).fetchall() == [("",)]
                assert _query(raw, "SHOW synchronous_commit").fetchone()[0] == "off"
            finally:
                _query(raw, "ROLLBACK")
            assert backend.get_lock("held").token == held.token  # rolled back: still held
            held.release()
            assert _query(raw, "SHOW synchronous_commit").fetchone()[0] == "on"
            if durable is False:  # what those statements see: off, for their transaction only
                probe = f"SELECT {ops.nosync}, current_setting('synchronous_commit')"
                assert _query(raw, probe).fetchone() == (0, "off")
                assert _query(raw, "SHOW synchronous_commit").fetchone()[0] == "on"
        elif vendor == "sqlite":
            level = _query(raw, "PRAGMA synchronous").fetchone()[0]
            assert level == (1 if durable is False else 2)  # NORMAL / FULL
        close_thread_lock_connections()

def test_aliases_of_one_database_keep_their_own_durability(db_alias, using):
    """Both aliases share this thread's private connection: neither's mode leaks into the
    other's statements."""
    from django.test import override_settings

    vendor = connections[using].vendor
    backend = "django_locks.backends.database.DatabaseLock"
    with override_settings(LOCKS={
        "fast": {"BACKEND": backend, "OPTIONS": {"using": using, "durable": False}},
        "safe": {"BACKEND": backend, "OPTIONS": {"using": using}},
    }):
        close_thread_lock_connections()
        for alias, expected in (("fast", 1), ("safe", 2), ("fast", 1)):
            with locks[alias].lock(f"job-{alias}", 60_000):
                raw = lock_connection(using).wrapper.connection
                if vendor == "sqlite":
                    assert _query(raw, "PRAGMA synchronous").fetchone()[0] == expected
                elif vendor == "postgresql":
                    assert _query(raw, "SHOW synchronous_commit").fetchone()[0] == "on"
        close_thread_lock_connections()


def test_culling_bounds_the_table_and_keeps_fencing(db_alias, using):
    """Unique keys taken and released (as lock_view("report:{pk}") lets clients do) do not
    grow the table without bound, and a culled key's fencing tokens still rise."""
    from django.test import override_settings

    from django_locks.models import Lock

    options = {"using": using, "cull_frequency": 100, "cull_grace": 0}
    with override_settings(LOCKS={"x": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                        "OPTIONS": options}}):
        backend = locks["x"]
        first = backend.lock("kept:fencing", 60_000)
        first.release()
        for n in range(1_000):
            with backend.lock(f"report:{n}", 60_000):
                pass
        rows = Lock.objects.using(using).count()
        assert rows <= 101, rows  # at most one cull period's worth (without culling: 1,001)
        assert not Lock.objects.using(using).filter(key="kept:fencing").exists()  # culled
        with backend.lock("kept:fencing", 60_000) as again:
            assert again.fencing_token > first.fencing_token  # the clock floor
        held = backend.lock("held:through:culls", 60_000)
        for n in range(200):
            assert backend.try_acquire_lock(None, f"more:{n}", 1)
        assert backend.get_lock("held:through:culls").token == held.token  # culling frees nothing held
        held.release()


@pytest.mark.parametrize("value", [-1, True, "100", 1.5, None])
def test_bad_cull_options(value):
    from django.test import override_settings

    from django_locks.exceptions import InvalidLockBackendError

    for name in ("cull_frequency", "cull_grace"):
        with override_settings(LOCKS={"x": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                            "OPTIONS": {name: value}}}):
            with pytest.raises(InvalidLockBackendError, match=name):
                locks["x"]


# ----------------------------------------------------------------------------- notifications


_WAITER_SETUP = """
import asyncio, django, json, sys, time
django.setup()
from django_locks import locks
from django_locks.backends import database
database.Listener.MAX_WAIT = 20.0        # a lost notification would cost 20 s here
database.DatabaseLock.poll_interval_min = database.DatabaseLock.poll_interval_max = 20.0
backend = locks["postgres"]
assert database.listener_for(backend.using).ready.wait(10)  # listening before it waits
"""
# Each tells the test when its first attempt failed and it waits ("blocked").
WAITER = _WAITER_SETUP + """
wait_for_release = database.DatabaseLock._wait_for_release
def announced(self, *args):
    print("blocked", flush=True)
    return wait_for_release(self, *args)
database.DatabaseLock._wait_for_release = announced
print("waiting", flush=True)
started = time.monotonic()
with backend.lock("notified", 60_000, timeout=60_000):
    print(json.dumps({"waited": time.monotonic() - started}), flush=True)
"""
ASYNC_WAITER = _WAITER_SETUP + """
await_release = database.DatabaseLock._await_release
async def announced(self, *args):
    print("blocked", flush=True)
    return await await_release(self, *args)
database.DatabaseLock._await_release = announced
async def main():
    print("waiting", flush=True)
    started = time.monotonic()
    lease = await backend.alock("notified", 60_000, timeout=60_000)
    print(json.dumps({"waited": time.monotonic() - started}), flush=True)
    await lease.arelease()
asyncio.run(main())
"""


def _postgres_only():
    if "postgres" not in DATABASE_ALIASES:
        pytest.fail("postgres is not configured (DJANGO_LOCKS_TEST_DATABASES)")


@pytest.mark.parametrize("script", [WAITER, ASYNC_WAITER], ids=["sync", "async"])
def test_a_release_wakes_a_waiter_in_another_process_by_notification(script):
    """The waiter's polling and lost-notification bound are 20 s: only the release's
    NOTIFY can wake it within a few seconds (an async waiter too, holding no thread)."""
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT, subprocess_env

    _postgres_only()
    holder = locks["postgres"].lock("notified", 60_000)
    waiter = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        assert waiter.stdout.readline().strip() == "blocked"  # its first attempt failed
        released_at = time.monotonic()
        holder.release()
        waited = json.loads(waiter.stdout.readline())["waited"]
        woken_after = time.monotonic() - released_at
        assert woken_after < 5, woken_after  # far below the 20 s it would poll
        assert waiter.wait(30) == 0 and waited > 0
    finally:
        waiter.kill()


def test_a_cancelled_async_waiter_leaves_no_registration_behind():
    """An async PostgreSQL waiter waits on a future the listening thread resolves; cancelled
    there, it leaves neither its future nor its key's registration, and holds nothing."""
    import asyncio

    from django_locks.backends import database

    _postgres_only()
    backend = locks["postgres"]
    holder = backend.lock("cancelled", 60_000)
    listener = database.listener_for(connections["postgres"].alias)
    assert listener.ready.wait(10)

    async def scenario() -> None:
        waiter = asyncio.ensure_future(backend.alock("cancelled", 60_000, timeout=30_000))
        deadline = time.monotonic() + 10
        while "cancelled" not in listener._futures:  # waiting on the listener's wake-up
            assert not waiter.done() and time.monotonic() < deadline
            await asyncio.sleep(0.005)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert waiter.cancelled()

    asyncio.run(scenario())
    assert "cancelled" not in listener._futures and listener.generation("cancelled") == 0
    assert [info.token for info in backend.get_holders("cancelled")] == [holder.token]
    holder.release()


def test_a_lost_notification_costs_one_bounded_wait():
    """The listening connection is killed: the waiter still gets the lock (by the bounded
    wait, then the reconnected listener), well within its timeout."""
    import threading

    from django_locks.backends import database

    _postgres_only()
    holder = locks["postgres"].lock("lost", 60_000)
    got = threading.Event()

    def wait() -> None:
        with locks["postgres"].lock("lost", 60_000, timeout=30_000):
            got.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    listener = database.listener_for(connections["postgres"].alias)
    wait_until(lambda: listener.ready.is_set() and listener.backend_pid is not None)
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [listener.backend_pid])
    holder.release()
    assert got.wait(10)
    waiter.join(10)
    wait_until(lambda: listener.ready.is_set())  # it reconnected


def test_the_run_uses_the_drivers_it_names():
    """CI runs the database tests under each supported driver (tests/settings.py)."""
    from django_locks.backends.database import lock_connection

    modules = {"mysqlclient": "MySQLdb", "pymysql": "pymysql", "psycopg": "psycopg",
               "psycopg2": "psycopg2"}
    for using, driver in (("mysql", settings.MYSQL_DRIVER), ("postgres", settings.POSTGRES_DRIVER)):
        if using in DATABASE_ALIASES.values():
            assert lock_connection(using).wrapper.Database.__name__ == modules[driver]
            assert locks[using].try_acquire_lock(None, "driver", 1_000)


@pytest.mark.parametrize("db_alias", [a for a in DATABASE_ALIASES if a != "default"])
def test_the_driver_decides_whether_async_calls_hold_a_thread(db_alias):
    """Async calls await their statements in the event loop where the driver can (psycopg
    3), else run them in worker threads (psycopg2, mysqlclient, PyMySQL)."""
    import asyncio

    from tests.backends.cache.test_redis_async import _uncontended_calls, counting_threads

    backend = locks[db_alias]
    native = backend.vendor == "postgresql" and settings.POSTGRES_DRIVER == "psycopg"
    assert backend.native_async is native

    async def scenario() -> dict[str, int]:
        await _uncontended_calls(backend, pairs=1)  # connections and the listener, once
        with counting_threads(asyncio.get_running_loop()) as counts:
            await _uncontended_calls(backend, pairs=5)
        return counts

    counts = asyncio.run(scenario())
    if native:
        assert counts == {"threads": 0, "executor": 0}
    else:
        assert counts["executor"] > 0
    assert backend.get_holders("job") == []


def _query(raw, sql, params=()):
    """A statement on a raw connection of any driver (psycopg 3 has connection.execute)."""
    cursor = raw.cursor()
    cursor.execute(sql, params)
    return cursor
