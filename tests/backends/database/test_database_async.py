"""DatabaseLock on PostgreSQL through psycopg 3, async callers: attempts, releases and
extends awaited in the event loop on async private connections, no worker thread
(docs/internals/database.md, "Async callers"); what a cancellation mid-statement leaves
(nothing); forks and concurrency. Under psycopg2 the statements run in worker threads
(tests/backends/database/test_database.py::test_the_postgres_driver_decides_async_calls)."""

from __future__ import annotations

import asyncio
import time

import pytest

from django_locks import locks
from django_locks.backends.database import connection as lock_connections
from django_locks.backends.database.connection import AsyncConnections
from django_locks.exceptions import LockBackendError
from tests import settings as test_settings
from tests.backends.cache.test_redis_async import _uncontended_calls, counting_threads
from tests.helpers import DATABASE_ALIASES, free_port, run_python, settled_tokens

pytestmark = pytest.mark.skipif(
    "postgres" not in DATABASE_ALIASES or test_settings.POSTGRES_DRIVER != "psycopg",
    reason="PostgreSQL through psycopg 3 (the psycopg2 run checks its worker threads)",
)

ALIAS = "postgres"


def _conninfo() -> dict:
    from django.db import connections

    params = connections["postgres"].get_connection_params()
    return {k: params[k] for k in ("host", "port", "user", "dbname") if k in params}


async def _other_connection():
    """A connection of the test's own (not the library's), to block rows and watch."""
    import psycopg

    return await psycopg.AsyncConnection.connect(**_conninfo(), autocommit=True)


async def _blocked(watcher, seconds: float = 10.0) -> None:
    """Wait (bounded) until a statement of another session waits for a row lock."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        cursor = await watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() AND datname = current_database()")
        if (await cursor.fetchone())[0]:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no statement came to wait for the row lock")


async def _holding_the_row(key: str):
    """Another session's transaction that holds ``key``'s row lock, having expired its
    holder (once it commits, the key is free)."""
    await locks.create_connection(ALIAS).alock(key, 60_000)  # the row, held
    blocker = await _other_connection()
    await blocker.execute("BEGIN")
    cursor = await blocker.execute(
        'UPDATE django_locks_lock SET expires_at_us = 0 WHERE "key" = %s', (key,))
    assert cursor.rowcount == 1
    return blocker


def test_async_calls_on_postgresql_start_no_thread():
    """50 uncontended ``async with alock`` pairs with an extend each, and the other async
    calls (a shared holder too), hand nothing to a worker thread once the loop has its
    connection and the process its listener."""
    backend = locks[ALIAS]
    assert backend.native_async

    async def scenario() -> dict[str, int]:
        await _uncontended_calls(backend, pairs=1)  # the loop's connection, the listener
        with counting_threads(asyncio.get_running_loop()) as counts:
            await _uncontended_calls(backend)
        return counts

    assert asyncio.run(scenario()) == {"threads": 0, "executor": 0}
    assert backend.get_holders("job") == []
    assert len(backend._held_tokens) == 0


def test_tasks_of_one_loop_exclude_each_other_on_their_own_connections():
    """Tasks contending for one key in one event loop: one holder at a time, every task
    served, each statement on a connection no other task uses meanwhile."""
    backend = locks[ALIAS]
    inside: list[int] = []
    most = [0]
    done: list[int] = []

    async def worker(n: int) -> None:
        for _ in range(5):
            async with backend.alock("tasks", 10_000, timeout=20_000):
                inside.append(n)
                most[0] = max(most[0], len(inside))
                await asyncio.sleep(0.001)
                inside.remove(n)
        done.append(n)

    async def scenario() -> None:
        await asyncio.gather(*(worker(n) for n in range(6)))

    asyncio.run(scenario())
    assert most[0] == 1, "two tasks held the key at once"
    assert sorted(done) == list(range(6))
    assert backend.get_holders("tasks") == []


def test_a_call_cancelled_mid_attempt_undoes_it_by_its_token(monkeypatch):
    """Cancelled while its attempt waits in the database (another session holds the key
    row), the attempt is cancelled there and the call releases whatever it may have won,
    by its token, before the cancellation goes on (once the row is free): nothing is left
    held, nothing to the settler, and the idle connections are clean."""
    backend = locks[ALIAS]
    handed = settled_tokens(monkeypatch)

    async def scenario() -> None:
        blocker = await _holding_the_row("cancelled")
        try:
            call = asyncio.ensure_future(backend.aacquire_lock(None, "cancelled", 60_000, 0))
            await _blocked(blocker)
            call.cancel()
            await asyncio.sleep(0.05)
            assert not call.done(), "the cancelled call did not settle its attempt"
            await blocker.execute("COMMIT")
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await blocker.close()
        idle = lock_connections.async_connections("postgres").idle
        assert idle and all(backend.features.async_reusable(c.raw) for c in idle)

    asyncio.run(scenario())
    assert backend.get_holders("cancelled") == []
    assert handed == []
    assert len(backend._held_tokens) == 0


def test_a_waiter_cancelled_twice_mid_attempt_is_settled_and_drops_its_connection(monkeypatch):
    """Cancelled again while its undo waits, the outcome is unknown: the token goes to the
    settler, and the connections whose statements were interrupted never serve again."""
    backend = locks[ALIAS]
    handed = settled_tokens(monkeypatch)

    async def scenario() -> None:
        blocker = await _holding_the_row("twice")
        try:
            call = asyncio.ensure_future(backend.aacquire_lock(None, "twice", 60_000, 0))
            await _blocked(blocker)
            call.cancel()
            await asyncio.sleep(0.02)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await blocker.execute("COMMIT")
            await blocker.close()
        idle = lock_connections.async_connections("postgres").idle
        assert all(backend.features.async_reusable(c.raw) for c in idle)

    asyncio.run(scenario())
    assert len(handed) == 1
    deadline = time.monotonic() + 10
    while backend.get_holders("twice") and time.monotonic() < deadline:
        time.sleep(0.01)  # the settler releases the uncertain token (if it won)
    assert backend.get_holders("twice") == []


def test_a_release_cancelled_mid_statement_still_releases():
    """Cancelled while its statement waits for the key row, a release is cancelled in the
    database and sent again by its token: the lock ends released all the same."""
    backend = locks[ALIAS]

    async def scenario() -> None:
        lease = await backend.alock("release-cancelled", 60_000)
        blocker = await _other_connection()
        try:
            await blocker.execute("BEGIN")
            await blocker.execute('SELECT 1 FROM django_locks_lock WHERE "key" = %s FOR UPDATE',
                                  ("release-cancelled",))
            call = asyncio.ensure_future(lease.arelease())
            await _blocked(blocker)
            call.cancel()
            await asyncio.sleep(0.05)
            assert not call.done()
            await blocker.execute("COMMIT")
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            await blocker.close()

    asyncio.run(scenario())
    assert backend.get_holders("release-cancelled") == []


def test_async_calls_on_an_unreachable_server_are_backend_errors():
    """A server that does not answer is a LockBackendError from every async call, never
    "not acquired"."""
    result = run_python(
        "import asyncio, django; django.setup()\n"
        "from django_locks import locks\n"
        "from django_locks.exceptions import LockBackendError\n"
        "backend = locks['postgres']\n"
        "async def main():\n"
        "    for call in (backend.atry_acquire_lock(None, 'job', 1000),\n"
        "                 backend.aacquire_lock(None, 'job', 1000, 0)):\n"
        "        try:\n"
        "            await call\n"
        "        except LockBackendError as e:\n"
        "            print('LockBackendError', backend.native_async, e)\n"
        "asyncio.run(main())\n",
        env={"POSTGRES_PORT": str(free_port())},
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("LockBackendError")]
    assert len(errors) == 2 and all(line.startswith("LockBackendError True") for line in errors), (
        result.stdout)


def test_a_forked_child_leaves_the_parents_async_connections_alone():
    """A process with async connections idle in a running event loop forks children that
    take locks of their own and end through interpreter shutdown (sys.exit): the parent's
    connections, never touched by them, serve its next calls."""
    code = (
        "import asyncio, os, sys, django; django.setup()\n"
        "from django_locks import locks\n"
        "backend = locks['postgres']\n"
        "async def main():\n"
        "    lease = await backend.alock('forked:async-parent', 60_000)\n"
        "    for _ in range(3):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            async def child():\n"
        "                async with backend.alock('forked:async-child', 5_000, timeout=10_000):\n"
        "                    pass\n"
        "            asyncio.run(child())\n"
        "            sys.exit(0)\n"
        "        _, status = os.waitpid(pid, 0)\n"
        "        assert status == 0, status\n"
        "    await lease.aextend(60_000)\n"
        "    await lease.arelease()\n"
        "    print('released')\n"
        "asyncio.run(main())\n"
    )
    result = run_python(code, timeout=120)
    assert result.returncode == 0 and "released" in result.stdout, result.stderr[-3000:]
    backend = locks[ALIAS]
    assert backend.get_holders("forked:async-parent") == []
    assert backend.get_holders("forked:async-child") == []


def test_a_closed_loops_connections_are_closed():
    """``asyncio.run`` ends its loop: the connections it left idle are closed (on the next
    connection made, or when the loop is collected), not leaked."""
    backend = locks[ALIAS]

    async def one_call() -> list:
        await backend.atry_acquire_lock(None, "loops", 1_000)
        await backend.arelease_lock(None, "loops")
        return list(lock_connections.async_connections("postgres").idle)

    first = asyncio.run(one_call())
    asyncio.run(one_call())
    assert first and all(connection.raw.closed for connection in first)


@pytest.mark.parametrize("call", ["atry_acquire_lock", "aextend_lock", "arelease_lock"])
def test_bad_input_is_refused_before_any_statement(call):
    backend = locks[ALIAS]

    async def scenario() -> None:
        with pytest.raises((ValueError, TypeError), match=r"key|ttl"):
            if call == "atry_acquire_lock":
                await backend.atry_acquire_lock(None, "", 1_000)
            elif call == "aextend_lock":
                await backend.aextend_lock(None, "job", -5)
            else:
                await backend.arelease_lock(None, 42)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_a_backend_error_mid_call_drops_only_that_connection():
    """A statement that fails (the lock table's session killed) is a LockBackendError;
    the next call opens a connection and works."""
    backend = locks[ALIAS]

    async def scenario() -> None:
        await backend.atry_acquire_lock(None, "killed", 60_000)
        idle = lock_connections.async_connections("postgres").idle
        killer = await _other_connection()
        try:
            for connection in idle:
                await killer.execute("SELECT pg_terminate_backend(%s)",
                                     (connection.raw.info.backend_pid,))
        finally:
            await killer.close()
        with pytest.raises(LockBackendError):
            await backend.aextend_lock(None, "killed", 60_000)
        await backend.aextend_lock(None, "killed", 60_000)
        await backend.arelease_lock(None, "killed")

    asyncio.run(scenario())
    assert backend.get_holders("killed") == []


def test_tasks_of_one_loop_share_at_most_a_few_connections():
    """More tasks at once than ASYNC_CONNECTIONS: the rest wait for a connection given
    back (first come, first served) instead of opening one each, and all are served."""
    backend = locks[ALIAS]
    most = [0]

    async def one(n: int) -> None:
        async with backend.alock(f"many:{n}", 10_000, timeout=10_000):
            pool = lock_connections.async_connections("postgres")
            most[0] = max(most[0], pool.open)
            await asyncio.sleep(0.01)

    async def scenario() -> AsyncConnections:
        await asyncio.gather(*(one(n) for n in range(40)))
        return lock_connections.async_connections("postgres")

    pool = asyncio.run(scenario())
    assert 1 < most[0] <= lock_connections.ASYNC_CONNECTIONS
    assert pool.open == len(pool.idle) <= lock_connections.ASYNC_CONNECTIONS
    assert not pool.waiters
    assert all(backend.get_holders(f"many:{n}") == [] for n in range(40))


def test_threads_each_with_event_loops_of_their_own():
    """Threads each running event loops one after another (asyncio.run): every call
    answers, and the connections of the loops that ended are closed."""
    import threading

    backend = locks[ALIAS]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                async def calls(key: str) -> None:
                    assert await backend.atry_acquire_lock(None, key, 10_000)
                    await backend.arelease_lock(None, key)

                asyncio.run(calls(f"threads:{n}:{i}"))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)

    async def last() -> None:  # a new connection closes those of the loops that ended
        await backend.atry_acquire_lock(None, "threads:last", 1_000)
        await backend.arelease_lock(None, "threads:last")

    asyncio.run(last())
    with lock_connections._async_pools_mutex:
        ended = [pool for loop, pools in lock_connections._async_pools.items()
                 if loop.is_closed() for pool in pools.values()]
    assert all(pool.idle == [] for pool in ended)


def test_a_loop_psycopg_cannot_run_in_falls_back_to_a_worker_thread(monkeypatch):
    """An event loop without add_reader (Windows' ProactorEventLoop, simulated here by a
    selector loop that refuses add_reader: this machine has no Proactor loop) runs each
    operation in a worker thread, as before, instead of failing."""
    from django_locks.backends.database import postgresql

    class NoReaderLoop(asyncio.SelectorEventLoop):
        def add_reader(self, *args, **kwargs):
            raise NotImplementedError

        def add_writer(self, *args, **kwargs):
            raise NotImplementedError

    monkeypatch.setattr(postgresql, "LOOPS_WITHOUT_READERS", (NoReaderLoop,))
    backend = locks[ALIAS]

    async def scenario() -> tuple[bool, dict[str, int]]:
        native = backend.native_async
        with counting_threads(asyncio.get_running_loop()) as counts:
            await _uncontended_calls(backend, pairs=3)
        return native, counts

    loop = NoReaderLoop()
    try:
        native, counts = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert native is False and backend.native_async is True  # in that loop / outside one
    assert counts["executor"] > 0
    assert backend.get_holders("job") == []


def test_a_failing_setup_of_a_new_connection_leaves_no_session():
    """A new async connection whose setup fails (a role that does not exist) is closed at
    once: a LockBackendError each time, and no session left open."""
    import django

    if django.VERSION < (5, 2):
        pytest.skip("assume_role is an OPTION of Django 5.2+")
    result = run_python(
        "import asyncio, django\n"
        "from django.conf import settings\n"
        "settings.DATABASES['bad'] = {**settings.DATABASES['postgres'],\n"
        "                             'OPTIONS': {'assume_role': 'no_such_role_x'}}\n"
        "settings.LOCKS['bad'] = {'BACKEND': 'django_locks.backends.database.DatabaseLock',\n"
        "                         'OPTIONS': {'using': 'bad'}}\n"
        "django.setup()\n"
        "from django.db import connections\n"
        "from django_locks import locks\n"
        "from django_locks.exceptions import LockBackendError\n"
        "def sessions():\n"
        "    with connections['postgres'].cursor() as c:\n"
        "        c.execute('SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()')\n"
        "        return c.fetchone()[0]\n"
        "before = sessions()\n"
        "async def main():\n"
        "    failed = 0\n"
        "    for _ in range(3):\n"
        "        try:\n"
        "            await locks['bad'].atry_acquire_lock(None, 'k', 1000)\n"
        "        except LockBackendError:\n"
        "            failed += 1\n"
        "    return failed\n"
        "print(asyncio.run(main()), sessions() - before)\n",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["3", "0"], result.stdout
