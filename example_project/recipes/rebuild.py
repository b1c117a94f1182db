# Readers use the catalog while nothing rebuilds it; a rebuild waits for the readers that
# hold it, and readers that come meanwhile wait behind the rebuild (it is not starved).
from django.core.cache import cache

from django_locks import locks


def read_catalog() -> list[str]:
    with locks["default"].lock("catalog", ttl=30_000, timeout=10_000, shared=True):
        return cache.get("catalog:items", [])


def rebuild_catalog(items: list[str]) -> None:
    with locks["default"].lock("catalog", ttl=120_000, timeout=60_000):
        cache.delete("catalog:items")  # no reader ever sees the catalog missing
        cache.set("catalog:items", sorted(items), None)
