"""System checks of the LOCKS setting, each triggered by a settings override."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

from django_locks.checks import check_locks_setting

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit

CACHES = {
    "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
              "LOCATION": "redis://127.0.0.1:6379/0"},
    "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "files": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
              "LOCATION": "/tmp/django-locks-check"},
    "dummy": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
}
DB = "django_locks.backends.database.DatabaseLock"
CACHE = "django_locks.backends.cache.CacheLock"


def ids(locks_setting, **overrides) -> list[str]:
    """The check ids for these aliases, next to a "default" alias (its absence is E008)."""
    locks_setting = {"default": {"BACKEND": "django_locks.backends.memory.MemoryLock"}, **locks_setting}
    with override_settings(LOCKS=locks_setting, CACHES=CACHES, **overrides):
        return sorted(message.id for message in check_locks_setting())


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"BACKEND": "no.such.Backend"}, ["django_locks.E001"]),
        ({"BACKEND": DB, "OPTIONS": {"usin": "default"}}, ["django_locks.E002"]),
        ({"BACKEND": DB, "TIMEOUT": 3}, ["django_locks.E002"]),
        ({"BACKEND": DB, "OPTIONS": {"using": "missing"}}, ["django_locks.E003"]),
        ({"BACKEND": CACHE, "OPTIONS": {"cache": "missing"}}, ["django_locks.E004"]),
        ({"BACKEND": CACHE, "OPTIONS": {"cache": "dummy"}}, ["django_locks.E005"]),
        ({"BACKEND": CACHE, "OPTIONS": {"cache": "locmem"}},
         ["django_locks.W001", "django_locks.W002", "django_locks.W003"]),
        ({"BACKEND": CACHE, "OPTIONS": {"cache": "files"}}, ["django_locks.E009"]),
        ({"BACKEND": CACHE, "OPTIONS": {"cache": "redis"}}, []),
        ({"BACKEND": DB}, []),
        ({"BACKEND": "django_locks.backends.memory.MemoryLock"}, []),
    ],
)
def test_each_check(config, expected):
    assert ids({"x": config}) == expected


@pytest.fixture
def extra_database(monkeypatch):
    """Adds a DATABASES alias for one test (never connected to)."""
    from django.db import connections

    def add(alias: str, config: dict) -> None:
        settings = {**connections.settings, alias: {**connections.settings["default"], **config}}
        monkeypatch.setitem(connections.__dict__, "settings", settings)

    return add


def test_unsupported_database_engine(extra_database):
    extra_database("other", {"ENGINE": "django.db.backends.dummy"})
    assert ids({"x": {"BACKEND": DB, "OPTIONS": {"using": "other"}}}) == ["django_locks.E006"]


def test_registered_with_the_check_framework():
    dummy = {"default": {"BACKEND": CACHE, "OPTIONS": {"cache": "dummy"}}}
    with override_settings(LOCKS=dummy, CACHES=CACHES):
        found = checks.run_checks(tags=["django_locks"])
    assert [m.id for m in found] == ["django_locks.E005"]
    assert all(isinstance(m, checks.CheckMessage) for m in found)


def test_mysql_connector_django_backend_is_refused_by_a_check_naming_it(monkeypatch):
    """mysql-connector-python's own Django backend cannot run several statements in one
    round trip: refused at check time (mysqlclient and PyMySQL through Django's backend
    work; CI runs the database tests under each)."""
    from django.db import connections

    # A database alias of that backend, never connected (refused before it is even loaded).
    monkeypatch.setitem(connections.settings, "connector",
                        {"ENGINE": "mysql.connector.django", "NAME": "test", "HOST": "127.0.0.1"})
    messages = [m for m in checks_for({"connector": {"BACKEND": DB, "OPTIONS": {"using": "connector"}}})
                if m.obj == "LOCKS['connector']"]
    assert [m.id for m in messages] == ["django_locks.E006"]
    assert "mysql.connector.django" in messages[0].msg and "PyMySQL" in messages[0].msg


def checks_for(locks_setting):
    locks_setting = {"default": {"BACKEND": "django_locks.backends.memory.MemoryLock"}, **locks_setting}
    with override_settings(LOCKS=locks_setting, CACHES=CACHES):
        return check_locks_setting()
