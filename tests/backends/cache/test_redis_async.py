"""CacheLock on Redis, async callers: attempts, releases and extends awaited in the event
loop on a connection of the sync pool, no worker thread (docs/internals/redis.md, "Async
commands"), and what a cancellation mid-command leaves (nothing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.test import override_settings

from django_locks import locks
from django_locks.backends.cache_clients import redis_connections
from django_locks.exceptions import LockBackendError
from tests.helpers import DATABASE_ALIASES, own_cache, settled_tokens, wait_until


@contextmanager
def counting_threads(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, int]]:
    """Counts threads started and calls handed to the loop's executor meanwhile."""
    counts = {"threads": 0, "executor": 0}
    start, run_in_executor = threading.Thread.start, loop.run_in_executor

    def counted_start(thread: threading.Thread) -> None:
        counts["threads"] += 1
        start(thread)

    def counted_run_in_executor(*args: Any) -> Any:
        counts["executor"] += 1
        return run_in_executor(*args)

    threading.Thread.start = counted_start  # type: ignore[method-assign]
    loop.run_in_executor = counted_run_in_executor  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        threading.Thread.start = start  # type: ignore[method-assign]
        del loop.run_in_executor


async def _uncontended_calls(backend: Any, pairs: int = 50) -> None:
    for _ in range(pairs):
        async with backend.alock("job", 60_000) as lease:
            await lease.aextend(30_000)
    assert await backend.atry_acquire_lock(None, "job", 60_000)
    await backend.aextend_lock(None, "job", 30_000)
    await backend.arelease_lock(None, "job")
    if backend.supports_shared:
        lease = await backend.alock("job", 60_000, timeout=1_000, shared=True)
        await lease.arelease()


def test_async_calls_on_redis_start_no_thread(redis_alias):
    """50 uncontended ``async with alock`` pairs with an extend each, and the other async
    calls, hand nothing to a worker thread once the pool has a connection."""
    backend = locks[redis_alias]
    with backend.lock("job", 60_000):  # the pool's first connection is opened here
        pass

    async def scenario() -> dict[str, int]:
        with counting_threads(asyncio.get_running_loop()) as counts:
            await _uncontended_calls(backend)
        return counts

    assert asyncio.run(scenario()) == {"threads": 0, "executor": 0}
    assert backend.get_lock("job") is None
    assert len(backend._held_tokens) == 0


@pytest.mark.parametrize("alias", [*DATABASE_ALIASES, "locmem"])
def test_async_calls_elsewhere_still_run_in_worker_threads(alias):
    """The cache.add fallback, and DatabaseLock where the driver has no async API (SQLite,
    MariaDB, psycopg2), keep their attempts in worker threads (PostgreSQL on psycopg 3:
    tests/backends/database/test_database_async.py)."""
    backend = locks[alias]
    if getattr(backend, "native_async", False):
        assert backend.vendor == "postgresql"
        assert backend._driver_errors.__module__ == "psycopg"  # psycopg 3, not psycopg2
        return

    async def scenario() -> dict[str, int]:
        with counting_threads(asyncio.get_running_loop()) as counts:
            await _uncontended_calls(backend, pairs=5)
        return counts

    counts = asyncio.run(scenario())
    assert counts["executor"] > 0
    assert backend.get_lock("job") is None


def test_the_first_async_call_connects_in_a_worker(redis_alias, redis_server):
    """A pool without an idle connected connection would connect in the event loop: that
    command runs in a worker; the next ones run in the loop on the connection it opened."""
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]

        async def scenario() -> tuple[dict[str, int], dict[str, int]]:
            loop = asyncio.get_running_loop()
            with counting_threads(loop) as first:
                assert await backend.atry_acquire_lock(None, "job", 60_000)
            with counting_threads(loop) as then:
                await backend.arelease_lock(None, "job")
                assert await backend.atry_acquire_lock(None, "job", 60_000)
                await backend.arelease_lock(None, "job")
            return first, then

        first, then = asyncio.run(scenario())
        assert first["executor"] == 1 and then["executor"] == 0
        pool = backend.client.get_client().connection_pool
        assert not pool._in_use_connections


def test_async_scripts_reload_after_a_flush(redis_alias, redis_server):
    """A server that lost its scripts (SCRIPT FLUSH, a restart) gets them by EVAL on the
    event-loop path too (NOSCRIPT, then EVAL on the same kind of connection)."""
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        client = backend.client.get_client()
        with backend.lock("job", 60_000):
            pass
        client.script_flush()

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            with counting_threads(loop) as counts:
                async with backend.alock("job", 60_000) as lease:
                    await lease.aextend(30_000)
                    assert backend.get_lock("job").token == lease.token
            assert counts == {"threads": 0, "executor": 0}

        asyncio.run(scenario())
        assert backend.get_lock("job") is None
        assert not client.connection_pool._in_use_connections


@contextmanager
def stalled_replies(monkeypatch) -> Iterator[tuple[asyncio.Event, asyncio.Event, list[Any]]]:
    """Each command awaited in the loop is sent, then waits for ``proceed`` before its
    reply is awaited; ``sent`` is set meanwhile. The connections are listed, each with
    its socket then (a connection disconnected since has another, or none)."""
    sent, proceed, connections = asyncio.Event(), asyncio.Event(), []
    readable = redis_connections.readable

    async def stalled(conn: Any, timeout: float | None, **kwargs: Any) -> bool:
        connections.append((conn, conn._sock))
        sent.set()
        await proceed.wait()
        return await readable(conn, timeout, **kwargs)

    monkeypatch.setattr(redis_connections, "readable", stalled)
    yield sent, proceed, connections


def cancelled_once_sent(monkeypatch, call) -> list[Any]:
    """Runs ``call()`` (an awaitable) in a task, cancels it once its command is sent and
    before its reply is read, then lets the reply come; the cancellation must reach the
    caller. The connections the replies were stalled on (:func:`stalled_replies`)."""

    async def scenario() -> list[Any]:
        with stalled_replies(monkeypatch) as (sent, proceed, connections):
            task = asyncio.ensure_future(call())
            await sent.wait()
            task.cancel()
            await asyncio.sleep(0.01)
            proceed.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        return connections

    return asyncio.run(scenario())


@pytest.mark.parametrize("shared", [False, True])
def test_a_waiter_cancelled_mid_attempt_hears_its_answer_and_undoes_a_win(
    redis_alias, monkeypatch, shared
):
    """Cancelled after the server ran its attempt, before the reply was read: the reply is
    still read (the connection stays clean), the call learns that it won and releases the
    lock at once: nothing is left behind, nothing goes to the settler."""
    backend = locks[redis_alias]
    with backend.lock("job", 60_000):
        pass
    handed = settled_tokens(monkeypatch)

    connections = cancelled_once_sent(
        monkeypatch, lambda: backend.alock("job", 60_000, 2_000, shared=shared)
    )
    assert handed == []  # undone by the call itself
    assert backend.get_lock("job") is None
    assert len(backend._held_tokens) == 0
    assert all(conn._sock is sock for conn, sock in connections)  # still connected, clean
    pool = backend.client.get_client().connection_pool
    assert not pool._in_use_connections


def test_a_waiter_cancelled_twice_mid_attempt_is_settled_and_drops_its_connection(
    redis_alias, monkeypatch
):
    """Cancelled again while it reads the reply of its cancelled attempt: the reply is
    never read, the connection is disconnected (the next command must not read that
    reply), and the token, whose outcome is unknown, goes to the settler, which releases
    the lock it won."""
    backend = locks[redis_alias]
    with backend.lock("job", 60_000):
        pass
    handed = settled_tokens(monkeypatch)

    async def scenario() -> list[Any]:
        with stalled_replies(monkeypatch) as (sent, _, connections):
            task = asyncio.ensure_future(backend.aacquire_lock(None, "job", 60_000, 2_000))
            await sent.wait()
            task.cancel()
            while len(connections) < 2:  # reading the reply after the cancellation
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return connections

    connections = asyncio.run(scenario())
    assert len(handed) == 1
    assert len(backend._held_tokens) == 0
    assert all(conn._sock is not sock for conn, sock in connections)  # disconnected
    wait_until(lambda: backend.get_lock("job") is None, timeout=10,
               what="the settler releasing the lock the cancelled attempt won")
    with backend.lock("job", 60_000) as lease:  # the next command reads its own reply
        assert backend.get_lock("job").token == lease.token


def test_a_release_cancelled_mid_command_still_reads_its_reply(redis_alias, monkeypatch):
    backend = locks[redis_alias]
    lease = backend.lock("job", 60_000)

    connections = cancelled_once_sent(monkeypatch, lease.arelease)
    assert all(conn._sock is sock for conn, sock in connections)
    assert backend.get_lock("job") is None  # the server ran it
    backend._forget("job", lease.token)
    with backend.lock("job", 60_000) as again:
        assert backend.get_lock("job").token == again.token
    assert not backend.client.get_client().connection_pool._in_use_connections


def test_async_calls_on_a_stopped_server_are_backend_errors(redis_alias, redis_server):
    """On the event-loop path too (an idle connection of a server that went away): the
    failure is retried as the connection's retry says (in a worker), then raised as
    LockBackendError, bounded; once the server is back, async calls work again."""
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url)},
                           LOCKS={"own": {"BACKEND": "django_locks.backends.cache.CacheLock",
                                          "OPTIONS": {"cache": "own"}}}):
        backend = locks["own"]
        lease = backend.lock("job", 60_000)
        redis_server.stop()
        started = time.monotonic()

        async def calls() -> None:
            for call in (
                lambda: backend.atry_acquire_lock(None, "other", 1_000),
                lambda: lease.aextend(),
                lambda: backend.aextend_lock(None, "job", 1_000),
                lambda: lease.arelease(),
            ):
                with pytest.raises(LockBackendError):
                    await call()

        asyncio.run(calls())
        assert time.monotonic() - started < 30  # bounded: no hang
        redis_server.start()

        def answers() -> bool:
            try:
                return asyncio.run(backend.atry_acquire_lock(None, "probe", 1_000))
            except LockBackendError:
                return False

        wait_until(answers)
        backend.force_release("probe")
        # Every connection back in the pool: none leaked. The settler may still be releasing
        # the lease's uncertain token on one of them (its own thread): waited for, bounded.
        pool = backend.client.get_client().connection_pool
        wait_until(lambda: not pool._in_use_connections, what="every connection back in the pool")
