"""CacheLock waits on Redis: what they cost (connections, descriptors) and when they end.

Each test runs on a redis-server of its own (other processes share the suite's Redis), so
every client on it, and every BLPOP it counts, is this test's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from asgiref.sync import async_to_sync
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import LockTimeoutError
from tests.helpers import CACHE_BACKENDS, own_cache
from tests.servers import RedisServer

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


#: The server's ACL: CLIENT UNBLOCK allowed, or refused (a waiter then disconnects).
UNBLOCK_ACLS = {
    "unblock": [],
    "unblock refused": ["--user", "default", "on", "nopass", "~*", "&*", "+@all", "-client|unblock"],
}


@pytest.fixture(params=list(UNBLOCK_ACLS))
def slow_ticking_redis(request, tmp_path) -> Iterator[RedisServer]:
    """A redis-server with ``hz 1``: it times blocking commands out once a second."""
    server = RedisServer(tmp_path, "--hz", "1", *UNBLOCK_ACLS[request.param])
    server.start()
    yield server
    server.stop()


def test_waits_end_on_time_whatever_the_servers_hz(redis_alias, slow_ticking_redis):
    """A wait ends within about 10 ms of its timeout, sync and async (in a fresh event loop
    each time, and several in one), on a server that times BLPOP out only at its next
    tick (``hz 1``: a 20 ms wait used to end up to a second late, ~100 ms at the default
    hz 10). The waiter ends its BLPOP with CLIENT UNBLOCK and keeps its connection; where
    the server refuses that, it disconnects. Either way the connections stay clean (no
    BLPOP reply left pending), no client stays blocked on the server, and a release still
    wakes a waiter at once."""
    observer = redis.Redis.from_url(slow_ticking_redis.url)
    unblock_refused = "-client|unblock" in slow_ticking_redis.options
    with override_settings(CACHES={"own": own_cache(redis_alias, slow_ticking_redis.url)}, LOCKS=LOCKS):
        backend = locks["own"]
        holder = backend.lock("job", 60_000)

        def sync_wait(timeout_ms: int) -> float:
            started = time.monotonic()
            with pytest.raises(LockTimeoutError):
                backend.acquire_lock(None, "job", 60_000, timeout_ms)
            return time.monotonic() - started - timeout_ms / 1000

        async def async_wait(timeout_ms: int) -> float:
            started = time.monotonic()
            with pytest.raises(LockTimeoutError):
                await backend.aacquire_lock(None, "job", 60_000, timeout_ms)
            return time.monotonic() - started - timeout_ms / 1000

        async def several(timeout_ms: int) -> list[float]:
            return [await async_wait(timeout_ms) for _ in range(3)]

        sync_wait(20)  # warm: connections, scripts
        blpops = blpop_calls(observer)
        connections = int(observer.info("stats")["total_connections_received"])
        overruns: dict[str, list[float]] = {"sync": [], "async, fresh loops": [], "async, one loop": []}
        for timeout_ms in (20, 250, 20, 250, 20):
            overruns["sync"].append(sync_wait(timeout_ms))
            overruns["async, fresh loops"].append(asyncio.run(async_wait(timeout_ms)))
            overruns["async, one loop"].extend(asyncio.run(several(timeout_ms)))
        waited = blpop_calls(observer) - blpops
        connected = int(observer.info("stats")["total_connections_received"]) - connections
        for how, values in overruns.items():
            print(f"{redis_alias}, {how}: overrun median {statistics.median(values) * 1000:.1f} ms, "
                  f"max {max(values) * 1000:.1f} ms")
        print(f"{redis_alias}: {waited} BLPOPs, {connected} new connections")
        # Each blocked on the server (one whose first attempt, under load, left it under a
        # millisecond to wait sleeps instead).
        assert waited >= 0.8 * sum(map(len, overruns.values()))
        if unblock_refused:  # each blocked wait's connection was dropped (the last one's
            assert connected >= waited - 1  # new connection comes with the next command)
        else:  # kept: only a fresh loop's worker may open one more
            assert connected <= 5
        # About 10 ms (the median); a wait that a loaded machine delayed still ends far
        # before the server's tick (hz 1: a second; they ended 750-975 ms late before).
        # Where the server refuses CLIENT UNBLOCK, an async wait ends by dropping its
        # connection and passing its wake-up on from a worker thread: slower (a CI
        # rehearsal measured a median of 17-19 ms and outliers up to 274 ms; see the note
        # of that round), still well before the tick.
        every = [value for values in overruns.values() for value in values]
        median_bound, max_bound = (0.05, 0.5) if unblock_refused else (0.015, 0.3)
        assert statistics.median(every) < median_bound, overruns
        assert max(every) < max_bound, overruns
        assert not any("b" in client.get("flags", "") for client in observer.client_list())
        # The connections went back clean: replies still match their commands.
        cache = backend.cache
        for i in range(20):
            cache.set(f"k{i}", i)
            assert cache.get(f"k{i}") == i
        assert backend.get_lock("job").token == holder.token

        # A release still wakes a blocked waiter at once (not at the server's tick).
        def release_once_blocked() -> None:
            deadline = time.monotonic() + 10
            while not any(client.get("cmd") == "blpop" for client in observer.client_list()):
                assert time.monotonic() < deadline, "the waiter never blocked"
                time.sleep(0.002)
            released.append(time.monotonic())
            holder.release()

        released: list[float] = []
        releaser = threading.Thread(target=release_once_blocked)
        releaser.start()
        lease = backend.lock("job", 60_000, timeout=5_000)
        woken_after = time.monotonic() - released[0]
        releaser.join()
        lease.release()
        print(f"{redis_alias}: woken {woken_after * 1000:.1f} ms after the release")
        assert woken_after < 0.1
