"""CacheLock on a Redis Sentinel set (the suite's own: a master, a replica, three sentinels
with quorum 2), through django-redis's Sentinel client ("sentinel", configured as the README
says) and through ``SentinelRedisCache`` on Django's RedisCache path ("sentinel_django")."""

from __future__ import annotations

import time

import pytest
from django.core.cache import caches

from django_locks import locks
from django_locks.exceptions import LockBackendError, LockNotHeldError
from tests import proof
from tests.helpers import wait_until
from tests.servers import SentinelServers
from tests.topology import SENTINEL_ALIASES, Waiter, contend, measure_outage, measured


@pytest.fixture(params=SENTINEL_ALIASES)
def sentinel_alias(request, sentinel_set) -> str:
    return request.param


def blocked_in_blpop(node) -> bool:
    with node.client() as client:
        return any(entry.get("cmd") == "blpop" for entry in client.client_list())


def replicated(master) -> bool:
    """The replica acknowledged everything the master wrote."""
    info = master.info("replication")
    return info.get("slave0", {}).get("offset") == info["master_repl_offset"]


def fail_over(sentinel: SentinelServers, old_master_port: int) -> int:
    """Wait until the sentinels name another master: its port."""
    return wait_until(lambda: (port := sentinel.master_port()) != old_master_port and port,
                      timeout=30, interval=0.05)


def restore(sentinel: SentinelServers, node, master) -> None:
    """Start a killed node again as a replica of the current master (what the sentinels
    would tell it, sooner) and wait until the set is whole."""
    node.start()
    with node.client() as client:
        client.replicaof("127.0.0.1", master.port)
    sentinel.wait_healthy()


def test_locks_waits_and_the_cache_through_sentinel(sentinel_set, sentinel_alias):
    backend = locks[sentinel_alias]
    lease = backend.lock("job", 60_000, correlation_id="holder")
    assert [info.key for info in backend.held_locks()] == ["job"]
    waiter = Waiter(sentinel_alias, "job", timeout_ms=20_000)
    waiter.start()
    wait_until(lambda: blocked_in_blpop(sentinel_set.master()))  # on the master sentinels name
    lease.release()
    waiter.join(10)
    assert waiter.error is None and waiter.lease.fencing_token > lease.fencing_token
    waiter.lease.release()
    cache = caches[sentinel_alias]
    cache.set_many({"a": 1, "b": 2}, 60)
    # django-redis's SentinelClient reads cache values from a replica: eventually there.
    wait_until(lambda: cache.get_many(["a", "b"]) == {"a": 1, "b": 2})
    assert cache.incr("a") == 2 and cache.delete("b")


def test_processes_contend_through_sentinel(sentinel_set, tmp_path):
    contend("sentinel", tmp_path, processes=4, iterations=15)


def test_the_master_killed_with_locks_held(sentinel_set):
    """SIGKILL the master holding locks, with a waiter blocked on it: calls fail with
    LockBackendError until the sentinels promote the replica; the locks it had
    acknowledged are there; the waiter retries meanwhile and gets the lock when it is
    released, within its own timeout."""
    alias = "sentinel"
    backend = locks[alias]
    leases = {key: backend.lock(key, 60_000, correlation_id="holder") for key in ("a", "b")}
    master = sentinel_set.master()
    wait_until(lambda: replicated(master))
    waiter = Waiter(alias, "a", timeout_ms=30_000)
    waiter.start()
    wait_until(lambda: blocked_in_blpop(master))
    killed = time.monotonic()
    master.kill()
    proof.record_fault("redis sentinel master killed")
    with pytest.raises(LockBackendError):  # never "not acquired"
        backend.try_acquire_lock(None, "a", 60_000)
    window, failures = measure_outage(lambda: backend.get_lock("a"), killed)
    for key, lease in leases.items():
        info = backend.get_lock(key)
        assert (info.token, info.fencing_token) == (lease.token, lease.fencing_token)
    assert waiter.is_alive() and waiter.error is None
    released = time.monotonic()
    holder = leases.pop("a")
    holder.release()
    waiter.join(10)
    assert waiter.error is None, waiter.error
    assert waiter.lease.fencing_token > holder.fencing_token
    measured(f"Redis Sentinel, master SIGKILLed: LockBackendError for {window:.1f} s "
             f"({failures} failed probes) until the replica was promoted; 2 of 2 locks "
             f"survived with their tokens; a waiter (timeout 30 s) got the lock "
             f"{waiter.ended_at - released:.2f} s after the release, {waiter.elapsed:.1f} s "
             "after it started waiting")
    assert window < 20
    waiter.lease.release()
    leases["b"].release()
    restore(sentinel_set, master, sentinel_set.master())


def test_a_second_failover_loses_the_locks_taken_between_the_two(sentinel_set):
    """The double failover of the README: the master dies, its replica takes over and
    takes a lock; the old master comes back empty (no persistence) as a replica whose
    first sync has not happened yet; the new master dies too. The sentinels promote the
    empty old master: the lock is gone, a second holder gets the key while the first
    still holds a lease on it. Fencing tokens still rise, so a resource that checks
    them refuses the first holder from then on."""
    alias = "sentinel"
    backend = locks[alias]
    first_master = sentinel_set.master()
    started = time.monotonic()
    first_master.kill()
    proof.record_fault("redis sentinel master killed")
    second_port = fail_over(sentinel_set, first_master.port)
    second_master = sentinel_set.node(second_port)
    first_window, _ = measure_outage(lambda: backend.get_lock("probe"), started)
    first = backend.lock("job", 60_000, correlation_id="first")

    with second_master.client() as client:  # the old master's first full sync waits a minute
        client.config_set("repl-diskless-sync-delay", 60)
    first_master.start()
    with first_master.client() as client:
        client.replicaof("127.0.0.1", second_port)
    # Its replica connected and is waiting for the full sync that has not started.
    wait_until(lambda: second_master.info("replication").get("slave0", {}).get("state")
               == "wait_bgsave")
    assert first_master.info("replication")["master_link_status"] == "down"

    second_master.kill()
    proof.record_fault("redis sentinel master killed")
    killed = time.monotonic()
    assert fail_over(sentinel_set, second_port) == first_master.port
    second_window, _ = measure_outage(lambda: backend.get_lock("job"), killed)
    assert backend.get_lock("job") is None  # the lock taken in between is gone
    second = backend.lock("job", 60_000, correlation_id="second")
    assert second.fencing_token > first.fencing_token  # the clock floor: still rising
    with pytest.raises(LockNotHeldError):
        first.extend()
    measured(f"Redis Sentinel, double failover: LockBackendError for {first_window:.1f} s, "
             f"then {second_window:.1f} s (sentinels that took part in a failover wait twice "
             "the failover-timeout before another); the lock taken between them was lost and "
             f"handed to a second holder; fencing token {first.fencing_token} then "
             f"{second.fencing_token}")
    second.release()
    restore(sentinel_set, second_master, first_master)
