"""DatabaseLock behind PgBouncer (the suite's own, in front of the PostgreSQL test database).

Transaction pooling: the pool has one server connection, so every client (the lock
connections, Django's, a plain psql-like client) runs on the same PostgreSQL session,
and any session state one of them left behind would show to the next. Session pooling:
a pool of four, to see what each thread's private lock connection costs and what a full
pool looks like.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_locks import locks
from django_locks.backends.database import close_thread_lock_connections, lock_connection
from django_locks.exceptions import LockBackendError, LockTimeoutError
from tests.helpers import wait_until
from tests.topology import contend

pytestmark = pytest.mark.skipif("postgres" not in settings.DATABASES,
                                reason="PgBouncer stands in front of the PostgreSQL test database")


def plain_client(alias: str) -> psycopg.Connection:
    """Another client of the pool (like psql): not Django, not django_locks."""
    params = connections[alias].settings_dict
    return psycopg.connect(host=params["HOST"], port=int(params["PORT"]), user=params["USER"],
                           dbname=params["NAME"], autocommit=True, prepare_threshold=None)


def session_view(alias: str) -> tuple[int, dict[str, str], list[str]]:
    """What a fresh client sees of its server session: backend pid, every setting,
    prepared statements."""
    with plain_client(alias) as client:
        pid = client.execute("SELECT pg_backend_pid()").fetchone()[0]
        values = dict(client.execute("SELECT name, setting FROM pg_settings").fetchall())
        prepared = [row[0] for row in client.execute("SELECT name FROM pg_prepared_statements")]
    return pid, values, prepared


def lock_traffic(alias: str) -> None:
    """Every kind of lock statement, a wait loop included."""
    backend = locks[alias]
    lease = backend.lock("job", 60_000, correlation_id="traffic")
    lease.extend()
    assert backend.get_lock("job").token == lease.token
    assert [info.key for info in backend.held_locks()] == ["job"]
    with pytest.raises(LockTimeoutError):  # polls the busy key for a while
        locks[alias].acquire_lock(None, "job", 60_000, 200)
    lease.release()
    # Shared locks and semaphores: multi-statement transactions, the writer mark.
    readers = [backend.lock("shared", 60_000, shared=True) for _ in range(2)]
    semaphore = backend.lock("semaphore", 60_000, limit=2)
    with pytest.raises(LockTimeoutError):  # an exclusive waiter behind readers (marks)
        locks[alias].acquire_lock(None, "shared", 60_000, 300)
    assert len(backend.get_holders("shared")) == 2
    readers[0].extend()
    readers[0].release()
    assert backend.force_release("shared")
    semaphore.release()
    assert backend.try_acquire_lock(None, "other", 60_000)
    assert backend.force_release("other")
    backend.try_acquire_lock(None, "short", 1)
    time.sleep(0.01)
    assert [info.key for info in backend.expired_locks()] == ["short"]
    assert backend.purge() >= 1


def test_no_session_state_leaks_through_transaction_pooling(pgbouncer_transaction):
    alias = "pgbouncer_transaction"
    pid, before, prepared = session_view(alias)
    assert before["synchronous_commit"] == "on" and prepared == []

    # The check can fail: a client that SETs something hands it to the next one.
    with plain_client(alias) as careless:
        careless.execute("SET synchronous_commit = off")
    leaked_pid, leaked, _ = session_view(alias)
    assert (leaked_pid, leaked["synchronous_commit"]) == (pid, "off")
    with plain_client(alias) as careless:
        careless.execute("RESET ALL")
    assert session_view(alias)[1] == before

    database_lock = "django_locks.backends.database.DatabaseLock"
    with override_settings(LOCKS={
        "durable": {"BACKEND": database_lock, "OPTIONS": {"using": alias}},
        "fast": {"BACKEND": database_lock, "OPTIONS": {"using": alias, "durable": False}},
        # The alias asks psycopg for prepared statements (prepare_threshold 0, server-side binding).
        "prepared": {"BACKEND": database_lock, "OPTIONS": {"using": "pgbouncer_prepared", "durable": False}},
    }):
        for lock_alias in ("durable", "fast", "prepared"):
            lock_traffic(lock_alias)
        cursor = lock_connection(alias).cursor()
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] == pid  # the lock connection ran on that same session
        close_thread_lock_connections()

    after_pid, after, prepared = session_view(alias)
    assert after_pid == pid
    assert after["synchronous_commit"] == "on"
    changed = {name: value for name, value in after.items() if before.get(name) != value}
    # The first call of a PL/pgSQL function (migration 0005's) loads the language into the
    # server process, which shows its own settings from then on, at their defaults: no
    # client's setting, the same after any client's first call of such a function.
    assert {name: changed.pop(name) for name in list(changed) if name.startswith("plpgsql.")
            and name not in before} in ({}, PLPGSQL_DEFAULTS)
    assert changed == {}
    assert prepared == []


#: The settings of the PL/pgSQL language, as loading it shows them (PostgreSQL's defaults).
PLPGSQL_DEFAULTS = {"plpgsql.check_asserts": "on", "plpgsql.extra_errors": "none",
                    "plpgsql.extra_warnings": "none", "plpgsql.print_strict_params": "off",
                    "plpgsql.variable_conflict": "error"}


def test_processes_contend_through_transaction_pooling_with_prepared_statements_asked(
    pgbouncer_transaction, tmp_path
):
    """6 processes share one server connection; the alias's OPTIONS ask for server-side
    prepared statements, which the lock connection refuses: no statement fails."""
    contend("pgbouncer_prepared", tmp_path, processes=6, iterations=20)


def test_session_pooling_takes_a_server_connection_per_thread_and_shows_a_full_pool(
    pgbouncer_session,
):
    alias = "pgbouncer_session"
    database = connections[alias].settings_dict["NAME"]

    def pool() -> dict:
        return next(row for row in pgbouncer_session.admin("SHOW POOLS") if row["database"] == database)

    release = threading.Event()
    holding = threading.Barrier(5)
    errors: list[BaseException] = []

    def holder(index: int) -> None:
        try:
            with locks[alias].lock(f"held-{index}", 60_000):
                holding.wait(30)
                release.wait(30)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            close_thread_lock_connections()  # gives its server connection back

    holders = [threading.Thread(target=holder, args=(i,)) for i in range(4)]  # the pool's size
    for thread in holders:
        thread.start()
    holding.wait(30)
    assert not errors, errors
    # One server connection per thread, held as long as its lock connection is open.
    assert (pool()["cl_active"], pool()["sv_active"]) == (4, 4)

    # A fifth thread's lock call waits in PgBouncer's queue, then fails with its timeout.
    outcome: list[object] = []

    def fifth() -> None:
        started = time.monotonic()
        try:
            outcome.append(locks[alias].try_acquire_lock(None, "fifth", 60_000))
        except LockBackendError as e:
            outcome.append(e)
        finally:
            outcome.append(time.monotonic() - started)
            close_thread_lock_connections()

    waiting = threading.Thread(target=fifth)
    waiting.start()
    wait_until(lambda: pool()["cl_waiting"] == 1, timeout=10)
    waiting.join(30)
    error, elapsed = outcome
    assert isinstance(error, LockBackendError) and "query_wait_timeout" in str(error)
    assert 1.5 <= elapsed < 10  # PgBouncer's query_wait_timeout (2 s here)

    release.set()
    for thread in holders:
        thread.join(30)
    assert not errors, errors
    wait_until(lambda: pool()["sv_active"] == 0, timeout=10)
    assert locks[alias].try_acquire_lock(None, "fifth", 60_000)  # room again
    locks[alias].release_lock(None, "fifth")
    close_thread_lock_connections()


def test_waiters_behind_transaction_pooling_poll_and_say_so_once(pgbouncer_transaction, caplog):
    """LISTEN cannot work through transaction pooling: the listener's probe never comes
    back, it says so once, and waiters poll (and still get the lock)."""
    import logging

    from django_locks.backends import database

    database.close_all_lock_connections()  # a listener of this process starts anew
    caplog.set_level(logging.WARNING, logger="django_locks")
    backend = locks["pgbouncer_transaction"]
    holder = backend.lock("job", 60_000)
    got = threading.Event()

    def wait() -> None:
        with locks["pgbouncer_transaction"].lock("job", 60_000, timeout=30_000):
            got.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    listener = database.listener_for("pgbouncer_transaction")
    wait_until(lambda: listener.unusable, timeout=15)
    holder.release()
    assert got.wait(10)
    waiter.join(10)
    said = [r for r in caplog.records if "poll instead of waiting for notifications" in r.getMessage()]
    assert len(said) == 1 and "pgbouncer_transaction" in said[0].getMessage(), [r.threadName for r in said]
    # The LISTEN tried on the way was taken back: the pooled server connection's next
    # client is subscribed to nothing (it would get every release's key).
    database.close_all_lock_connections()
    with plain_client("pgbouncer_transaction") as other:
        assert other.execute("SELECT pg_listening_channels()").fetchall() == []
