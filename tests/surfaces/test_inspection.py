"""django_locks.inspection, what the command and the admin list: every alias in order, with
why it shows nothing (configuration, missing tables, a backend error)."""

from __future__ import annotations

from django.test import override_settings

from django_locks import locks
from django_locks.inspection import BACKEND, CONFIGURATION, MISSING_TABLES, list_aliases


def test_inspection_lists_every_alias_in_order_with_why_it_shows_nothing():
    held = locks["redis"].lock("job", 60_000)
    listings = {listing.alias: listing for listing in list_aliases()}
    assert list(listings) == list(locks)
    assert [info.token for info in listings["redis"].holders] == [held.token]
    assert listings["redis"].listed and listings["redis"].message() is None
    assert listings["locmem"].note.startswith("cannot list its locks: it goes through the generic cache.add")
    assert listings["locmem"].message().endswith("look up a known key with "
                                                 "`manage.py locks show KEY --backend locmem`")
    down = listings["unreachable"]
    assert down.error_kind == BACKEND and down.error.startswith("backend error: ")
    assert "LOCKS[" not in down.error  # the surface names the alias, once
    assert listings["memory"].process_local and not listings["redis"].process_local
    assert listings["default"].can_purge and not listings["redis"].can_purge


def test_inspection_reports_configuration_and_missing_tables(unmigrated_database):
    with override_settings(LOCKS={"broken": {"BACKEND": "nope.Nope"},
                                  "fresh": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                                            "OPTIONS": {"using": unmigrated_database}}}):
        broken, fresh = list_aliases()
    assert (broken.error_kind, broken.backend_name) == (CONFIGURATION, "?")
    assert "could not import BACKEND" in broken.error
    assert fresh.error_kind == MISSING_TABLES and fresh.holders == []
    assert fresh.message(code=str) == ("the django_locks tables are missing: run "
                                       "python manage.py migrate --database fresh")
