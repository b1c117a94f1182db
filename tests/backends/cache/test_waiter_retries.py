"""A waiter whose Redis fails while it waits retries until its own deadline, on a Redis
server of the suite's own that is stopped and started again (the one on 6379 is never
touched). The same retry carries waiters through a cluster or Sentinel failover
(test_cluster, test_sentinel)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from django.test import override_settings

from django_locks import locks
from django_locks.exceptions import LockBackendError
from django_locks.values import EXCLUSIVE
from tests import proof
from tests.helpers import own_cache, wait_until


@pytest.mark.parametrize(("redis_alias", "mode"), [("django_redis", "sync"), ("redis", "async")])
def test_waiters_retry_through_a_restart_until_their_deadline(redis_alias, redis_server, mode, caplog):
    """The server stops while two waiters wait: the one whose deadline comes first ends
    with LockBackendError at its deadline (a backend error, never a timeout); the other
    gets the lock after the restart (which forgot the holder: no persistence)."""
    with override_settings(CACHES={"own": own_cache(redis_alias, redis_server.url, 1.0)}, LOCKS={
        "own": {"BACKEND": "django_locks.backends.cache.CacheLock", "OPTIONS": {"cache": "own"}},
    }):
        holder = locks["own"].lock("job", 60_000)
        outcomes: dict[str, object] = {}

        def wait(name: str, timeout_ms: int) -> None:
            started = time.monotonic()
            try:
                if mode == "sync":
                    lease = locks["own"].lock("job", 60_000, timeout=timeout_ms)
                else:
                    async def acquire():
                        return await locks["own"].alock("job", 60_000, timeout=timeout_ms)

                    lease = asyncio.run(acquire())
                outcomes[name] = lease
            except Exception as e:
                outcomes[name] = e
            outcomes[name + " after"] = time.monotonic() - started

        waiters = [threading.Thread(target=wait, args=("short", 2_500)),
                   threading.Thread(target=wait, args=("long", 30_000))]
        for thread in waiters:
            thread.start()
        # Both past their first attempt, which found the lock held ("waiting up to").
        wait_until(lambda: sum("waiting up to" in r.getMessage() for r in caplog.records) == 2)
        redis_server.stop()
        proof.record_fault("redis stopped under waiters")
        waiters[0].join(10)
        assert isinstance(outcomes["short"], LockBackendError), outcomes["short"]
        assert 2.0 < outcomes["short after"] < 5
        assert waiters[1].is_alive()  # still retrying
        redis_server.start()
        waiters[1].join(20)
        lease = outcomes["long"]
        assert not isinstance(lease, Exception), lease
        assert lease.fencing_token > holder.fencing_token  # the clock floor
        lease.release()


def test_a_retried_attempt_that_already_won_gets_its_acquisition_back(redis_alias):
    """An attempt whose reply was lost (a failover, a socket timeout) is retried with the
    same owner token: it gets the acquisition it made, not "held by someone"."""
    backend = locks[redis_alias]
    keys = backend._keys("job")
    first = backend.client.try_acquire(keys, "job", "a" * 32, 60_000, None, EXCLUSIVE, True)
    again = backend.client.try_acquire(keys, "job", "a" * 32, 60_000, None, EXCLUSIVE, True)
    assert again.info == first.info
    other = backend.client.try_acquire(keys, "job", "b" * 32, 60_000, None, EXCLUSIVE, True)
    assert other.info is None and other.holder_remaining_ms > 0
    assert backend.force_release("job")
