"""What is measured: each row is a lock implementation (or a floor) behind two calls.

``uncontended(name)`` returns a function doing one acquire + release pair on a fresh key
space; ``contended(name, key)`` returns (acquire, release) for blocking use by a worker
process. Everything here talks to the real servers of ``benchmarks.settings``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from django_locks import locks
from django_locks.backends.database import lock_connection

TTL_MS = 10_000
WAIT_MS = 60_000

# The least a safe Redis lock can do: compare-and-delete on release.
COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

DB_ALIASES = {"sqlite": "default", "postgres": "postgres", "mysql": "mysql"}
BASELINE_TABLE = "bench_db_lock_baseline"


def redis_client(cache: str = "django_redis"):
    return caches[cache].client.get_client(write=True)


# ----------------------------------------------------------------------------- uncontended


def _redis_floor_ping() -> Callable[[], None]:
    client = redis_client()

    def pair() -> None:
        client.ping()
        client.ping()

    return pair


def _redis_floor_setnx(cache: str = "django_redis") -> Callable[[], None]:
    client = redis_client(cache)
    sha = client.script_load(COMPARE_AND_DELETE)
    key = f"{settings.BENCH_DB}:floor"

    def pair() -> None:
        token = uuid.uuid4().hex
        assert client.set(key, token, nx=True, px=TTL_MS)
        client.evalsha(sha, 1, key, token)

    return pair


def _django_locks_mode(alias: str, **mode: object) -> Callable[[], None]:
    """A lease of a semaphore or shared lock taken and released (one holder: uncontended)."""
    backend = locks[alias]

    def pair() -> None:
        backend.lock("bench:mode", TTL_MS, **mode).release()

    return pair


def _django_locks(alias: str) -> Callable[[], None]:
    backend = locks[alias]

    def pair() -> None:
        assert backend.try_acquire_lock(None, "bench:pair", TTL_MS)
        backend.release_lock(None, "bench:pair")

    return pair


def _django_locks_with(alias: str) -> Callable[[], None]:
    """A lease taken and released by ``with backend.lock(key, ttl)`` (the sync twin of
    the async row below)."""
    backend = locks[alias]

    def pair() -> None:
        with backend.lock("bench:with", TTL_MS):
            pass

    return pair


def _django_locks_async(alias: str) -> Callable[[], Awaitable[None]]:
    """``async with backend.alock(key, ttl)``: a coroutine function, which the runner
    awaits in one event loop for a whole round (no loop started per pair)."""
    backend = locks[alias]

    async def pair() -> None:
        async with backend.alock("bench:with", TTL_MS):
            pass

    return pair


def _redis_py_lock() -> Callable[[], None]:
    cache = caches["django_redis"]

    def pair() -> None:
        lock = cache.lock("bench:redis-py", timeout=TTL_MS / 1000)
        assert lock.acquire(blocking=False)
        lock.release()

    return pair


def _python_redis_lock() -> Callable[[], None]:
    import redis_lock

    client = redis_client()

    def pair() -> None:
        lock = redis_lock.Lock(client, "bench:python-redis-lock", expire=TTL_MS // 1000)
        assert lock.acquire(blocking=False)
        lock.release()

    return pair


def _pottery_redlock() -> Callable[[], None]:
    from pottery import Redlock

    client = redis_client()

    def pair() -> None:
        lock = Redlock(key="bench:pottery", masters={client}, auto_release_time=TTL_MS / 1000)
        assert lock.acquire(blocking=False)
        lock.release()

    return pair


def _db_floor(alias: str) -> Callable[[], None]:
    cursor = connections[DB_ALIASES[alias]].cursor()

    def pair() -> None:
        cursor.execute("SELECT 1")
        cursor.fetchall()
        cursor.execute("SELECT 1")
        cursor.fetchall()

    return pair


def _db_raw_sql(alias: str) -> Callable[[], None]:
    """DatabaseLock's own statements, issued through the driver with no library around."""
    backend = locks[alias]
    ops = backend.operations
    wrapper = lock_connection(backend.using).wrapper
    backend.get_lock("warm-up")  # opens the private connection (and WAL on SQLite)
    cursor = wrapper.connection.cursor()

    connection = lock_connection(backend.using)

    def pair() -> None:
        if backend.vendor == "sqlite":  # the mode of this alias (the connection is shared)
            connection.sqlite_synchronous("FULL" if backend.durable else "NORMAL")
        token = uuid.uuid4().hex
        # As an uncontended try_acquire_lock sends it (fair vendors: since = 0, a call
        # that does not wait).
        cursor.execute(ops.acquire.sql, ops.acquire.bind(key="bench:raw", token=token, correlation_id=None,
                                                         ttl_us=TTL_MS * 1000, since=0))
        if backend.features.returning:
            assert cursor.fetchall()
        else:
            cursor.execute(ops.read_row.sql, ops.read_row.bind(key="bench:raw"))
            assert cursor.fetchall()[0][1] == token
        cursor.execute(ops.release.sql, ops.release.bind(key="bench:raw", token=token))

    return pair


def ensure_baseline_table(alias: str) -> None:
    connection = connections[DB_ALIASES[alias]]
    key_type = "varchar(255)"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {BASELINE_TABLE}")
        cursor.execute(
            f"CREATE TABLE {BASELINE_TABLE} (lock_key {key_type} PRIMARY KEY, "
            "owner varchar(64) NOT NULL, expires_at bigint NOT NULL)"
        )


def _db_baseline(alias: str) -> Callable[[], None]:
    """How most Django model locks work (django-db-lock style): in ``atomic()``, delete the
    key's expired row, then INSERT (an IntegrityError means busy); release deletes the row."""
    using = DB_ALIASES[alias]
    connection = connections[using]

    def acquire(key: str, owner: str) -> bool:
        now = timezone.now()
        try:
            with transaction.atomic(using=using), connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {BASELINE_TABLE} WHERE lock_key = %s AND expires_at < %s",
                               [key, int(now.timestamp() * 1e6)])
                expires = now + timedelta(milliseconds=TTL_MS)
                cursor.execute(f"INSERT INTO {BASELINE_TABLE} (lock_key, owner, expires_at) "
                               "VALUES (%s, %s, %s)", [key, owner, int(expires.timestamp() * 1e6)])
            return True
        except IntegrityError:
            return False

    def release(key: str, owner: str) -> None:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {BASELINE_TABLE} WHERE lock_key = %s AND owner = %s",
                           [key, owner])

    def pair() -> None:
        owner = uuid.uuid4().hex
        assert acquire("bench:baseline", owner)
        release("bench:baseline", owner)

    return pair


def _pg_advisory() -> Callable[[], None]:
    cursor = connections["postgres"].cursor()

    def pair() -> None:
        cursor.execute("SELECT pg_try_advisory_lock(4242)")
        assert cursor.fetchone()[0]
        cursor.execute("SELECT pg_advisory_unlock(4242)")
        cursor.fetchone()

    return pair


def _threading_lock() -> Callable[[], None]:
    lock = threading.Lock()

    def pair() -> None:
        lock.acquire(False)
        lock.release()

    return pair


def _update(alias: str, fenced: bool) -> Callable[[], None]:
    """One UPDATE of one row of a FencedModel, plain or fenced by a lease of the DatabaseLock
    on the same database (the costliest fence: row lock, token check and the lease's
    liveness by the database's clock, in one transaction)."""
    from tests.support.fencedapp.models import Document

    using = DB_ALIASES[alias]
    name = f"bench:{alias}:{'fenced' if fenced else 'plain'}"
    Document.objects.using(using).filter(name=name).delete()
    pk = Document.objects.using(using).create(name=name).pk
    lease = locks[alias].lock(f"bench:fenced:{uuid.uuid4().hex}", 3_600_000) if fenced else None
    counter = iter(range(10**12))

    def update() -> None:
        rows = Document.objects.using(using)
        if lease is not None:
            rows = rows.fenced(lease)
        assert rows.filter(pk=pk).update(body=str(next(counter))) == 1

    return update


#: (group, row name, factory). A factory returns the pair, a function; or a coroutine
#: function, awaited in one event loop per round.
UNCONTENDED: list[tuple[str, str, Callable[[], Callable[[], Any]]]] = [
    ("redis", "Redis floor: PING x2", _redis_floor_ping),
    ("redis", "Redis floor: SET NX PX + EVALSHA", _redis_floor_setnx),
    ("redis", "CacheLock (django-redis)", lambda: _django_locks("django_redis")),
    ("redis", "CacheLock (Django RedisCache)", lambda: _django_locks("redis")),
    ("redis", "CacheLock (django-redis), with lock", lambda: _django_locks_with("django_redis")),
    ("redis", "CacheLock (django-redis), async alock", lambda: _django_locks_async("django_redis")),
    ("redis", "redis-py Lock (django-redis cache.lock)", _redis_py_lock),
    ("redis", "python-redis-lock", _python_redis_lock),
    ("redis", "pottery Redlock (1 master)", _pottery_redlock),
    ("cluster", "Redis Cluster floor: SET NX PX + EVALSHA", lambda: _redis_floor_setnx("cluster")),
    ("cluster", "CacheLock (Redis Cluster, django-redis)", lambda: _django_locks("cluster")),
]
for _db in ("postgres", "mysql", "sqlite"):
    UNCONTENDED += [
        (_db, f"{_db}: floor SELECT 1 x2", lambda db=_db: _db_floor(db)),
        (_db, f"{_db}: DatabaseLock SQL, raw", lambda db=_db: _db_raw_sql(db)),
        (_db, f"{_db}: DatabaseLock", lambda db=_db: _django_locks(db)),
        (_db, f"{_db}: django-db-lock-style baseline", lambda db=_db: _db_baseline(db)),
    ]
UNCONTENDED += [
    ("postgres", "postgres: DatabaseLock, durable: False", lambda: _django_locks("postgres_fast")),
    ("postgres", "postgres: DatabaseLock, with lock", lambda: _django_locks_with("postgres")),
    ("postgres", "postgres: DatabaseLock, async alock", lambda: _django_locks_async("postgres")),
    ("sqlite", "sqlite: DatabaseLock, durable: False", lambda: _django_locks("sqlite_fast")),
    ("postgres", "postgres: DatabaseLock via PgBouncer (transaction)", lambda: _django_locks("pgbouncer")),
    ("postgres", "postgres: advisory lock try/unlock", _pg_advisory),
    ("memory", "threading.Lock", _threading_lock),
    ("memory", "MemoryLock", lambda: _django_locks("memory")),
]
for _db in ("postgres", "mysql", "sqlite"):
    UNCONTENDED += [
        (_db, f"{_db}: plain update of one row", lambda db=_db: _update(db, False)),
        (_db, f"{_db}: fenced update of one row (DatabaseLock lease, same database)",
         lambda db=_db: _update(db, True)),
    ]
#: Shared locks and semaphores (issue 13), next to each backend's exclusive pair above.
MODE_ALIASES = {"CacheLock (django-redis)": "django_redis", "postgres: DatabaseLock": "postgres",
                "mysql: DatabaseLock": "mysql", "sqlite: DatabaseLock": "sqlite",
                "MemoryLock": "memory"}
for _name, _alias in MODE_ALIASES.items():
    _group = next(group for group, name, _ in UNCONTENDED if name == _name)
    UNCONTENDED += [
        (_group, f"{_name}, semaphore (limit 4)", lambda a=_alias: _django_locks_mode(a, limit=4)),
        (_group, f"{_name}, shared", lambda a=_alias: _django_locks_mode(a, shared=True)),
    ]


# ----------------------------------------------------------------------------- contended


#: Contended rows: name -> (kind, argument). Kinds: "lock" (a LOCKS alias, blocking
#: ``acquire_lock``), "alock" (a LOCKS alias, async ``alock``), "redis-py" and
#: "redis-py async" (redis-py's ``Lock`` with this ``sleep`` between its polls: 0.1 s is
#: its default), "python-redis-lock".
CONTENDED: dict[str, tuple[str, object]] = {
    "CacheLock (django_redis)": ("lock", "django_redis"),
    "CacheLock (cluster)": ("lock", "cluster"),
    "redis-py Lock (default 100 ms polling)": ("redis-py", 0.1),
    "redis-py Lock (1 ms polling)": ("redis-py", 0.001),
    "python-redis-lock": ("python-redis-lock", None),
    "CacheLock async (django_redis, alock)": ("alock", "django_redis"),
    "redis-py asyncio Lock (default 100 ms polling)": ("redis-py async", 0.1),
    "redis-py asyncio Lock (1 ms polling)": ("redis-py async", 0.001),
    "DatabaseLock (postgres, LISTEN/NOTIFY)": ("lock", "postgres"),
    "DatabaseLock async (postgres, alock, LISTEN/NOTIFY)": ("alock", "postgres"),
    "DatabaseLock (postgres, notify: False: polling)": ("lock", "postgres_poll"),
    "DatabaseLock (postgres, durable: False, LISTEN/NOTIFY)": ("lock", "postgres_fast"),
    "DatabaseLock (postgres, durable: False, notify: False)": ("lock", "postgres_fast_poll"),
    "DatabaseLock (pgbouncer, transaction: polling)": ("lock", "pgbouncer"),
    "DatabaseLock (mysql)": ("lock", "mysql"),
    "DatabaseLock (sqlite)": ("lock", "sqlite"),
}
#: Rows of the full run only (--quick stays under a minute): PostgreSQL without waiting for
#: the disk at commit, which shows the handoff of notifications and of polling without the
#: two commits' flushes that a durable handoff waits for.
FULL_ONLY = frozenset({
    "DatabaseLock (postgres, durable: False, LISTEN/NOTIFY)",
    "DatabaseLock (postgres, durable: False, notify: False)",
})
#: The rows whose waiters are coroutines (one event loop per worker process).
ASYNC_KINDS = frozenset({"alock", "redis-py async"})
#: Goals of issue 14 (handoff p50 and p99 ms, releaser re-take share), by row.
GOALS: dict[str, tuple[float, float, float | None]] = {
    "DatabaseLock (postgres, LISTEN/NOTIFY)": (1.0, 5.0, 0.5),
    "CacheLock async (django_redis, alock)": (1.0, 5.0, None),
}
#: Goals against an anchor row of the same run and section (issue 22): handoff p50 and p99
#: at or below the anchor's, and the releaser's re-take share below this (None: not judged).
GOALS_VS: dict[str, tuple[str, float | None]] = {
    "CacheLock (django_redis)": ("python-redis-lock", 0.3),
    "CacheLock (cluster)": ("python-redis-lock", 0.3),
    "CacheLock async (django_redis, alock)": ("CacheLock (django_redis)", None),
    "DatabaseLock async (postgres, alock, LISTEN/NOTIFY)": ("DatabaseLock (postgres, LISTEN/NOTIFY)", None),
}


def is_async(name: str) -> bool:
    return CONTENDED[name][0] in ASYNC_KINDS


def contended(name: str, key: str) -> tuple[Callable[[], object], Callable[[object], object]]:
    """(acquire, release) of one worker; acquire blocks until it holds ``key``. For the
    async rows (:func:`is_async`) both are coroutine functions."""
    kind, argument = CONTENDED[name] if name in CONTENDED else ("mode", name)
    if kind == "mode":  # "ALIAS MODE": a lease of a semaphore, shared or exclusive lock
        alias, mode = argument.split(" ", 1)
        backend = locks[alias]
        options = {"shared": True} if mode == "shared" else {"limit": int(mode.removeprefix("limit="))}

        def acquire_mode() -> object:
            return backend.lock(key, TTL_MS, timeout=WAIT_MS, **options)

        return acquire_mode, lambda lease: lease.release()
    if kind == "lock":
        backend = locks[argument]

        def acquire() -> object:
            backend.acquire_lock(None, key, TTL_MS, WAIT_MS)
            return None

        return acquire, lambda _: backend.release_lock(None, key)
    if kind == "alock":
        backend = locks[argument]

        async def aacquire() -> object:
            return await backend.alock(key, TTL_MS, timeout=WAIT_MS)

        async def arelease(lease) -> None:
            await lease.arelease()

        return aacquire, arelease
    if kind == "redis-py":
        cache = caches["django_redis"]

        def acquire() -> object:
            lock = cache.lock(key, timeout=TTL_MS / 1000, sleep=argument)
            assert lock.acquire(blocking=True, blocking_timeout=WAIT_MS / 1000)
            return lock

        return acquire, lambda lock: lock.release()
    if kind == "redis-py async":
        import redis.asyncio

        from benchmarks.settings import REDIS_URL

        name = caches["django_redis"].make_key(key)  # the key the sync rows' cache.lock uses
        client = redis.asyncio.Redis.from_url(REDIS_URL)

        async def aacquire() -> object:
            lock = client.lock(name, timeout=TTL_MS / 1000, sleep=argument)
            assert await lock.acquire(blocking=True, blocking_timeout=WAIT_MS / 1000)
            return lock

        async def arelease(lock) -> None:
            await lock.release()

        return aacquire, arelease
    if kind == "python-redis-lock":
        import redis_lock

        client = redis_client()

        def acquire() -> object:
            lock = redis_lock.Lock(client, key, expire=TTL_MS // 1000)
            assert lock.acquire(blocking=True, timeout=TTL_MS // 1000)  # may not exceed expire
            return lock

        return acquire, lambda lock: lock.release()
    raise ValueError(f"unknown contended row {name!r}")
