"""list_locks(): one page of the held locks, on every backend that lists its locks."""

from __future__ import annotations

import pytest

from django_locks import locks
from django_locks.values import LockPage, encode_cursor
from tests.helpers import ALL_ALIASES

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit


#: Every alias but the one whose backend cannot list its locks (a CacheLock through
#: ``cache.add`` on LocMemCache: see test_a_backend_that_cannot_list_says_so).
LISTING_ALIASES = [alias for alias in ALL_ALIASES if alias != "locmem"]


@pytest.fixture(params=LISTING_ALIASES)
def listing_alias(request) -> str:
    return request.param


def listing_backend(alias: str):
    backend = locks[alias]
    assert backend.supports_enumeration, alias
    return backend


def test_a_backend_that_cannot_list_says_so():
    backend = locks["locmem"]
    assert not backend.supports_enumeration
    with pytest.raises(NotImplementedError):
        backend.list_locks()


def all_pages(backend, **arguments) -> list[LockPage]:
    pages, cursor = [], None
    for _ in range(1000):  # a bound: a cursor that never ends fails the test
        page = backend.list_locks(cursor=cursor, **arguments)
        pages.append(page)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("the listing never ended")


def test_pages_list_every_held_key_once_with_every_holder(listing_alias):
    backend = listing_backend(listing_alias)
    keys = {f"job:{i:02d}" for i in range(23)}
    for key in keys:
        backend.acquire_lock(f"cid-{key}", key, 60_000, 0)
    if backend.supports_shared:  # a key of several holders stays on one page
        backend.lock("sem", 60_000, limit=3)
        backend.lock("sem", 60_000, limit=3)
        keys.add("sem")
    pages = all_pages(backend, limit=5)
    listed = [info for page in pages for info in page.holders]
    page_keys = [{info.key for info in page.holders} for page in pages]
    assert all(len(found) <= 5 for found in page_keys)
    assert sum(len(found) for found in page_keys) == len(keys)  # no key on two pages
    assert set().union(*page_keys) == keys
    assert sorted((i.key, i.token) for i in listed) == sorted((i.key, i.token) for i in backend.held_locks())
    assert all(info.remaining_ms is not None and 0 < info.remaining_ms <= 60_000 for info in listed)
    assert {info.correlation_id for info in listed if info.key == "job:07"} == {"cid-job:07"}
    for page in pages:
        assert page.total in (None, len(keys))
    assert len(pages) >= 5  # 23 or 24 keys, 5 a page: never one big page


def test_a_prefix_lists_only_its_keys_whatever_characters_it_holds(listing_alias):
    backend = listing_backend(listing_alias)
    special = ["a%b_1", "a%b_2", "a%bx", "a*b?[c]{d}", "a*b?[c]{e}", "a!b", "a\\b", "a", "ab", "b%b_1"]
    for key in special:
        backend.acquire_lock(None, key, 60_000, 0)
    cases = {
        "a%b_": {"a%b_1", "a%b_2"},  # no LIKE wildcards: % and _ are themselves
        "a*b?[c]{": {"a*b?[c]{d}", "a*b?[c]{e}"},  # nor glob ones
        "a!": {"a!b"}, "a\\": {"a\\b"}, "ab": {"ab"}, "zzz": set(),
        "a": set(special) - {"b%b_1"},
    }
    for prefix, expected in cases.items():
        pages = all_pages(backend, prefix=prefix, limit=2)
        found = [info.key for page in pages for info in page.holders]
        assert sorted(found) == sorted(expected), prefix
        assert all(page.total in (None, len(expected)) for page in pages)


def test_an_empty_listing_is_one_page_without_a_cursor(listing_alias):
    backend = listing_backend(listing_alias)
    page = backend.list_locks()
    assert page.holders == [] and page.next_cursor is None and page.total in (None, 0)


def test_released_and_expired_locks_are_not_listed(listing_alias):
    backend = listing_backend(listing_alias)
    backend.acquire_lock(None, "kept", 60_000, 0)
    backend.acquire_lock(None, "released", 60_000, 0)
    backend.release_lock(None, "released")
    backend.acquire_lock(None, "short", 1, 0)
    import time

    time.sleep(0.05)
    page = backend.list_locks()
    assert [info.key for info in page.holders] == ["kept"]
    assert page.total in (None, 1)


@pytest.mark.parametrize(("arguments", "error", "named"), [
    ({"limit": 0}, ValueError, "limit"),
    ({"limit": 10_001}, ValueError, "limit"),
    ({"limit": True}, TypeError, "limit"),
    ({"limit": "5"}, TypeError, "limit"),
    ({"prefix": None}, TypeError, "prefix"),
    ({"prefix": "a\nb"}, ValueError, "prefix"),
    ({"prefix": "x" * 256}, ValueError, "prefix"),
    ({"cursor": "not a cursor!"}, ValueError, "cursor"),
    ({"cursor": ""}, ValueError, "cursor"),
    ({"cursor": encode_cursor("no such kind", 1)}, ValueError, "cursor"),
    ({"cursor": 5}, TypeError, "cursor"),
])
def test_bad_arguments_are_refused_before_the_backend_is_asked(
    listing_alias, monkeypatch, arguments, error, named
):
    backend = listing_backend(listing_alias)
    asked = []
    monkeypatch.setattr(type(backend), "_held", lambda self: asked.append(1) or [])
    with pytest.raises(error, match=named):
        backend.list_locks(**arguments)
    assert not asked


def test_held_locks_still_lists_everything(listing_alias):
    backend = listing_backend(listing_alias)
    for i in range(150):
        backend.acquire_lock(None, f"k{i}", 60_000, 0)
    assert len(backend.held_locks()) == 150
    first = backend.list_locks()
    assert len({info.key for info in first.holders}) == 100 and first.next_cursor is not None
    assert first.total in (None, 150)
