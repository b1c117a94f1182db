"""The admin's lock pages, through Django's test client, on the real backends."""

from __future__ import annotations

import html
import importlib
import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
from django.apps import apps
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.utils.timezone import localtime

from django_locks import locks
from django_locks.admin import detail_url, holder_url
from django_locks.models import Lock
from tests.helpers import wait_until

LIST = "/admin/django_locks/lock/"
FORCE = "/admin/django_locks/lock/force-release/"
PURGE = "/admin/django_locks/lock/purge/"
NEXT_PAGE = "next page \u203a"  # the changelist's link to an alias's next page
SELECTED = "_selected_action"  # django.contrib.admin.helpers.ACTION_CHECKBOX_NAME

#: Keys a detail link must reach: dot segments, characters with a meaning in URLs, and
#: the longest key (255 characters, mixing them all).
TRICKY_KEYS = [".", "..", "a/b", "a%2Fb", "a?b", "a#b", "a b", "../x", "a:b", "_2E", "ключ/ü",
               ("k/.?#%2F: " * 26)[:255]]


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
    page = response.content.decode()
    return [(html.unescape(k), html.unescape(a))
            for k, a in re.findall(r'data-key="([^"]*)" data-alias="([^"]*)"', page)]


class Page(HTMLParser):
    """The links (by row and by text) and forms of a page, as a browser would see them."""

    def __init__(self, response, url: str) -> None:
        super().__init__()
        self.url = urljoin("http://testserver", url)
        self.row_links: dict[tuple[str, str], str] = {}
        self.links: list[tuple[str, str]] = []
        self.forms: list[dict] = []
        self._row: tuple[str, str] | None = None
        self._href: str | None = None
        self._text = ""
        self.feed(response.content.decode())

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "tr":
            self._row = (attrs["data-key"], attrs["data-alias"]) if "data-key" in attrs else None
        elif tag == "a" and "href" in attrs:
            self._href, self._text = attrs["href"], ""
            if self._row and self._row not in self.row_links:
                self.row_links[self._row] = attrs["href"]
        elif tag == "form":
            self.forms.append({"action": urljoin(self.url, attrs.get("action") or self.url),
                               "method": attrs.get("method", "get"), "inputs": []})
        elif tag in ("input", "button", "select") and self.forms:
            self.forms[-1]["inputs"].append(attrs)

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._text.strip(), self._href))
            self._href = None

    def link(self, text: str) -> str:
        return next(href for label, href in self.links if label == text)


def submit(client: Client, form: dict):
    """Submit a form with its hidden fields, following the redirect, as a browser would."""
    data: dict[str, list[str]] = {}
    for field in form["inputs"]:
        if field.get("type") == "hidden":
            data.setdefault(field["name"], []).append(field.get("value", ""))
    url = urlsplit(form["action"])
    return client.post(url.path + (f"?{url.query}" if url.query else ""), data, follow=True)


def path_of(page: Page, href: str) -> str:
    """What a browser requests for a link: dot segments resolved, the fragment dropped."""
    url = urlsplit(urljoin(page.url, href))
    return url.path + (f"?{url.query}" if url.query else "")


def confirmation_form(response) -> dict:
    page = Page(response, response.wsgi_request.get_full_path())
    return next(form for form in page.forms if any(f.get("name") == "post" for f in form["inputs"]))


def force_release(client: Client, url: str, selected: list[str], **fields: str):
    """The list's action form: the force_release action on the selected holders."""
    return client.post(url, {"action": "force_release", "index": "0", SELECTED: selected, **fields})


def selection(response) -> str:
    return html.unescape(re.search(rf'name="{SELECTED}" value="([^"]+)"', response.content.decode()).group(1))


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
    assert re.search(r"locmem</strong> \(CacheLock on cache &#x27;locmem&#x27;, LocMemCache\):\s*"
                     r"not listed: cannot list its locks", page)
    assert re.search(r"unreachable</strong> \(CacheLock on cache &#x27;unreachable&#x27;, RedisCache\):\s*"
                     r"not listed: backend error", page)


def test_list_shows_every_field_of_a_holder(admin_client_):
    lease = locks["default"].lock("job", 60_000, correlation_id="cid-1")
    page = admin_client_.get(LIST).content.decode()
    row = re.search(r'<tr [^>]*data-key="job".*?</tr>', page, re.S).group(0)
    info = locks["default"].get_lock("job")
    assert lease.token[:8] in row and f'title="{lease.token}"' in row
    assert "cid-1" in row
    assert f">{info.fencing_token}</td>" in row  # the whole integer, as everywhere
    for moment in (info.acquired_at, info.expires_at):  # shown in the current time zone
        assert localtime(moment).strftime("%H:%M:%S") in row
        assert f'datetime="{localtime(moment).isoformat()}"' in row
    assert re.search(r"\d+ min \d\d s|\d+\.\d s", row)


def test_app_index_links_to_the_lock_list(admin_client_):
    response = admin_client_.get("/admin/django_locks/")
    assert response.status_code == 200 and LIST in response.content.decode()


def test_filter_by_alias_and_search_by_key(admin_client_):
    locks["default"].acquire_lock(None, "invoice:1", 60_000, 0)
    locks["default"].acquire_lock(None, "report:1", 60_000, 0)
    locks["redis"].acquire_lock(None, "invoice:2", 60_000, 0)
    assert sorted(rows(admin_client_.get(LIST, {"alias": "redis"}))) == [("invoice:2", "redis")]
    assert sorted(rows(admin_client_.get(LIST, {"q": "invoice"}))) == [
        ("invoice:1", "default"), ("invoice:2", "redis")]
    assert rows(admin_client_.get(LIST, {"q": "invoice", "alias": "default"})) == [("invoice:1", "default")]
    # By the start of the key, as the backends list them: not any part, not another case.
    assert rows(admin_client_.get(LIST, {"q": "voice"})) == []
    assert rows(admin_client_.get(LIST, {"q": "INVOICE"})) == []


@pytest.mark.parametrize("alias", ["default", "redis"])
def test_the_list_shows_one_page_per_alias_with_a_link_to_the_next(admin_client_, alias, monkeypatch):
    from django_locks.admin import LockAdmin

    monkeypatch.setattr(LockAdmin, "list_per_page", 4)
    backend = locks[alias]
    keys = {f"user:{i}" for i in range(10)}
    for key in keys:
        backend.acquire_lock(None, key, 60_000, 0)
    backend.acquire_lock(None, "other", 60_000, 0)
    url, seen = f"{LIST}?alias={alias}&q=user:", []
    for _ in range(10):  # a bound: three pages are expected
        response = admin_client_.get(url)
        assert response.status_code == 200
        page_rows = rows(response)
        assert 0 < len(page_rows) <= 4 and {a for _, a in page_rows} == {alias}
        seen += [key for key, _ in page_rows]
        page = Page(response, url)
        if not any(label == NEXT_PAGE for label, _ in page.links):
            break
        url = urljoin(LIST, page.link(NEXT_PAGE))
        assert "cursor=" in url and "q=user" in url
        assert any(label == "first page" for label, _ in Page(admin_client_.get(url), url).links)
    assert sorted(seen) == sorted(keys)  # every key once, none of another prefix
    first = admin_client_.get(LIST, {"alias": alias}).content.decode()
    if alias == "default":  # DatabaseLock counts the held keys
        assert "4 locks on this page of 11 held" in first
    # Every alias on one page: each its share of list_per_page.
    everything = rows(admin_client_.get(LIST))
    assert len([key for key, a in everything if a == alias]) == max(1, 4 // len(list(locks)))


def test_a_cursor_that_is_not_one_shows_the_first_page(admin_client_):
    locks["default"].acquire_lock(None, "a", 60_000, 0)
    response = admin_client_.get(LIST, {"alias": "default", "cursor": "garbage"})
    assert response.status_code == 200 and rows(response) == [("a", "default")]
    assert "Showing the first page: cursor" in response.content.decode()


def test_filter_sort_and_search_links_keep_the_other_parameters(admin_client_):
    locks["default"].acquire_lock(None, "invoice:1", 60_000, 0)
    url = f"{LIST}?q=inv&o=-expires&alias=default"
    response = admin_client_.get(url)
    page = Page(response, url)

    def params(href: str) -> dict[str, list[str]]:
        return parse_qs(urlsplit(href).query)

    assert params(page.link("Held")) == {"alias": ["default"], "o": ["-expires"], "q": ["inv"],
                                         "status": ["held"]}
    assert params(page.link("redis")) == {"alias": ["redis"], "o": ["-expires"], "q": ["inv"]}
    assert params(page.link("Expires at")) == {"alias": ["default"], "q": ["inv"]}  # back to ascending
    search = next(form for form in page.forms if form["method"] == "get")
    hidden = {f["name"]: f["value"] for f in search["inputs"] if f.get("type") == "hidden"}
    assert hidden == {"alias": "default", "o": "-expires"}
    assert params(Page(admin_client_.get(LIST), LIST).link("Expires at")) == {"o": ["-expires"]}


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
    # The list's purge button posts the alias to the purge URL.
    listing = admin_client_.get(LIST).content.decode()
    assert re.search(rf'formaction="{PURGE}" name="alias" value="default"', listing)
    confirm = admin_client_.post(PURGE, {"alias": "default"})
    assert confirm.status_code == 200 and "stale" in confirm.content.decode()
    assert "dead-worker" in confirm.content.decode()
    assert re.search(r"&rsaquo; Purge expired locks\s*</div>", confirm.content.decode())  # breadcrumbs
    assert Lock.objects.get(key="stale").token is not None  # nothing done before confirming
    done = submit(admin_client_, confirmation_form(confirm))
    assert "Purged 1 expired" in done.content.decode()
    assert rows(admin_client_.get(LIST, {"status": "expired"})) == []
    assert backend.get_lock("alive") is not None
    entry = LogEntry.objects.get()
    assert entry.object_repr == "default: expired locks" and "Purged 1" in entry.change_message
    # The admin log links the purge to the alias's list.
    followed = admin_client_.get(entry.get_admin_url(), follow=True)
    assert followed.wsgi_request.get_full_path() == f"{LIST}?alias=default"


def test_detail_view_shows_the_full_token(admin_client_):
    lease = locks["redis"].lock("a/b:c d?", 60_000, correlation_id="cid-7")
    listing = admin_client_.get(LIST)
    url = Page(listing, LIST).row_links[("a/b:c d?", "redis")]
    detail = admin_client_.get(url)
    assert detail.status_code == 200
    page = detail.content.decode()
    assert lease.token in page and "cid-7" in page and str(lease.fencing_token) in page
    assert admin_client_.get(detail_url("nope", "x")).status_code == 404
    assert admin_client_.get(f"{LIST}no-alias-here/").status_code == 404


def test_detail_of_a_lock_not_held(admin_client_):
    response = admin_client_.get(detail_url("default", "gone"))
    assert response.status_code == 200
    assert "Lock gone is not held on default" in response.content.decode()
    assert 'name="_selected_action"' not in response.content.decode()


@pytest.mark.parametrize("key", TRICKY_KEYS, ids=lambda key: key if len(key) < 20 else "255 characters")
def test_every_key_reaches_its_detail_page_and_force_release(admin_client_, key):
    assert len(key) <= 255
    lease = locks["default"].lock(key, 60_000, correlation_id="cid-tricky")
    listing = Page(admin_client_.get(LIST), LIST)
    href = listing.row_links[(key, "default")]
    url = urlsplit(urljoin(listing.url, href))
    assert not url.query and not url.fragment
    assert not {".", ".."} & set(url.path.split("/")), url.path
    detail = admin_client_.get(path_of(listing, href))
    assert detail.status_code == 200
    page = detail.content.decode()
    assert lease.token in page and html.escape(key) in page and "cid-tricky" in page
    # The detail page's button, then the confirmation page.
    release = next(form for form in Page(detail, url.path).forms
                   if any(f.get("value") == "Force release…" for f in form["inputs"]))
    assert urlsplit(release["action"]).path == FORCE
    confirm = submit(admin_client_, release)
    assert "Force-release these locks?" in confirm.content.decode()
    assert html.escape(key) in confirm.content.decode()
    assert locks["default"].get_lock(key) is not None  # not before confirming
    done = submit(admin_client_, confirmation_form(confirm))
    assert done.wsgi_request.path == LIST
    assert f"Released {html.escape(repr(key))} on default." in done.content.decode()
    assert locks["default"].get_lock(key) is None
    # The admin log links to the same detail page.
    entry = LogEntry.objects.get()
    followed = admin_client_.get(entry.get_admin_url(), follow=True)
    assert followed.wsgi_request.path == unquote(url.path)


def test_force_release_with_confirmation_and_admin_log(admin_client_):
    lease = locks["mysql" if "mysql" in locks.settings else "default"].lock("job", 60_000)
    alias = lease.alias
    listing = admin_client_.get(LIST)
    assert '<option value="force_release">Force release selected locks</option>' in listing.content.decode()
    confirm = force_release(admin_client_, LIST, [selection(listing)])
    assert confirm.status_code == 200 and "Force-release these locks?" in confirm.content.decode()
    assert re.search(r"&rsaquo; Force release\s*</div>", confirm.content.decode())  # breadcrumbs
    assert locks[alias].get_lock("job") is not None  # not before confirming
    form = confirmation_form(confirm)
    assert {f["name"]: f["value"] for f in form["inputs"] if f.get("type") == "hidden" and
            f["name"] != "csrfmiddlewaretoken"} == {"action": "force_release", SELECTED: selection(listing),
                                                    "post": "yes"}
    done = submit(admin_client_, form)
    assert "Released &#x27;job&#x27;" in done.content.decode()
    assert locks[alias].get_lock("job") is None
    entry = LogEntry.objects.get()
    assert entry.user.username == "root" and lease.token in entry.change_message
    assert entry.action_flag == CHANGE and entry.object_id == f"{alias}:job"
    assert entry.content_type == ContentType.objects.get_for_model(Lock)


def test_force_release_keeps_the_lists_filters(admin_client_):
    locks["default"].lock("job", 60_000)
    url = f"{LIST}?alias=default&q=jo"
    listing = admin_client_.get(url)
    confirm = force_release(admin_client_, url, [selection(listing)])
    done = submit(admin_client_, confirmation_form(confirm))
    assert done.wsgi_request.get_full_path() == url
    assert locks["default"].get_lock("job") is None


def test_several_locks_released_at_once(admin_client_):
    for alias, key in [("default", "a"), ("redis", "b"), ("memory", "c")]:
        locks[alias].lock(key, 60_000)
    listing = admin_client_.get(LIST).content.decode()
    selected = [html.unescape(v) for v in re.findall(rf'name="{SELECTED}" value="([^"]+)"', listing)]
    assert len(selected) == 3
    confirm = force_release(admin_client_, LIST, selected)
    assert confirm.content.decode().count("holder token") == 3
    submit(admin_client_, confirmation_form(confirm))
    assert [locks[alias].get_lock(key) for alias, key in [("default", "a"), ("redis", "b"), ("memory", "c")]
            ] == [None, None, None]
    assert LogEntry.objects.count() == 3


def test_an_action_without_a_selection_changes_nothing(admin_client_):
    lease = locks["default"].lock("job", 60_000)
    done = admin_client_.post(LIST, {"action": "force_release", "index": "0"}, follow=True)
    assert "Items must be selected" in done.content.decode()
    selected = json.dumps(["default", "job", lease.token])
    no_action = admin_client_.post(LIST, {"action": "", "index": "0", SELECTED: [selected]}, follow=True)
    assert "No action selected" in no_action.content.decode()
    assert locks["default"].get_lock("job").token == lease.token


def test_force_release_of_a_holder_that_changed_hands_releases_nothing(admin_client_):
    backend = locks["redis"]
    first = backend.lock("job", 60_000)
    listing = admin_client_.get(LIST)
    confirm = force_release(admin_client_, LIST, [selection(listing)])
    first.release()
    second = backend.lock("job", 60_000)  # a new holder since the page was shown
    done = submit(admin_client_, confirmation_form(confirm))
    assert "changed hands" in done.content.decode()
    assert backend.get_lock("job").token == second.token
    assert not LogEntry.objects.exists()


def test_anonymous_users_go_to_the_login_page():
    response = Client().get(LIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Client().post(FORCE, {SELECTED: ["[]"], "post": "yes"}).status_code == 302
    assert force_release(Client(), LIST, ["[]"], post="yes").status_code == 302


def test_staff_without_permission_see_nothing():
    client = user("staff")
    lease = locks["default"].lock("job", 60_000)
    selected = json.dumps(["default", "job", lease.token])
    assert client.get(LIST).status_code == 403
    assert client.get(detail_url("default", "job")).status_code == 403
    assert "django_locks" not in client.get("/admin/").content.decode()
    assert client.post(FORCE, {SELECTED: [selected], "post": "yes"}).status_code == 403
    assert force_release(client, LIST, [selected], post="yes").status_code == 403
    assert locks["default"].get_lock("job").token == lease.token


def test_view_permission_only_cannot_force_release():
    client = user("viewer", "view_lock")
    lease = locks["default"].lock("job", 60_000)
    response = client.get(LIST)
    assert response.status_code == 200 and rows(response) == [("job", "default")]
    page = response.content.decode()
    assert f'name="{SELECTED}"' not in page and 'name="action"' not in page and "Purge" not in page
    assert "Force release" not in client.get(detail_url("default", "job")).content.decode()
    selected = json.dumps(["default", "job", lease.token])
    assert client.post(FORCE, {SELECTED: [selected], "post": "yes"}).status_code == 403
    assert client.post(PURGE, {"alias": "default", "post": "yes"}).status_code == 403
    # The list ignores an action it does not offer.
    client.post(LIST, {"action": "force_release", "index": "0", SELECTED: [selected], "post": "yes"})
    assert locks["default"].get_lock("job").token == lease.token


def test_view_and_force_release_permissions():
    client = user("operator", "view_lock", "force_release")
    lease = locks["default"].lock("job", 60_000)
    selected = json.dumps(["default", "job", lease.token])
    assert f'name="{SELECTED}"' in client.get(LIST).content.decode()
    client.post(LIST, {"action": "force_release", SELECTED: [selected], "post": "yes"})
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
    assert admin_client_.get(f"{LIST}add/").status_code in (403, 404)
    locks["default"].lock("job", 60_000)
    assert admin_client_.post(f"{LIST}default_3Ajob/delete/", {"post": "yes"}).status_code == 403
    assert locks["default"].get_lock("job") is not None


@pytest.mark.parametrize("url", [FORCE, LIST])
@pytest.mark.parametrize(
    "selected",
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
def test_bad_force_release_selections_change_nothing(admin_client_, url, selected):
    from tests import proof

    lease = locks["default"].lock("job", 60_000)
    before = {alias: locks[alias].held_locks() for alias in ("default", "redis", "memory")}
    response = admin_client_.post(url, {"action": "force_release", SELECTED: [selected], "post": "yes"},
                                  follow=True)
    proof.record_bad_inputs("admin force release")
    assert response.status_code == 200
    page = response.content.decode()
    assert ("No locks were selected" in page or "Nothing released" in page
            or "Could not release" in page), page[-2000:]
    assert {alias: locks[alias].held_locks() for alias in ("default", "redis", "memory")} == before
    assert locks["default"].get_lock("job").token == lease.token


# ----------------------------------------------------------------------------- shared and limit

KEY_PAGE_FORCE = "/admin/django_locks/lock/force-release-key/"


@pytest.fixture(params=["memory", "default", "redis", "django_redis", "postgres", "mysql"])
def mode_alias(request) -> str:
    """An alias whose backend takes shared locks and semaphores (skipped where the run,
    such as the unit tier, does not configure it)."""
    if request.param not in list(locks):
        pytest.skip(f"LOCKS[{request.param!r}] is not configured in this run")
    return request.param


def row_cells(response) -> dict[str, tuple[str, str, str]]:
    """token -> (alias, key, mode) of every row of the list."""
    page = response.content.decode()
    found = {}
    for row in re.findall(r'<tr [^>]*data-key=.*?</tr>', page, re.S):
        key, alias = re.search(r'data-key="([^"]*)" data-alias="([^"]*)"', row).groups()
        mode = re.search(r'<span class="mode">(.*?)</span>', row).group(1)
        token = re.search(r'<code title="([0-9a-f]{32})">', row).group(1)
        found[token] = (html.unescape(alias), html.unescape(key), html.unescape(mode).replace("\xad", ""))
    return found


def holder_forms(response) -> list[dict]:
    page = Page(response, response.wsgi_request.get_full_path())
    return [form for form in page.forms if urlsplit(form["action"]).path == FORCE]


def test_one_row_per_holder_with_its_mode(admin_client_, mode_alias):
    backend = locks[mode_alias]
    renders = [backend.lock("pdf", 60_000, limit=3, correlation_id=f"render-{i}") for i in range(2)]
    readers = [backend.lock("catalog", 60_000, shared=True) for _ in range(3)]
    writer = backend.lock("nightly", 60_000)
    cells = row_cells(admin_client_.get(LIST, {"alias": mode_alias}))
    assert cells == {
        **{lease.token: (mode_alias, "pdf", "2 of 3") for lease in renders},
        **{lease.token: (mode_alias, "catalog", "shared") for lease in readers},
        writer.token: (mode_alias, "nightly", "exclusive"),
    }
    assert "6 holders of 3 locks" in admin_client_.get(LIST, {"alias": mode_alias}).content.decode()
    renders[0].release()
    assert row_cells(admin_client_.get(LIST, {"q": "pdf"}))[renders[1].token][2] == "1 of 3"
    assert "1 lock ·" in admin_client_.get(LIST, {"q": "pdf"}).content.decode()


def test_force_release_of_one_holder_leaves_the_other_holders(admin_client_, mode_alias):
    backend = locks[mode_alias]
    holders = [backend.lock("imports", 60_000, limit=3) for _ in range(3)]
    target = holders[1]
    selected = json.dumps([mode_alias, "imports", target.token])
    confirm = force_release(admin_client_, LIST, [selected])
    assert confirm.status_code == 200 and "Force-release these locks?" in confirm.content.decode()
    listed = re.findall(r"holder token <code>([0-9a-f]{32})</code>, ([^,]+),", confirm.content.decode())
    assert listed == [(target.token, "3 of 3")]  # exactly the holder selected, with its mode
    assert len(backend.get_holders("imports")) == 3  # not before confirming
    done = submit(admin_client_, confirmation_form(confirm))
    assert f"Released holder {target.token[:8]}… (3 of 3) of &#x27;imports&#x27; on {mode_alias}" in (
        done.content.decode())
    assert {info.token for info in backend.get_holders("imports")} == {holders[0].token, holders[2].token}
    entry = LogEntry.objects.get()
    assert entry.object_id == f"{mode_alias}:imports" and target.token in entry.change_message
    assert "other holders were left alone" in entry.change_message
    assert holders[0].token not in entry.change_message and holders[2].token not in entry.change_message


def test_force_release_of_a_reader_leaves_the_other_readers(admin_client_, mode_alias):
    backend = locks[mode_alias]
    readers = [backend.lock("catalog", 60_000, shared=True) for _ in range(2)]
    done = force_release(admin_client_, LIST, [json.dumps([mode_alias, "catalog", readers[0].token])],
                         post="yes")
    assert done.status_code == 302
    assert [info.token for info in backend.get_holders("catalog")] == [readers[1].token]
    # A holder released meanwhile: nothing else of the key is touched.
    again = admin_client_.post(LIST, {"action": "force_release", "index": "0", "post": "yes",
                                      SELECTED: [json.dumps([mode_alias, "catalog", readers[0].token])]},
                               follow=True)
    assert "Nothing released" in again.content.decode()
    assert [info.token for info in backend.get_holders("catalog")] == [readers[1].token]


def test_the_lock_page_lists_every_holder_and_each_holder_has_its_own_page(admin_client_, mode_alias):
    backend = locks[mode_alias]
    holders = [backend.lock("a/b:c?", 60_000, limit=2, correlation_id=f"cid-{i}") for i in range(2)]
    listing = admin_client_.get(LIST, {"alias": mode_alias})
    lock_page = admin_client_.get(Page(listing, LIST).row_links[("a/b:c?", mode_alias)])
    page = lock_page.content.decode()
    assert all(lease.token in page for lease in holders) and "cid-0" in page and "cid-1" in page
    assert page.count("Force release this holder…") == 2 and "Force release every holder…" in page
    selections = [field["value"] for form in holder_forms(lock_page) for field in form["inputs"]
                  if field.get("name") == SELECTED]
    assert sorted(selections) == sorted(json.dumps([mode_alias, "a/b:c?", lease.token]) for lease in holders)
    for lease, other in (holders, holders[::-1]):
        # The holder's link, from its row and from the lock's page.
        url = holder_url(mode_alias, "a/b:c?", lease.token)
        assert html.escape(url) in page and html.escape(url) in listing.content.decode()
        assert url == f"{detail_url(mode_alias, 'a/b:c?')}{lease.token}/"  # the lock's, then the token
        one = admin_client_.get(url)
        assert one.status_code == 200
        assert lease.token in one.content.decode() and other.token not in one.content.decode()
        assert "2 of 2" in one.content.decode() and "every holder (2)" in one.content.decode()
        assert "Force release every holder…" not in one.content.decode()
        assert len(holder_forms(one)) == 1
    # The holder page's own button releases that holder only.
    confirm = submit(admin_client_, holder_forms(admin_client_.get(holder_url(mode_alias, "a/b:c?",
                                                                              holders[0].token)))[0])
    done = submit(admin_client_, confirmation_form(confirm))
    assert done.wsgi_request.path == LIST
    assert [info.token for info in backend.get_holders("a/b:c?")] == [holders[1].token]
    gone = admin_client_.get(holder_url(mode_alias, "a/b:c?", holders[0].token))
    assert gone.status_code == 200
    assert f"Holder {holders[0].token} of lock a/b:c? is not held" in html.unescape(gone.content.decode())
    assert "every holder" not in gone.content.decode() and "holders now (1)" in gone.content.decode()


def test_force_release_of_the_whole_key(admin_client_, mode_alias):
    backend = locks[mode_alias]
    readers = [backend.lock("catalog", 60_000, shared=True) for _ in range(3)]
    bystander = backend.lock("other", 60_000, shared=True)
    lock_page = admin_client_.get(detail_url(mode_alias, "catalog"))
    form = next(form for form in Page(lock_page, detail_url(mode_alias, "catalog")).forms
                if any(f.get("value") == "Force release every holder…" for f in form["inputs"]))
    assert urlsplit(form["action"]).path == KEY_PAGE_FORCE
    confirm = submit(admin_client_, form)
    text = html.unescape(confirm.content.decode())
    assert "Force-release every holder of catalog on" in text and "Held now by 3 holders" in text
    assert "arrived after this page was shown" in text
    assert all(lease.token in text for lease in readers)
    assert re.search(r"&rsaquo; Force release every holder\s*</div>", confirm.content.decode())
    assert len(backend.get_holders("catalog")) == 3  # not before confirming
    late = backend.lock("catalog", 60_000, shared=True)  # arrives after the page was shown
    done = submit(admin_client_, confirmation_form(confirm))
    assert f"Released every holder of &#x27;catalog&#x27; on {mode_alias}." in done.content.decode()
    assert backend.get_holders("catalog") == []
    assert [info.token for info in backend.get_holders("other")] == [bystander.token]
    entry = LogEntry.objects.get()
    assert entry.object_id == f"{mode_alias}:catalog" and "every holder" in entry.change_message
    assert all(lease.token in entry.change_message for lease in [*readers, late])
    nothing = admin_client_.post(KEY_PAGE_FORCE, {"alias": mode_alias, "key": "catalog", "post": "yes"},
                                 follow=True)
    assert "Nothing released" in nothing.content.decode()


def test_a_single_exclusive_holder_is_not_offered_the_whole_key_release(admin_client_):
    locks["memory"].lock("job", 60_000)
    page = admin_client_.get(detail_url("memory", "job")).content.decode()
    assert "Force release…" in page and "every holder" not in page and "this holder" not in page


def test_whole_key_release_needs_the_permission():
    reader = locks["memory"].lock("catalog", 60_000, shared=True)
    data = {"alias": "memory", "key": "catalog", "post": "yes"}
    assert Client().post(KEY_PAGE_FORCE, data).status_code == 302  # to the login page
    viewer = user("viewer", "view_lock")
    assert "every holder" not in viewer.get(detail_url("memory", "catalog")).content.decode()
    assert viewer.post(KEY_PAGE_FORCE, data).status_code == 403
    operator = user("operator", "view_lock", "force_release")
    assert operator.get(KEY_PAGE_FORCE).status_code == 302  # a GET does nothing
    assert operator.post(KEY_PAGE_FORCE, {**data, "alias": "nope"}).status_code == 404
    assert locks["memory"].get_holders("catalog")[0].token == reader.token
    assert operator.post(KEY_PAGE_FORCE, data).status_code == 302
    assert locks["memory"].get_holders("catalog") == []


def test_holder_urls_are_unambiguous(admin_client_):
    hexkey = "0123456789abcdef" * 2  # a key that looks like an owner token
    lease = locks["memory"].lock(hexkey, 60_000)
    assert admin_client_.get(detail_url("memory", hexkey)).status_code == 200
    holder = admin_client_.get(holder_url("memory", hexkey, lease.token))
    assert holder.status_code == 200 and lease.token in holder.content.decode()
    # "<alias>/<key>/" is no lock's URL, even for a key that looks like a token.
    assert admin_client_.get(f"{LIST}memory/{hexkey}/", follow=True).status_code == 404
    # The admin's own object URLs are not holder pages.
    assert admin_client_.get(f"{LIST}memory_3Ajob/history/").status_code != 500


def test_remaining_time_is_the_backend_measured_one(admin_client_, monkeypatch):
    """Not this server's clock: a holder whose expires_at (by a skewed backend clock) is
    long past shows the remaining time the backend measured."""
    from django_locks.backends.memory import MemoryLock
    from django_locks.values import LockInfo

    skewed = LockInfo("k", "a" * 32, 1, None, 0, 1_000_000, remaining_ms=7_200, limit=3)
    monkeypatch.setattr(MemoryLock, "_held", lambda self: [skewed])
    page = admin_client_.get(LIST, {"alias": "memory"}).content.decode()
    row = re.search(r'<tr [^>]*data-key="k".*?</tr>', page, re.S).group(0)
    assert ">7.2 s<" in row and "1 of 3" in row


def test_a_holder_gone_while_confirming_is_reported_and_the_others_untouched(admin_client_, monkeypatch):
    from django_locks.backends.memory import MemoryLock

    readers = [locks["memory"].lock("catalog", 60_000, shared=True) for _ in range(2)]
    monkeypatch.setattr(MemoryLock, "_release", lambda self, key, token: False)  # gone meanwhile
    done = admin_client_.post(LIST, {"action": "force_release", "index": "0", "post": "yes",
                                     SELECTED: [json.dumps(["memory", "catalog", readers[0].token])]},
                              follow=True)
    page = html.unescape(done.content.decode())
    assert f"holder {readers[0].token[:8]}… of 'catalog' was released or expired" in page
    assert len(locks["memory"].get_holders("catalog")) == 2 and not LogEntry.objects.exists()
