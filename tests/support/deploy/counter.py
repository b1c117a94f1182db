"""A counter in a table of its own, incremented by a deliberately racy read, pause, write:
two holders of a lock at once would lose an update."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connections

TABLE = "deploy_counter"
#: The pause between the read and the write (s): the race window.
HOLD = 0.003

#: The lock aliases the tier serves: those whose storage other processes share.
ALIASES = [alias for alias in ("default", "postgres", "mysql", "django_redis", "redis")
           if alias in settings.LOCKS]


def database_of(alias: str) -> str:
    """Where the counters of lock alias ``alias`` live: a DatabaseLock's own database,
    else "default"."""
    params = settings.LOCKS[alias]
    if params["BACKEND"].endswith("DatabaseLock"):
        return params.get("OPTIONS", {}).get("using", "default")
    return "default"


def create(using: str, names: list[str]) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (name VARCHAR(100) PRIMARY KEY, value BIGINT NOT NULL)")
        for name in names:
            cursor.execute(f"INSERT INTO {TABLE} (name, value) VALUES (%s, 0)", [name])


def drop(using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def values(using: str) -> dict[str, int]:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT name, value FROM {TABLE}")
        return {name: int(value) for name, value in cursor.fetchall()}


def read(using: str, name: str) -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT value FROM {TABLE} WHERE name = %s", [name])
        return int(cursor.fetchone()[0])


def write(using: str, name: str, value: int) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET value = %s WHERE name = %s", [value, name])


def increment(using: str, name: str) -> int:
    """Read, pause, write; the new value."""
    value = read(using, name) + 1
    time.sleep(HOLD)
    write(using, name, value)
    return value
