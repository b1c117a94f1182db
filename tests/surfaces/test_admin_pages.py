"""What the admin's lock pages say: headers, fencing tokens, banners, an expired holder, and
the links of an unreleased first version gone."""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from django_locks import locks
from tests.helpers import wait_until

LOCMEM_LOCK = {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "locmem"}}
LIST = "/admin/django_locks/lock/"


@pytest.fixture
def admin_client_():
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(User.objects.get(username="root"))
    yield client
    User.objects.all().delete()


def test_admin_headers_are_never_hyphenated_and_one_fencing_format(admin_client_):
    lease = locks["default"].lock("job", 60_000, correlation_id="cid-1")
    listing = admin_client_.get(LIST).content.decode()
    assert "&shy;" not in listing and "\u00ad" not in listing
    assert "hyphens: manual" in listing
    assert re.search(r"<span>Correlation id</span>", listing) and "<span>Time remaining</span>" in listing
    token = str(lease.fencing_token)
    assert len(token) > 6  # a token long enough that grouping or cutting would show
    detail = admin_client_.get(f"{LIST}default_3Ajob/").content.decode()
    holder = admin_client_.get(f"{LIST}default_3Ajob/{lease.token}/").content.decode()
    for page in (listing, detail, holder):
        assert f">{token}<" in page
        assert "\u2009" not in page and f"{lease.fencing_token:,}" not in page
        assert f"…{token[-6:-3]}" not in page


def test_admin_banners_have_no_backticks(admin_client_, unmigrated_database):
    setting = {"default": {"BACKEND": "django_locks.backends.database.DatabaseLock",
                           "OPTIONS": {"using": unmigrated_database}}, "locmem": LOCMEM_LOCK}
    with override_settings(LOCKS=setting):
        page = admin_client_.get(LIST).content.decode()
        detail = admin_client_.get(f"{LIST}default_3Ajob/").content.decode()
    notices = re.search(r'<ul class="messagelist locks-notices">.*?</ul>', page, re.S).group(0)
    assert "`" not in notices and "`" not in detail
    assert "<code>manage.py locks show KEY --backend locmem</code>" in notices
    assert ("the django_locks tables are missing: run <code>python manage.py migrate --database fresh</code>"
            in notices)
    assert "the django_locks tables are missing" in detail


def test_an_expired_holders_page_says_it_expired(admin_client_):
    backend = locks["default"]
    backend.acquire_lock("dead-worker", "nightly", 100, 0)
    wait_until(lambda: backend.get_lock("nightly") is None)
    [expired] = backend.expired_locks()
    holder = html.unescape(admin_client_.get(f"{LIST}default_3Anightly/{expired.token}/").content.decode())
    assert "every holder (0)" not in holder
    assert "This holder's lock expired without a release" in holder
    assert "The lock has no live holders" in holder
    lock_page = html.unescape(admin_client_.get(f"{LIST}default_3Anightly/").content.decode())
    assert "No live holders: the lock expired without a release" in lock_page


def test_links_of_the_unreleased_first_version_are_gone(admin_client_):
    locks["default"].lock("job", 60_000)
    assert admin_client_.get(f"{LIST}default/job/", follow=True).status_code == 404
    assert admin_client_.get(f"{LIST}default/job/change/").status_code == 404
    assert admin_client_.get(f"{LIST}default_3Ajob/").status_code == 200
    # The admin log's links (the change URL of "alias:key" and of "alias") still arrive.
    assert admin_client_.get(f"{LIST}default_3Ajob/change/", follow=True).status_code == 200
    purge_log = admin_client_.get(f"{LIST}default/change/")
    assert purge_log.status_code == 302 and purge_log["Location"].endswith("?alias=default")
