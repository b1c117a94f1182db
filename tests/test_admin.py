"""The admin's lock pages, through Django's test client, on the real backends."""

from __future__ import annotations

import html
import importlib
import re
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from django_locks import locks
from django_locks.models import Lock
from tests.conftest import wait_until

LIST = "/admin/django_locks/lock/"
FORCE = "/admin/django_locks/lock/force-release/"
PURGE = "/admin/django_locks/lock/purge/"


def user(name: str, *perms: str, superuser: bool = False) -> Client:
    account = User.objects.create_user(name, password="pw", is_staff=True, is_superuser=superuser)
    for codename in perms:
        account.user_permissions.add(Permission.objects.get(content_type__app_label="django_locks",
                                                            codename=codename))
    client = Client()
    client.force_login(account)
    return client


@pytest.fixture(autouse=True)
def clean_users():
    yield
    LogEntry.objects.all().delete()
    User.objects.all().delete()


@pytest.fixture
def admin_client_() -> Client:
    return user("root", superuser=True)


def rows(response) -> list[tuple[str, str]]:
    html = response.content.decode()
    return re.findall(r'data-key="([^"]*)" data-alias="([^"]*)"', html)


def test_lists_locks_of_every_alias_that_can_enumerate(admin_client_):
    for alias in ("default", "redis", "django_redis", "memory"):
        locks[alias].acquire_lock(f"cid-{alias}", f"job-{alias}", 60_000, 0)
    response = admin_client_.get(LIST)
    assert response.status_code == 200
    assert sorted(rows(response)) == sorted(
        (f"job-{a}", a) for a in ("default", "redis", "django_redis", "memory")
    )
    page = response.content.decode()
    assert "cid-redis" in page and "Fencing token" in page
    # The generic cache is named with its reason, the dead Redis with its error.
    assert re.search(r"locmem</strong> \(CacheLock\):\s*not listed: this backend cannot list", page)
    assert re.search(r"unreachable</strong> \(CacheLock\):\s*backend error", page)


def test_app_index_links_to_the_lock_list(admin_client_):
    response = admin_client_.get("/admin/django_locks/")
    assert response.status_code == 200 and LIST in response.content.decode()


def test_filter_by_alias_and_search_by_key(admin_client_):
    locks["default"].acquire_lock(None, "invoice:1", 60_000, 0)
    locks["default"].acquire_lock(None, "report:1", 60_000, 0)
    locks["redis"].acquire_lock(None, "invoice:2", 60_000, 0)
    assert sorted(rows(admin_client_.get(LIST, {"alias": "redis"}))) == [("invoice:2", "redis")]
    assert sorted(rows(admin_client_.get(LIST, {"q": "INVOICE"}))) == [
        ("invoice:1", "default"), ("invoice:2", "redis")]


def test_sorted_by_expiry(admin_client_):
    locks["default"].acquire_lock(None, "late", 90_000, 0)
    locks["redis"].acquire_lock(None, "soon", 10_000, 0)
    locks["memory"].acquire_lock(None, "middle", 50_000, 0)
    assert [k for k, _ in rows(admin_client_.get(LIST))] == ["soon", "middle", "late"]
    assert [k for k, _ in rows(admin_client_.get(LIST, {"o": "-expires"}))] == ["late", "middle", "soon"]


def test_expired_not_cleaned_rows_are_shown_and_purged(admin_client_):
    backend = locks["default"]
    backend.acquire_lock("dead-worker", "stale", 200, 0)
    backend.acquire_lock(None, "alive", 60_000, 0)
    wait_until(lambda: backend.get_lock("stale") is None)
    response = admin_client_.get(LIST, {"status": "expired"})
    assert rows(response) == [("stale", "default")]
    assert "expired, not cleaned" in response.content.decode()
    assert rows(admin_client_.get(LIST, {"status": "held", "alias": "default"})) == [("alive", "default")]
    confirm = admin_client_.post(PURGE, {"alias": "default"})
    assert confirm.status_code == 200 and "stale" in confirm.content.decode()
    assert Lock.objects.get(key="stale").token is not None  # nothing done before confirming
    done = admin_client_.post(PURGE, {"alias": "default", "confirm": "yes"}, follow=True)
    assert "Purged 1 expired" in done.content.decode()
    assert rows(admin_client_.get(LIST, {"status": "expired"})) == []
    assert backend.get_lock("alive") is not None
    assert LogEntry.objects.filter(object_repr="default: *").exists()


def test_detail_view_shows_the_full_token(admin_client_):
    lease = locks["redis"].lock("a/b:c d?", 60_000, correlation_id="cid-7")
    listing = admin_client_.get(LIST).content.decode()
    url = re.search(r'<a href="([^"]+)">a/b:c d\?</a>', listing).group(1)
    detail = admin_client_.get(url)
    assert detail.status_code == 200
    page = detail.content.decode()
    assert lease.token in page and "cid-7" in page and str(lease.fencing_token) in page
    assert admin_client_.get("/admin/django_locks/lock/nope/x/").status_code == 404


def test_force_release_with_confirmation_and_admin_log(admin_client_):
    lease = locks["mysql" if "mysql" in locks.settings else "default"].lock("job", 60_000)
    alias = lease.alias
    listing = admin_client_.get(LIST).content.decode()
    selection = html.unescape(re.search(r'name="selected" value="([^"]+)"', listing).group(1))
    confirm = admin_client_.post(FORCE, {"selected": [selection]})
    assert confirm.status_code == 200 and "Force-release these locks?" in confirm.content.decode()
    assert locks[alias].get_lock("job") is not None  # not before confirming
    done = admin_client_.post(FORCE, {"selected": [selection], "confirm": "yes"}, follow=True)
    assert "Released &#x27;job&#x27;" in done.content.decode()
    assert locks[alias].get_lock("job") is None
    entry = LogEntry.objects.get()
    assert entry.user.username == "root" and lease.token in entry.change_message


def test_force_release_of_a_holder_that_changed_hands_releases_nothing(admin_client_):
    backend = locks["redis"]
    first = backend.lock("job", 60_000)
    listing = admin_client_.get(LIST).content.decode()
    selection = html.unescape(re.search(r'name="selected" value="([^"]+)"', listing).group(1))
    first.release()
    second = backend.lock("job", 60_000)  # a new holder since the page was shown
    done = admin_client_.post(FORCE, {"selected": [selection], "confirm": "yes"}, follow=True)
    assert "changed hands" in done.content.decode()
    assert backend.get_lock("job").token == second.token
    assert not LogEntry.objects.exists()


def test_anonymous_users_go_to_the_login_page():
    response = Client().get(LIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Client().post(FORCE, {"selected": ["[]"], "confirm": "yes"}).status_code == 302


def test_staff_without_permission_see_nothing():
    client = user("staff")
    locks["default"].acquire_lock(None, "job", 60_000, 0)
    assert client.get(LIST).status_code == 403
    assert client.get("/admin/django_locks/lock/default/job/").status_code == 403
    assert "django_locks" not in client.get("/admin/").content.decode()
    assert client.post(FORCE, {"selected": ['["default", "job", "x"]'], "confirm": "yes"}).status_code == 403


def test_view_permission_only_cannot_force_release():
    client = user("viewer", "view_lock")
    lease = locks["default"].lock("job", 60_000)
    response = client.get(LIST)
    assert response.status_code == 200 and rows(response) == [("job", "default")]
    assert 'name="selected"' not in response.content.decode()
    selection = f'["default", "job", "{lease.token}"]'
    assert client.post(FORCE, {"selected": [selection], "confirm": "yes"}).status_code == 403
    assert client.post(PURGE, {"alias": "default", "confirm": "yes"}).status_code == 403
    assert locks["default"].get_lock("job").token == lease.token


def test_view_and_force_release_permissions():
    client = user("operator", "view_lock", "force_release")
    lease = locks["default"].lock("job", 60_000)
    selection = f'["default", "job", "{lease.token}"]'
    assert 'name="selected"' in client.get(LIST).content.decode()
    client.post(FORCE, {"selected": [selection], "confirm": "yes"})
    assert locks["default"].get_lock("job") is None


def test_only_the_permissions_the_admin_uses():
    lock_type = ContentType.objects.get_for_model(Lock)
    assert set(Permission.objects.filter(content_type=lock_type).values_list("codename", flat=True)) == {
        "view_lock", "force_release"}


def test_migration_removes_the_unused_permissions():
    migration = importlib.import_module("django_locks.migrations.0002_lock_permissions")
    lock_type = ContentType.objects.get_for_model(Lock)
    stale = [Permission.objects.create(content_type=lock_type, codename=codename, name=codename)
             for codename in ("add_lock", "change_lock", "delete_lock")]
    account = User.objects.create_user("granted")
    account.user_permissions.add(*stale)
    migration.remove_unused_permissions(apps, SimpleNamespace(connection=SimpleNamespace(alias="default")))
    assert set(Permission.objects.filter(content_type=lock_type).values_list("codename", flat=True)) == {
        "view_lock", "force_release"}
    assert not account.user_permissions.exists()


def test_nobody_can_add_or_change_locks(admin_client_):
    assert admin_client_.get("/admin/django_locks/lock/add/").status_code in (403, 404)


@pytest.mark.parametrize(
    "selection",
    [
        "not json",
        "[]",
        '["default", "job"]',
        '["default", "job", 5]',
        '["nope", "job", "abc"]',
        '["default", "", "abc"]',
        '["default", "j\\u0000b", "abc"]',
        '["default", "job", ""]',
        '["default", "job", "wrong-token"]',
    ],
)
def test_bad_force_release_selections_change_nothing(admin_client_, selection):
    from tests import proof

    lease = locks["default"].lock("job", 60_000)
    before = {alias: locks[alias].held_locks() for alias in ("default", "redis", "memory")}
    response = admin_client_.post(FORCE, {"selected": [selection], "confirm": "yes"}, follow=True)
    proof.record_bad_inputs("admin force release")
    assert response.status_code == 200
    page = response.content.decode()
    assert ("No locks were selected" in page or "Nothing released" in page
            or "Could not release" in page), page[-2000:]
    assert {alias: locks[alias].held_locks() for alias in ("default", "redis", "memory")} == before
    assert locks["default"].get_lock("job").token == lease.token
