"""A new project's set-up: the checks that catch a LOCKS without "default" and a
FileBasedCache, the error that says to run ``migrate``, and ``override_settings(LOCKS=...)``
in a project's own tests."""

from __future__ import annotations

import django
import pytest
from django.core import checks
from django.test import override_settings

from django_locks import locks
from django_locks.backends.database import DatabaseLock
from django_locks.backends.database.operations import Statement
from django_locks.checks import check_locks_setting
from django_locks.decorators import locked
from django_locks.exceptions import InvalidLockBackendError, LockBackendError
from tests.helpers import locks_cmd

#: Hermetic: also in the unit tier (scripts/test --unit), except the tests marked servers.
pytestmark = pytest.mark.unit

MEMORY = {"BACKEND": "django_locks.backends.memory.MemoryLock"}


# ----------------------------------------------------------------------------- checks


def check_ids(locks_setting) -> list[str]:
    with override_settings(LOCKS=locks_setting):
        return sorted(message.id for message in check_locks_setting())


def test_locks_without_default_is_an_error_at_start_up():
    assert check_ids({"main": MEMORY}) == ["django_locks.E008"]
    assert check_ids({}) == ["django_locks.E008"]
    assert check_ids({"default": MEMORY, "other": MEMORY}) == []
    with override_settings(LOCKS={"main": MEMORY}):
        [message] = checks.run_checks(tags=["django_locks"])
    assert message.level == checks.ERROR and "no 'default' alias" in message.msg
    assert "configured: 'main'" in message.msg and "lock_view" in message.msg


def test_file_based_cache_behind_cachelock_is_an_error(tmp_path):
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
              "files": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                        "LOCATION": str(tmp_path)}}
    setting = {"default": MEMORY, "x": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                        "OPTIONS": {"cache": "files"}}}
    with override_settings(CACHES=caches, LOCKS=setting):
        [message] = check_locks_setting()
        assert (message.id, message.level) == ("django_locks.E009", checks.ERROR)
        assert "FileBasedCache, which gives no mutual exclusion" in message.msg
        with pytest.raises(InvalidLockBackendError, match="no mutual exclusion") as caught:
            locks["x"]
        assert caught.value.check_id == "django_locks.E009"


def test_a_missing_table_says_to_run_migrate(unmigrated_database):
    backend = DatabaseLock("nomigrate", {"OPTIONS": {"using": unmigrated_database}})
    with pytest.raises(LockBackendError) as caught:
        backend.try_acquire_lock(None, "k", 1000)
    message = str(caught.value)
    assert "the lock table does not exist: run `python manage.py migrate --database fresh`" in message
    assert "no such table" in message
    with pytest.raises(LockBackendError, match=r"manage\.py migrate"):
        backend.held_locks()


def test_check_with_the_database_warns_when_the_migrations_are_not_applied(unmigrated_database):
    """`manage.py check --database fresh` (a database check, as Django's own): W004 names
    the alias, the database and the command that fixes it; the migrated database is fine."""
    from django.core.management import call_command

    setting = {"default": {"BACKEND": "django_locks.backends.database.DatabaseLock"},
               "jobs": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                        "OPTIONS": {"using": unmigrated_database}}}
    with override_settings(LOCKS=setting):
        found = checks.run_checks(databases=["default", unmigrated_database], tags=["django_locks"])
        assert [(m.id, m.obj) for m in found] == [("django_locks.W004", "LOCKS['jobs']")]
        assert "database 'fresh'" in found[0].msg
        assert found[0].hint == "Run manage.py migrate --database fresh."
        # Without databases: not run before Django 6.0, which runs database checks against
        # every database by default (Django ticket #36663), so plain `check` warns there.
        unasked = checks.run_checks(tags=["django_locks"])
        if django.VERSION >= (6, 0):
            assert [(m.id, m.obj) for m in unasked] == [("django_locks.W004", "LOCKS['jobs']")]
        else:
            assert unasked == []
        call_command("migrate", database=unmigrated_database, verbosity=0)
        assert checks.run_checks(databases=[unmigrated_database], tags=["django_locks"]) == []


def test_a_missing_table_from_the_command(unmigrated_database):
    setting = {"default": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                           "OPTIONS": {"using": unmigrated_database}}}
    with override_settings(LOCKS=setting):
        result = locks_cmd("try", "k", "--ttl", "60000")
    assert result.returncode == 3 and "run `python manage.py migrate --database fresh`" in result.stderr


@pytest.mark.servers  # PostgreSQL and MariaDB say it their own way
def test_a_missing_table_on_every_database(db_alias):
    backend = locks.create_connection(db_alias)
    quote = "`" if backend.vendor == "mysql" else '"'
    backend._operations = type(backend.operations)(
        f"{quote}django_locks_not_migrated{quote}", f"{quote}key{quote}",
        f"{quote}django_locks_holder{quote}",
        returning=backend.features.returning, fair=backend.features.fair_handoff,
    )
    with pytest.raises(LockBackendError, match=r"the lock table does not exist: run `python manage\.py"):
        backend.try_acquire_lock(None, "k", 1000)
    with pytest.raises(LockBackendError, match=r"manage\.py migrate"):
        backend.held_locks()
    assert locks[db_alias].try_acquire_lock(None, "k", 1000)  # the real table is fine


def test_other_database_errors_get_no_migrate_hint(unmigrated_database):
    backend = DatabaseLock("fresh-lock", {"OPTIONS": {"using": unmigrated_database}})
    backend.operations.held = Statement("held", "SELECT nonsense FROM", ())
    with pytest.raises(LockBackendError) as caught:
        backend.held_locks()
    assert "manage.py migrate" not in str(caught.value) and "incomplete input" in str(caught.value)


# ----------------------------------------------------------------------------- settings in tests


def test_override_settings_of_locks_takes_effect():
    before = type(locks["default"])
    other = {"default": MEMORY, "extra": MEMORY}
    with override_settings(LOCKS=other):
        assert type(locks["default"]).__name__ == "MemoryLock"
        assert set(locks) == {"default", "extra"}

        @locked("job", ttl=60_000, backend="extra")
        def job():
            return locks["extra"].get_lock("job")

        assert job() is not None
        assert locks_cmd("show", "nothing", "--backend", "extra").returncode == 1
        locks["extra"].clear()
    assert type(locks["default"]) is before
    with pytest.raises(InvalidLockBackendError, match="'extra' doesn't exist"):
        locks["extra"]


@override_settings(LOCKS={"default": MEMORY})
def test_override_settings_as_a_decorator():
    assert type(locks["default"]).__name__ == "MemoryLock"
    assert list(locks) == ["default"]
    locks["default"].clear()



@pytest.mark.unit
def test_each_run_of_the_suite_gets_test_databases_of_its_own():
    """Two checkouts running the suite at once shared the default test database names (a
    SQLite file in the temporary directory: disk I/O errors, a SIGBUS)."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = ("import json; from tests import settings as s; "
            "print(json.dumps([s.DATABASES['default']['TEST']['NAME'], s.CACHES['redis']['KEY_PREFIX']]))")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DJANGO_LOCKS_TEST_")}
    env["DJANGO_LOCKS_TEST_TIER"] = "unit"
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                      capture_output=True, text=True, timeout=60).stdout)
            for _ in range(2)]
    assert runs[0][0] != runs[1][0] and runs[0][1] != runs[1][1], runs
