"""CacheLock on Redis and on the ``cache.add`` fallback (django_locks/backends/cache.py,
cache_clients/)."""
