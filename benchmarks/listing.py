"""``python -m benchmarks --listing``: the row "listing: first page".

With 1,000, 10,000 and 100,000 locks held on DatabaseLock (PostgreSQL, MariaDB, SQLite)
and CacheLock (Redis), in one run: the time of ``list_locks(limit=100)``, of ``manage.py locks list
--limit 100``, and of the admin changelist's first page (Django's test Client, logged in
as a superuser), next to ``held_locks()`` (every lock: the anchor); and how much the
process's resident memory grew over each (RSS read from /proc right after the call, its
result still referenced; the paged ones are measured before the anchor at each size).

The locks are written straight into storage (one INSERT ... SELECT generate_series on
PostgreSQL, a recursive CTE on MariaDB and SQLite, pipelined HSET + PEXPIRE on Redis; keys
``bench:listing:NNNNNN``, alive for ten minutes) and deleted after each size. Asserts
nothing.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

SIZES = (1_000, 10_000, 100_000)
PREFIX = "bench:listing:"
TTL_MS = 600_000
#: Timed runs of each paged operation (the median is reported); the anchor runs once.
REPEATS = 5


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(operation: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """(median seconds, RSS growth in bytes with the last result alive)."""
    gc.collect()
    before = rss_bytes()
    times, result = [], None
    for _ in range(repeats):
        result = None
        started = time.perf_counter()
        result = operation()
        times.append(time.perf_counter() - started)
    grown = rss_bytes() - before
    del result
    return statistics.median(times), max(grown, 0)


# ----------------------------------------------------------------------------- filling


def fill_postgres(count: int) -> None:
    from django.db import connections

    with connections["postgres"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO django_locks_lock (key, token, correlation_id, fencing_token, "
            "acquired_at_us, expires_at_us) "
            "SELECT %s || lpad(g::text, 6, '0'), md5(g::text), NULL, g, now_us, now_us + %s "
            "FROM generate_series(1, %s) g, "
            "(SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS now_us) c",
            [PREFIX, TTL_MS * 1000, count],
        )
        cursor.execute("ANALYZE django_locks_lock")


def empty_postgres() -> None:
    from django.db import connections

    with connections["postgres"].cursor() as cursor:
        cursor.execute("DELETE FROM django_locks_lock WHERE key LIKE %s", [PREFIX + "%"])


#: Filling the other databases: ``count`` rows by a recursive CTE, times from this host's
#: clock (the database's own, on one machine).
FILL_SQL = {
    # MariaDB stops a recursive CTE at max_recursive_iterations (1,000 here): six digits
    # crossed instead.
    "mysql": ("INSERT INTO django_locks_lock (`key`, token, correlation_id, fencing_token, "
              "acquired_at_us, expires_at_us) "
              "SELECT CONCAT(%s, LPAD(n, 6, '0')), LOWER(LPAD(HEX(n), 32, '0')), NULL, n, %s, %s "
              "FROM (SELECT 1 + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d "
              "+ 100000 * h.d AS n FROM " + ", ".join(
                  f"({' UNION ALL '.join(f'SELECT {i} AS d' for i in range(10))}) {alias}"
                  for alias in "abcefh") + ") g WHERE n <= %s"),
    "default": ("INSERT INTO django_locks_lock (key, token, correlation_id, fencing_token, "
                "acquired_at_us, expires_at_us) "
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %s) "
                "SELECT %s || printf('%%06d', n), printf('%%032x', n), NULL, n, %s, %s FROM g"),
}


def database_filler(database: str) -> Callable[[int], None]:
    def fill(count: int) -> None:
        from django.db import connections

        now_us = int(time.time() * 1_000_000)
        with connections[database].cursor() as cursor:
            times = [now_us, now_us + TTL_MS * 1000]
            cursor.execute(FILL_SQL[database], [PREFIX, *times, count] if database == "mysql"
                           else [count, PREFIX, *times])
            cursor.execute("ANALYZE TABLE django_locks_lock" if database == "mysql" else "ANALYZE")

    return fill


def database_emptier(database: str) -> Callable[[int], None]:
    def empty(count: int) -> None:
        from django.db import connections

        key = connections[database].ops.quote_name("key")
        with connections[database].cursor() as cursor:
            cursor.execute(f"DELETE FROM django_locks_lock WHERE {key} LIKE %s", [PREFIX + "%"])

    return empty


def _redis_names(count: int) -> list[str]:
    from django_locks import locks

    client = locks["redis"].client
    return [client.keys(f"{PREFIX}{i:06d}").lock for i in range(1, count + 1)]


def fill_redis(count: int) -> None:
    from benchmarks.impls import redis_client

    client = redis_client()
    now_us = int(time.time() * 1_000_000)
    names = _redis_names(count)
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for i, name in enumerate(names[start:start + 5000], start + 1):
            pipe.hset(name, mapping={"key": f"{PREFIX}{i:06d}", "token": f"{i:032x}", "fence": str(i),
                                     "cid": "", "acquired": str(now_us),
                                     "expires": str(now_us + TTL_MS * 1000)})
            pipe.pexpire(name, TTL_MS)
        pipe.execute()


def empty_redis(count: int) -> None:
    from benchmarks.impls import redis_client

    client = redis_client()
    names = _redis_names(count)
    for start in range(0, count, 5000):
        client.delete(*names[start:start + 5000])


BACKENDS = {
    "postgres": ("DatabaseLock, PostgreSQL", fill_postgres, lambda count: empty_postgres()),
    "mysql": ("DatabaseLock, MariaDB", database_filler("mysql"), database_emptier("mysql")),
    "sqlite": ("DatabaseLock, SQLite", database_filler("default"), database_emptier("default")),
    "redis": ("CacheLock, Redis (django-redis)", fill_redis, empty_redis),
}


# ----------------------------------------------------------------------------- the row


def setup() -> dict[str, str]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.listing_settings"
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks.__main__ import ensure_databases

    ensure_databases()
    for database in ("default", "postgres", "mysql"):
        call_command("migrate", database=database, verbosity=0)
    empty_postgres()
    for database in ("default", "mysql"):
        database_emptier(database)(0)
    import platform

    return {"python": platform.python_version(), "django": django.get_version(),
            "cpu_cores": str(os.cpu_count())}


def run_listing(sizes: tuple[int, ...] = SIZES) -> list[dict]:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from django_locks import locks

    user, _ = User.objects.get_or_create(username="bench-listing", defaults={"is_superuser": True,
                                                                           "is_staff": True})
    client = Client()
    client.force_login(user)
    rows = []
    for alias, (label, fill, empty) in BACKENDS.items():
        backend = locks[alias]
        for count in sizes:
            fill(count)
            try:
                page = backend.list_locks(limit=100)
                assert len(page.holders) == 100, (alias, count, len(page.holders))

                def command() -> str:
                    out = StringIO()
                    call_command("locks", "list", "--backend", alias, "--limit", "100",  # noqa: B023
                                 stdout=out, stderr=StringIO())
                    return out.getvalue()

                def admin_page() -> bytes:
                    response = client.get("/admin/django_locks/lock/")
                    assert response.status_code == 200, response.status_code
                    return response.content

                row: dict[str, Any] = {"backend": label, "alias": alias, "held": count}
                for name, operation, repeats in (
                    ("list_locks", lambda: backend.list_locks(limit=100), REPEATS),  # noqa: B023
                    ("command", command, REPEATS),
                    ("admin", admin_page, REPEATS),
                    ("held_locks", backend.held_locks, 1),
                ):
                    seconds, grown = measure(operation, repeats)
                    row[f"{name}_s"], row[f"{name}_rss_mb"] = seconds, grown / 2**20
                row["admin_kb"] = len(admin_page()) / 1024
                row["total"] = page.total
                print(f"  {label}, {count:,} held: list_locks {row['list_locks_s'] * 1000:.1f} ms, "
                      f"command {row['command_s'] * 1000:.1f} ms, admin {row['admin_s'] * 1000:.1f} ms, "
                      f"held_locks {row['held_locks_s'] * 1000:.0f} ms", flush=True)
                rows.append(row)
            finally:
                empty(count)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "### Listing: first page",
        "",
        "Median of 5 runs (`held_locks()`: one run); RSS growth with the result alive.",
        "",
        "| backend | held | `list_locks(limit=100)` | `locks list --limit 100` | admin first page "
        "| `held_locks()` (anchor) | RSS growth: page / admin / anchor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['held']:,} | {row['list_locks_s'] * 1000:.1f} ms "
            f"| {row['command_s'] * 1000:.1f} ms | {row['admin_s'] * 1000:.1f} ms ({row['admin_kb']:.0f} KB) "
            f"| {row['held_locks_s'] * 1000:,.0f} ms | {row['list_locks_rss_mb']:.1f} / "
            f"{row['admin_rss_mb']:.1f} / {row['held_locks_rss_mb']:.1f} MB |"
        )
    return "\n".join(lines) + "\n"
