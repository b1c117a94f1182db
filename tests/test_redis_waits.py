"""CacheLock waits on Redis: what they cost (connections, descriptors) and when they end.

Each test runs on a redis-server of its own (other processes share the suite's Redis), so
every client on it, and every BLPOP it counts, is this test's.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import redis
from asgiref.sync import async_to_sync
from django.test import override_settings

from django_locks import locks
from tests.test_redis import CACHE_BACKENDS, own_cache

LOCKS = {"own": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "own"}}}


def named_cache(redis_alias: str, url: str, name: str) -> dict:
    """A cache on ``url`` whose connections say ``name`` (CLIENT SETNAME)."""
    cache = own_cache(redis_alias, url)
    if CACHE_BACKENDS[redis_alias][0].startswith("django_redis"):
        cache["OPTIONS"]["CONNECTION_POOL_KWARGS"] = {"client_name": name}
    else:
        cache["OPTIONS"]["client_name"] = name
    return cache


def clients_named(observer: redis.Redis, name: str) -> int:
    return sum(1 for client in observer.client_list() if client.get("name") == name)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def blpop_calls(observer: redis.Redis) -> int:
    return int(observer.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0))


def test_async_waits_in_fresh_event_loops_leave_no_connection_behind(redis_alias, redis_server):
    """1,000 async acquisitions that wait (BLPOP on the wake-up list until the holder's
    10 ms expire), each in an event loop of its own (``asyncio.run`` and
    ``async_to_sync``, as a sync view calling async code does): the process's connections
    to Redis and its open descriptors stay flat (an asyncio client kept per loop and
    dropped unclosed with it left one connection and one descriptor per call)."""
    name = f"locks-{uuid.uuid4().hex[:12]}"
    observer = redis.Redis.from_url(redis_server.url)
    calls = 1_000
    with override_settings(CACHES={"own": named_cache(redis_alias, redis_server.url, name)}, LOCKS=LOCKS):
        backend = locks["own"]

        async def wait_for_expiry() -> None:
            lease = await backend.alock("job", 60_000, timeout=5_000)
            await lease.arelease()

        def one(i: int) -> None:
            backend.lock("job", 10)  # expires in 10 ms: the waiter blocks until then
            if i % 2:
                async_to_sync(wait_for_expiry)()
            else:
                asyncio.run(wait_for_expiry())

        for i in range(10):  # warm: the pool's connections, the scripts
            one(i)
        clients, descriptors = clients_named(observer, name), open_descriptors()
        blpops = blpop_calls(observer)
        started = time.monotonic()
        for i in range(calls):
            one(i)
        elapsed = time.monotonic() - started
        clients_after, descriptors_after = clients_named(observer, name), open_descriptors()
        waited = blpop_calls(observer) - blpops
    print(f"{redis_alias}: {calls} async waits in fresh loops ({elapsed:.1f} s, {waited} BLPOPs): "
          f"clients {clients} -> {clients_after}, descriptors {descriptors} -> {descriptors_after}")
    assert waited >= calls * 0.9  # they did wait on the wake-up list
    assert clients_after <= clients + 10
    assert descriptors_after <= descriptors + 10
