"""CacheLock on Redis specifics: keys, wake-ups, a server that stops and restarts."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from django.conf import settings
from django.test import override_settings
from redis.crc import key_slot

from django_locks import locks
from django_locks.exceptions import LockBackendError, LockTimeoutError
from tests.helpers import free_port, own_cache, wait_until
from tests.servers import RedisServer


def raw(alias):
    return locks[alias].client.get_client()


def test_keys_use_the_cache_key_function_and_share_a_slot(redis_alias):
    backend = locks[redis_alias]
    backend.acquire_lock(None, "job", 60_000, 0)
    prefix = settings.CACHES[redis_alias]["KEY_PREFIX"]
    names = sorted(n.decode() for n in raw(redis_alias).scan_iter(match=f"{prefix}:*"))
    assert f"{prefix}:1:django_locks:{{job}}:lock" in names
    assert f"{prefix}:1:django_locks:{{job}}:fence" in names
    backend.release_lock(None, "job")
    slots = {key_slot(f"{prefix}:1:django_locks:{{job}}:{suffix}".encode())
             for suffix in ("lock", "fence", "wake")}
    assert len(slots) == 1


def test_counter_keys_stay_out_of_held_locks(redis_alias):
    backend = locks[redis_alias]
    with backend.lock("a}b{c", 60_000):
        assert [info.key for info in backend.held_locks()] == ["a}b{c"]
    prefix = settings.CACHES[redis_alias]["KEY_PREFIX"]
    leftovers = [n.decode() for n in raw(redis_alias).scan_iter(match=f"{prefix}:*")]
    assert any(name.endswith(":fence") for name in leftovers)  # the counter lives on
    assert backend.held_locks() == []


def test_waiter_blocks_on_the_wake_up_list_and_is_woken_by_release(redis_alias):
    backend = locks[redis_alias]
    lease = backend.lock("job", 60_000)
    acquired = threading.Event()

    def waiter():
        locks[redis_alias].acquire_lock(None, "job", 60_000, 30_000)
        acquired.set()

    thread = threading.Thread(target=waiter)
    thread.start()

    def blocked_in_blpop():
        return any(client.get("cmd") == "blpop" for client in raw(redis_alias).client_list())

    wait_until(blocked_in_blpop)
    assert not acquired.is_set()
    lease.release()
    assert acquired.wait(10)
    thread.join(10)


def test_blocking_wait_stays_below_the_socket_timeout(redis_alias):
    url = settings.CACHES[redis_alias]["LOCATION"]
    caches = {**settings.CACHES, "short": {**own_cache(redis_alias, url, socket_timeout=0.6),
                                           "KEY_PREFIX": "django_locks_tests_short"}}
    with override_settings(CACHES=caches, LOCKS={
        "short": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "short"}},
    }):
        backend = locks["short"]
        lease = backend.lock("job", 60_000)
        with pytest.raises(LockTimeoutError):  # not a socket timeout
            backend.acquire_lock(None, "job", 60_000, 1_500)
        lease.release()


def test_unreachable_redis_is_a_backend_error(redis_alias):
    url = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(CACHES={"gone": own_cache(redis_alias, url)}, LOCKS={
        "gone": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "gone"}},
    }):
        backend = locks["gone"]
        for call in (
            lambda: backend.try_acquire_lock(None, "job", 1000),
            lambda: backend.acquire_lock(None, "job", 1000, 500),
            lambda: backend.lock("job", 1000),
            lambda: backend.release_lock(None, "job", owner="0" * 32),
            lambda: backend.force_release("job"),
            lambda: backend.get_lock("job"),
            lambda: backend.held_locks(),
        ):
            with pytest.raises(LockBackendError):
                call()


def test_redis_stopped_and_restarted(redis_alias, redis_server):
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)}, LOCKS={
        "own": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "own"}},
    }):
        backend = locks["own"]
        lease = backend.lock("job", 60_000)
        before = lease.fencing_token
        redis_server.stop()
        started = time.monotonic()
        for call in (
            lambda: backend.try_acquire_lock(None, "other", 1000),
            lambda: backend.acquire_lock(None, "other", 1000, 2000),
            lease.extend,
            lambda: backend.get_lock("job"),
        ):
            with pytest.raises(LockBackendError):
                call()
        assert time.monotonic() - started < 30  # bounded: no hang
        redis_server.start()  # same port, no persistence: the held lock is gone
        wait_until(lambda: _answers(backend))
        with backend.lock("job", 60_000) as again:
            assert again.fencing_token > before  # the clock floor keeps tokens rising


def _answers(backend) -> bool:
    try:
        backend.get_lock("probe")
        return True
    except LockBackendError:
        return False


def test_an_acquisition_that_timed_out_but_won_is_released(redis_alias, redis_server):
    """SIGSTOP the server: the attempt fails on the socket timeout, but the server runs it
    after SIGCONT. That token must not keep the key for its ttl, held by nobody."""
    import os
    import signal

    from tests import proof

    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url, socket_timeout=1.0)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        with backend.lock("warm-up", 1000):  # connected, and the scripts are loaded (EVALSHA)
            pass
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LockBackendError):
                backend.try_acquire_lock("cid-stopped", "job", 60_000)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        proof.record_fault("redis SIGSTOP during an acquisition")
        # The server ran the script once it could; the settler releases that token.
        wait_until(lambda: _answers(backend) and backend.get_lock("job") is None, timeout=10)
        with backend.lock("job", 60_000) as lease:  # and the key is free for a real holder
            assert backend.get_lock("job").token == lease.token


def test_a_waiter_failing_on_a_stopped_server_gives_up_at_once(redis_alias, redis_server):
    """A waiter whose server stops answering raises LockBackendError after one socket
    timeout, not two: giving up on a backend error, it leaves its writer mark to lapse
    (WRITER_MARK_MS) rather than ask the server that just timed out to remove it."""
    import os
    import signal

    socket_timeout = 2.0
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url, socket_timeout)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        holder = backend.lock("job", 60_000)
        observer = redis.Redis.from_url(redis_server.url)
        outcome: dict = {}

        def wait() -> None:
            try:
                backend.acquire_lock(None, "job", 60_000, 500)
            except BaseException as e:
                outcome["error"] = e
            outcome["ended"] = time.monotonic()

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: any(n.endswith(b":mark") for n in observer.keys("*")))
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            thread.join(30)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert isinstance(outcome.get("error"), LockBackendError), outcome
        # One socket timeout (plus the rest of the call's 0.5 s), not a second one spent
        # unmarking: 2 x socket_timeout before.
        assert outcome["ended"] - stopped < 0.5 + 1.5 * socket_timeout
        wait_until(lambda: _answers(backend))
        holder.release()


def test_waiters_share_the_connection_pool(redis_alias, redis_server):
    """Three waves of 50 threads waiting on one key take about one connection per waiter,
    on both clients (Django's RedisCache used to open a pool per thread: 100, then 148)."""
    import redis

    from tests import proof

    waiters = 50
    observer = redis.Redis.from_url(redis_server.url)
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        holder = locks["own"].lock("job", 60_000)
        timed_out = []

        def wait() -> None:
            try:
                locks["own"].acquire_lock(None, "job", 60_000, 2_000)
            except LockTimeoutError:
                timed_out.append(1)

        peak = 0
        for _wave in range(3):  # new threads each time, as a threaded server's would be
            threads = [threading.Thread(target=wait) for _ in range(waiters)]
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, observer.info("clients")["connected_clients"])
                time.sleep(0.01)
            for thread in threads:
                thread.join()
        holder.release()
    proof.record_fault("three waves of 50 waiters on one key")
    print(f"peak connections with {waiters} waiters through {redis_alias}: {peak}")
    assert len(timed_out) == 3 * waiters
    # Each waiter blocks on one connection; +1 the holder's, +1 the observer, a few spare.
    assert peak <= waiters + 6, peak


def _blocked_in_blpop(observer) -> int:
    """Clients blocked in a blocking command right now (flag b) whose command is BLPOP."""
    return sum(1 for client in observer.client_list()
               if "b" in client.get("flags", "") and client.get("cmd") == "blpop")


def test_async_waiters_block_on_the_wake_up_list(redis_alias, redis_server):
    """Async waiters wait in BLPOP through redis.asyncio (not asyncio.sleep polling), are
    woken by the release, and a cancelled one leaves nothing behind."""
    import asyncio

    import redis

    observer = redis.Redis.from_url(redis_server.url)
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        holder = backend.lock("job", 60_000)
        keys_before = set(observer.keys("*"))

        async def take_and_release() -> bool:
            lease = await backend.alock("job", 60_000, timeout=30_000)
            await lease.arelease()
            return True

        async def scenario() -> tuple[int, int]:
            waiters = [asyncio.ensure_future(take_and_release()) for _ in range(5)]
            deadline = time.monotonic() + 10
            while _blocked_in_blpop(observer) < 5:  # all five blocked on the server
                assert time.monotonic() < deadline, "async waiters never blocked in BLPOP"
                await asyncio.sleep(0.01)
            waiters[0].cancel()  # cancelled while blocked
            await asyncio.gather(waiters[0], return_exceptions=True)
            assert waiters[0].cancelled()
            await asyncio.get_running_loop().run_in_executor(None, holder.release)
            # Each release wakes the next waiter: all four get the lock in turn.
            won = sum(await asyncio.gather(*waiters[1:]))
            return won, _blocked_in_blpop(observer)

        won, still_blocked = asyncio.run(scenario())
        assert won == 4 and still_blocked == 0
        assert backend.get_lock("job") is None
        # Nothing left behind but the fencing counter (and a wake-up that expires on its own).
        left = {k for k in set(observer.keys("*")) - keys_before if not k.endswith(b":wake")}
        assert all(k.endswith(b":fence") for k in left), left


def test_async_waiters_connect_like_the_cache(redis_alias, tmp_path, caplog):
    """The asyncio client async waiters block on takes the cache's database number,
    password and socket timeouts (redis-py 5+ asyncio connections take most settings in a
    base class: copying only what Connection.__init__ names dropped them, and waiters
    blocked on database 0 or failed to authenticate, then slept between retries)."""
    import asyncio
    import logging

    import redis

    from django_locks.backends.cache_clients.redis import async_client_like

    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        twin = async_client_like(redis.ConnectionPool.from_url(url, socket_timeout=1.5,
                                                               socket_connect_timeout=0.5))
        settings_of = twin.connection_pool.connection_kwargs
        assert (settings_of["db"], settings_of["password"]) == (3, "s3cret")
        assert (settings_of["socket_timeout"], settings_of["socket_connect_timeout"]) == (1.5, 0.5)
        observer = redis.Redis(port=server.port, password="s3cret")
        with override_settings(CACHES={"own": own_cache(redis_alias, url)},
                               LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                              "OPTIONS": {"cache": "own"}}}):
            backend = locks["own"]
            holder = backend.lock("job", 60_000)

            def blocked_on_database_3() -> bool:
                return any(client.get("cmd") == "blpop" and int(client["db"]) == 3
                           for client in observer.client_list())

            async def scenario() -> None:
                waiter = asyncio.ensure_future(backend.alock("job", 60_000, timeout=30_000))
                deadline = time.monotonic() + 10
                while not blocked_on_database_3():
                    assert not waiter.done() and time.monotonic() < deadline, \
                        "the async waiter never blocked on database 3's wake-up list"
                    await asyncio.sleep(0.01)
                await asyncio.get_running_loop().run_in_executor(None, holder.release)
                lease = await asyncio.wait_for(waiter, 10)
                await lease.arelease()

            with caplog.at_level(logging.WARNING, logger="django_locks"):
                asyncio.run(scenario())
            assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    finally:
        server.stop()


@pytest.mark.parametrize("limit", [1, 2], ids=["exclusive", "semaphore"])
def test_a_cancelled_async_waiter_passes_on_the_wake_up_it_may_have_taken(redis_alias, redis_server, limit):
    """Cancelled while its BLPOP was in flight, an async waiter may have popped the
    release's wake-up: one goes back while another waiter could now proceed (the key
    free, or a semaphore with room), none while the key is full."""
    import asyncio

    import redis

    observer = redis.Redis.from_url(redis_server.url)
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]

        def wake_lists() -> list[bytes]:
            return [name for name in observer.keys("*") if name.endswith(b":wake")]

        async def cancelled_waiter(before_cancel=lambda: None) -> None:
            waiter = asyncio.ensure_future(backend.alock("job", 60_000, timeout=30_000, limit=limit))
            deadline = time.monotonic() + 10
            while _blocked_in_blpop(observer) < 1:
                assert time.monotonic() < deadline, "the async waiter never blocked in BLPOP"
                await asyncio.sleep(0.01)
            before_cancel()
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            assert waiter.cancelled()

        holders = [backend.lock("job", 60_000, limit=limit) for _ in range(limit)]
        asyncio.run(cancelled_waiter())  # cancelled while the key is full: nothing pushed
        assert wake_lists() == []
        assert sorted(h.token for h in backend.get_holders("job")) == sorted(h.token for h in holders)
        (lock_hash,) = [n for n in observer.keys("*") if n.endswith(b":lock")]

        def holder_gone_without_wake_up() -> None:  # as if the waiter had popped it
            if limit == 1:
                observer.delete(lock_hash)
            else:
                observer.hdel(lock_hash, f"h:{holders[0].token}")

        # Room again (a holder gone without a wake-up, as when the release's was popped
        # by the waiter being cancelled): the cancelled waiter puts one back.
        asyncio.run(cancelled_waiter(holder_gone_without_wake_up))
        assert len(backend.get_holders("job")) == limit - 1
        assert len(wake_lists()) == 1  # passed on, for the next waiter
        assert 0 < observer.pttl(wake_lists()[0]) <= 5_000


def test_scripts_run_on_the_pool_of_a_plain_client_and_reload_after_a_flush(redis_alias, redis_server):
    """The hot scripts skip redis-py's command layers on a plain client's pool (one
    connection, given back), and a server that lost its scripts (SCRIPT FLUSH, a restart)
    gets them again by EVAL on that path too."""
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        client = backend.client.get_client()
        assert backend.client._pool is not None
        with backend.lock("job", 60_000) as lease:
            assert backend.get_lock("job").token == lease.token
            lease.extend(30_000)
        client.script_flush()
        with backend.lock("job", 60_000) as again:
            assert again.fencing_token > lease.fencing_token
            assert backend.get_lock("job").token == again.token
        assert backend.force_release("job") is False
        pool = client.connection_pool
        assert not pool._in_use_connections  # every connection went back to the pool


def test_wrapped_or_clustered_clients_keep_their_own_command_path():
    """Tracing instrumentation wraps ``Redis.execute_command``; a cluster client has no
    single pool: scripts go through the client's own ``evalsha`` for those."""
    import functools

    import redis
    from redis.cluster import RedisCluster

    from django_locks.backends.cache_clients.redis import _direct_pool

    assert _direct_pool(redis.Redis()) is not None

    class Traced(redis.Redis):
        @functools.wraps(redis.Redis.execute_command)
        def execute_command(self, *args, **options):
            return super().execute_command(*args, **options)

    class Wrapped(redis.Redis):
        pass

    Wrapped.execute_command = functools.wraps(redis.Redis.execute_command)(
        lambda self, *args, **options: redis.Redis.execute_command(self, *args, **options))
    assert _direct_pool(Traced()) is None
    assert _direct_pool(Wrapped()) is None
    assert _direct_pool(redis.Redis(single_connection_client=False)) is not None
    assert _direct_pool(RedisCluster.__new__(RedisCluster)) is None


def test_a_listing_page_takes_a_bounded_number_of_scan_steps(redis_alias, monkeypatch):
    """list_locks never walks the whole keyspace for one page: a prefix that matches
    nothing gives an empty page and a cursor after PAGE_SCAN_STEPS steps; the pages that
    follow end, and list every match once."""
    from django_locks.backends.cache_clients.redis import RedisLockClient

    backend = locks[redis_alias]
    for i in range(60):
        backend.acquire_lock(None, f"other:{i}", 60_000, 0)
    for i in range(3):
        backend.acquire_lock(None, f"wanted:{i}", 60_000, 0)
    monkeypatch.setattr(RedisLockClient, "PAGE_SCAN_COUNT", 5)
    monkeypatch.setattr(RedisLockClient, "PAGE_SCAN_STEPS", 2)
    client = backend.client.get_client()
    steps = []
    real_scan = client.scan
    monkeypatch.setattr(client, "scan", lambda *a, **k: steps.append(1) or real_scan(*a, **k))
    page = backend.list_locks(prefix="nothing:")
    assert page.holders == [] and page.next_cursor is not None and len(steps) == 2
    found, cursor = [], None
    for _ in range(1000):  # a bound: the whole keyspace in steps of 5
        page = backend.list_locks(prefix="wanted:", cursor=cursor, limit=2)
        assert page.total is None and len({i.key for i in page.holders}) <= 2
        found += [info.key for info in page.holders]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(found) == ["wanted:0", "wanted:1", "wanted:2"]


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_woken_waiter_holds_the_lock_before_the_releaser_can_take_it_back(redis_alias,
                                                                            redis_server, how):
    """A waiter's wait carries its next attempt, sent behind its BLPOP on the same
    connection: the server runs it as the release wakes the waiter, so the releaser's next
    attempt, one round trip after its release, finds the lock held by the waiter (before,
    the releaser took it back most of the time, and a handoff took two round trips)."""
    import asyncio

    observer = redis.Redis.from_url(redis_server.url)
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        for _ in range(5):
            lease = backend.lock("job", 60_000)
            won: list[str] = []

            def wait(won: list[str] = won) -> None:
                if how == "sync":
                    won.append(locks["own"].lock("job", 60_000, timeout=30_000).token)
                else:
                    async def acquire():
                        return await locks["own"].alock("job", 60_000, timeout=30_000)

                    won.append(asyncio.run(acquire()).token)

            waiter = threading.Thread(target=wait)
            waiter.start()
            wait_until(lambda: _blocked_in_blpop(observer) == 1, what="the waiter blocked in BLPOP")
            lease.release()
            assert not backend.try_acquire_lock(None, "job", 60_000)  # the releaser, at once
            holder = backend.get_lock("job")
            assert holder is not None and holder.token != lease.token
            waiter.join(10)
            assert won == [holder.token]
            backend.release_lock(None, "job", owner=holder.token)
        assert _blocked_in_blpop(observer) == 0
